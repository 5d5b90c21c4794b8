// CheckpointerImpl: Save() and its admission (step order, max_inflight,
// busy policy), the driver thread, Flush() and Close(). The save itself is
// in client/save_pipeline.cc, Restore() in client/restore.cc.
#include <memory>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/checkpointer_impl.h"
#include "common/status_macros.h"

namespace snapback::internal_client {

namespace v1 = ::snapback::v1;

CheckpointerImpl::CheckpointerImpl(std::shared_ptr<Connection> client,
                                   CheckpointerOptions options)
    : client_(std::move(client)),
      options_(std::move(options)),
      pipeline_(client_, options_) {
  driver_ = std::thread([this] { DriverLoop(); });
  if (options_.heartbeat_interval > absl::ZeroDuration()) {
    heartbeat_ = std::make_unique<Heartbeater>(
        client_->channel(), HeartbeatOptions{.job_id = options_.job_id,
                                             .rank = options_.rank,
                                             .incarnation = options_.incarnation,
                                             .interval = options_.heartbeat_interval});
  }
}

CheckpointerImpl::~CheckpointerImpl() { (void)Close(); }

absl::Status CheckpointerImpl::TakePendingError() {
  absl::Status s = std::move(pending_error_);
  pending_error_ = absl::OkStatus();
  return s;
}

absl::Status CheckpointerImpl::SaveAllowed(int64_t step) {
  if (closed_) return absl::FailedPreconditionError("checkpointer is closed");
  if (absl::Status s = TakePendingError(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("an earlier save failed: ", s.message()));
  }
  if (step <= last_step_) {
    return absl::InvalidArgumentError(absl::StrCat("step ", step, " is not after step ",
                                                   last_step_, "; steps must grow"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SaveHandle> CheckpointerImpl::Save(int64_t step,
                                                  absl::Span<const TensorView> tensors,
                                                  absl::Span<const BlobView> blobs) {
  // Saves come from one training loop; concurrent callers take turns, so two
  // snapshots never share the staging pool.
  absl::MutexLock save_lock(&save_mu_);
  const absl::Time start = absl::Now();
  // The training loop is inside Save(): a saving phase, not a hang.
  if (heartbeat_ != nullptr) heartbeat_->SetPhase(v1::SAVING, step);
  absl::Cleanup back_to_training = [this] {
    if (heartbeat_ != nullptr) heartbeat_->SetPhase(v1::TRAINING);
  };
  std::shared_ptr<SaveHandle::State> previous;
  {
    absl::MutexLock lock(&mu_);
    SNAPBACK_RETURN_IF_ERROR(SaveAllowed(step));
    previous = last_state_;
  }
  // Never mix two steps: the previous snapshot must be complete before this
  // one reuses the staging pool.
  if (previous) (void)SaveHandle(previous).WaitSnapshot();

  SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<SaveJob> job,
                            pipeline_.Plan(step, tensors, blobs));
  auto state = std::make_shared<SaveHandle::State>(step);
  job->state = state;
  job->start = start;
  {
    absl::MutexLock lock(&mu_);
    if (inflight_ >= options_.max_inflight) {
      if (options_.busy_policy == BusyPolicy::kSkip) {
        {
          absl::MutexLock slock(&state->mu);
          state->stats.skipped = true;
        }
        state->Finish(absl::OkStatus());
        return SaveHandle(state);
      }
      auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return inflight_ < options_.max_inflight || closed_;
      };
      mu_.Await(absl::Condition(&room));
    }
    // Re-check what may have changed while this call waited or planned.
    SNAPBACK_RETURN_IF_ERROR(SaveAllowed(step));
    ++inflight_;
    last_step_ = step;
    last_state_ = state;
    {
      absl::MutexLock slock(&state->mu);
      for (const Item& item : job->items) state->stats.logical_bytes += item.bytes;
      state->stats.chunks = job->tasks.size();
    }
  }
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(job);
  }
  if (options_.overlap) {
    pipeline_.SnapshotInBackground(std::move(job));
  } else {
    pipeline_.Snapshot(std::move(job));
  }
  {
    absl::MutexLock lock(&state->mu);
    state->stats.blocked = absl::Now() - start;
  }
  return SaveHandle(state);
}

absl::Status CheckpointerImpl::WaitSnapshot() {
  std::shared_ptr<SaveHandle::State> last;
  {
    absl::MutexLock lock(&mu_);
    last = last_state_;
  }
  if (last == nullptr) return absl::OkStatus();
  return SaveHandle(last).WaitSnapshot();
}

absl::Status CheckpointerImpl::Flush() {
  std::shared_ptr<SaveHandle::State> last;
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return inflight_ == 0; };
    mu_.Await(absl::Condition(&idle));
    // The first failure not yet reported by a Save(), else the last save's.
    if (absl::Status s = TakePendingError(); !s.ok()) return s;
    last = last_state_;
  }
  return last ? SaveHandle(last).Wait() : absl::OkStatus();
}

void CheckpointerImpl::DriverLoop() {
  while (true) {
    std::shared_ptr<SaveJob> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || closed_;
      };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    absl::Status s = pipeline_.Drive(job.get());
    // Best effort: release this checkpoint's claims at the coordinator.
    if (!s.ok() && !job->commit_outcome_unknown) pipeline_.Abort(*job, s);
    if (!s.ok()) pipeline_.DrainStaged(job.get());
    // The error must be pending before anyone can see the handle finish, so
    // a Save() right after Wait() returns it.
    {
      absl::MutexLock lock(&mu_);
      if (!s.ok()) pending_error_ = s;
      --inflight_;
    }
    job->state->Finish(s);
  }
}

absl::Status CheckpointerImpl::Close() {
  // One Close at a time (an explicit one may race the destructor's).
  absl::MutexLock close_lock(&close_mu_);
  absl::Status flushed = Flush();
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  if (driver_.joinable()) driver_.join();
  if (heartbeat_ != nullptr) heartbeat_->Stop();  // goodbye: finished, not dead
  return flushed;
}

}  // namespace snapback::internal_client
