// CoordinatorServiceImpl::VerifyCheckpoint: the server-streaming face of
// coordinator::CheckpointVerifier (coordinator/verify.h).
//
// One task at a time per call runs on the coordinator's pool: the first
// plans (loads the checkpoints and their chunk lists), each later one
// verifies a batch, then queues the next, so the pool's FIFO serves other
// calls in between. Every gRPC operation (StartWrite, Finish) is issued
// under mu_ from the single decision point Advance(), as the storage
// service's streaming reactors do.
#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/verify.h"
#include "rpc/grpc_status.h"
#include "server/audit.h"
#include "server/coordinator_service.h"

namespace snapback::server {
namespace {

std::string AuditOutcome(const v1::CheckpointVerification& r) {
  switch (r.verdict()) {
    case v1::VERIFY_OK:
      return r.reason().empty() ? "ok" : absl::StrCat("ok; ", r.reason());
    case v1::VERIFY_REPAIRED:
      return absl::StrCat("repaired: ", r.reason());
    case v1::VERIFY_DAMAGED:
      return absl::StrCat("DAMAGED: ", r.reason());
    default:
      return absl::StrCat("incomplete: ", r.reason());
  }
}

class VerifyReactor final : public grpc::ServerWriteReactor<v1::VerifyProgress> {
 public:
  VerifyReactor(coordinator::CoordinatorStore* store, ThreadPool* pool,
                rpc::CallTracker* calls, grpc::CallbackServerContext* ctx,
                const v1::VerifyCheckpointRequest* req)
      : store_(store), pool_(pool), calls_(calls), request_(*req), who_(Caller(ctx)) {
    calls_->Started();
    absl::MutexLock lock(&mu_);
    ScheduleLocked();
  }
  // The last reference is dropped after OnDone() and after the last task,
  // so nothing the call uses is touched once the tracker says it ended.
  ~VerifyReactor() override { calls_->Ended(); }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) cancelled_ = true;  // the stream is broken: the client is gone
    Advance();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    Advance();
  }

  void OnDone() override { Unref(); }

 private:
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  void ScheduleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    task_running_ = true;
    Ref();
    pool_->Schedule([this] {
      RunTask();
      Unref();
    });
  }

  // One step of the verification. verifier_ is touched only here, and
  // tasks of one call never overlap (the next is queued by the last).
  void RunTask() {
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      stop = cancelled_;
    }
    absl::Status status;
    bool done = false;
    if (stop) {
      status = absl::CancelledError("VerifyCheckpoint cancelled by the client");
    } else if (verifier_ == nullptr) {
      absl::StatusOr<std::unique_ptr<coordinator::CheckpointVerifier>> v =
          coordinator::CheckpointVerifier::Plan(store_, request_);
      if (v.ok()) {
        verifier_ = *std::move(v);
      } else {
        status = v.status();
      }
    } else {
      absl::StatusOr<bool> step = verifier_->Step();
      if (step.ok()) {
        done = *step;
      } else {
        status = step.status();
      }
    }
    if (verifier_ != nullptr) {
      for (const v1::CheckpointVerification& r : verifier_->TakeFinished()) {
        Audit(store_, who_, "verify", request_.job_id(), r.step(), request_.reason(),
              AuditOutcome(r));
      }
    }
    if (!status.ok()) {
      Audit(store_, who_, "verify", request_.job_id(), request_.step(), request_.reason(),
            status);
    }
    absl::MutexLock lock(&mu_);
    task_running_ = false;
    if (!status.ok()) {
      status_ = status;
      work_done_ = true;
    } else {
      pending_ = verifier_->progress();
      has_pending_ = true;
      if (done) {
        work_done_ = true;
      } else {
        // Also when cancelled: the next task records the cancellation in
        // the audit log and ends the call.
        ScheduleLocked();
      }
    }
    Advance();
  }

  void Advance() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (!writing_ && !cancelled_ && has_pending_) {
      response_ = std::move(pending_);
      pending_.Clear();
      has_pending_ = false;
      writing_ = true;
      StartWrite(&response_);
      return;
    }
    if (writing_ || task_running_) return;
    if (cancelled_ || work_done_) {
      finished_ = true;
      absl::Status s = status_;
      if (s.ok() && cancelled_ && !work_done_) {
        s = absl::CancelledError("VerifyCheckpoint cancelled by the client");
      }
      Finish(ToGrpcStatus(s));
    }
  }

  coordinator::CoordinatorStore* const store_;
  ThreadPool* const pool_;
  rpc::CallTracker* const calls_;
  const v1::VerifyCheckpointRequest request_;
  const std::string who_;
  std::atomic<int> refs_{1};  // gRPC's reference, dropped in OnDone()
  std::unique_ptr<coordinator::CheckpointVerifier> verifier_;  // see RunTask()

  absl::Mutex mu_;
  bool task_running_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool work_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  // The latest progress not yet sent (older ones are dropped, not queued).
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  v1::VerifyProgress pending_ ABSL_GUARDED_BY(mu_);
  v1::VerifyProgress response_ ABSL_GUARDED_BY(mu_);  // target of StartWrite
};

}  // namespace

grpc::ServerWriteReactor<v1::VerifyProgress>* CoordinatorServiceImpl::VerifyCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::VerifyCheckpointRequest* req) {
  return new VerifyReactor(store_, pool_, &calls_, ctx, req);
}

}  // namespace snapback::server
