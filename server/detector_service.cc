#include "server/detector_service.h"

#include <deque>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc/grpc_status.h"
#include "server/audit.h"

namespace snapback::server {

using detector::Heartbeat;

class DetectorServiceImpl::Stream {
 public:
  virtual ~Stream() = default;
  // Ends the stream now (the coordinator is shutting down).
  virtual void Stop() = 0;
};

namespace {

// One rank's heartbeats. Reads until the rank half-closes or the stream
// breaks; answers only to tell a fenced rank to exit.
class HeartbeatStream final
    : public grpc::ServerBidiReactor<v1::HeartbeatRequest, v1::HeartbeatResponse>,
      public DetectorServiceImpl::Stream {
 public:
  HeartbeatStream(detector::Detector* detector, std::function<bool()> shutting_down,
                  std::function<void(Stream*)> on_done)
      : detector_(detector),
        shutting_down_(std::move(shutting_down)),
        on_done_(std::move(on_done)) {
    StartRead(&req_);
  }

  void Stop() override {
    FinishOnce(absl::UnavailableError("the coordinator is shutting down; reconnect"));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The rank half-closed (after a DONE beat) or the stream broke: the
      // process died, or its connection did.
      if (started_ && !fenced_ && !shutting_down_()) {
        detector_->OnStreamEnded(job_, rank_, incarnation_, done_);
      }
      FinishOnce(absl::OkStatus());
      return;
    }
    const v1::RankRef& ref = req_.rank();
    if (!started_) {
      if (ref.job_id().empty() || ref.rank() < 0 || ref.incarnation() < 0) {
        FinishOnce(absl::InvalidArgumentError(
            "the first heartbeat must name the job, a rank >= 0 and an "
            "incarnation >= 0"));
        return;
      }
      job_ = ref.job_id();
      rank_ = ref.rank();
      incarnation_ = ref.incarnation();
      started_ = true;
    } else if (ref.job_id() != job_ || ref.rank() != rank_ ||
               ref.incarnation() != incarnation_) {
      FinishOnce(absl::InvalidArgumentError(
          "a heartbeat stream carries one rank of one incarnation; "
          "open a new stream for another"));
      return;
    }
    if (req_.phase() == v1::DONE) {
      done_ = true;
      StartRead(&req_);
      return;
    }
    absl::Status s = detector_->OnHeartbeat(
        job_, Heartbeat{.rank = rank_,
                        .incarnation = incarnation_,
                        .step = req_.step(),
                        .phase = detector::PhaseFromProto(req_.phase()),
                        .unscheduled = req_.unscheduled()});
    if (absl::IsFailedPrecondition(s)) {
      fenced_ = true;
      resp_.set_fenced(true);
      resp_.set_message(std::string(s.message()));
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      StartWriteAndFinish(&resp_, grpc::WriteOptions(), ToGrpcStatus(absl::OkStatus()));
      return;
    }
    if (!s.ok()) {
      FinishOnce(s);
      return;
    }
    StartRead(&req_);
  }

  void OnDone() override {
    on_done_(this);
    delete this;
  }

 private:
  void FinishOnce(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    Finish(ToGrpcStatus(status));
  }

  detector::Detector* const detector_;
  const std::function<bool()> shutting_down_;
  const std::function<void(Stream*)> on_done_;
  v1::HeartbeatRequest req_;
  v1::HeartbeatResponse resp_;
  // Only the read path touches these (one read at a time).
  bool started_ = false, done_ = false, fenced_ = false;
  std::string job_;
  int rank_ = -1;
  int64_t incarnation_ = -1;
  absl::Mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

// One snapback-launch: hello, rank exits in; Start / Cancel orders out.
class DetectorServiceImpl::LaunchStream final
    : public grpc::ServerBidiReactor<v1::LauncherEvent, v1::LauncherOrder>,
      public DetectorServiceImpl::Stream {
 public:
  explicit LaunchStream(DetectorServiceImpl* service) : service_(service) {
    StartRead(&event_);
  }

  void Stop() override {
    FinishOnce(absl::UnavailableError("the coordinator is shutting down; reconnect"));
  }

  // Queues an order; FAILED_PRECONDITION when the stream is ending.
  absl::Status Send(v1::LauncherOrder order) {
    absl::MutexLock lock(&mu_);
    if (finished_ || pending_finish_) {
      return absl::UnavailableError("the launcher's stream is closing");
    }
    orders_.push_back(std::move(order));
    if (!writing_) {
      writing_ = true;
      StartWrite(&orders_.front());
    }
    return absl::OkStatus();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    orders_.pop_front();
    if (ok && !orders_.empty() && !pending_finish_) {
      StartWrite(&orders_.front());
      return;
    }
    writing_ = false;
    if (pending_finish_ && !finished_ && !hello_running_) {
      finished_ = true;
      Finish(ToGrpcStatus(*pending_finish_));
    }
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      FinishOnce(absl::OkStatus());  // the launcher went away
      return;
    }
    if (!hello_done_) {
      if (!event_.has_hello()) {
        FinishOnce(absl::InvalidArgumentError("a launcher stream starts with a hello"));
        return;
      }
      // Registering writes the metadata (synced): not on a gRPC thread. No
      // gRPC operation is outstanding meanwhile, so the stream must not be
      // finished (and deleted) under Hello(): FinishOnce() defers to it, and
      // the service counts it as a call in flight.
      {
        absl::MutexLock lock(&mu_);
        if (finished_ || pending_finish_) return;
        hello_running_ = true;
      }
      service_->calls_.Started();
      service_->pool_->Schedule([this, service = service_] {
        Hello();  // may end in Finish(): `this` is not touched after it
        service->calls_.Ended();
      });
      return;
    }
    if (event_.has_exited()) {
      service_->detector_->OnRankExited(job_, event_.exited());
    }
    StartRead(&event_);
  }

  void OnDone() override {
    if (!job_.empty()) service_->ClearLauncher(job_, this);
    service_->Remove(this);
    delete this;
  }

 private:
  void Hello() {
    bool finishing;
    {
      absl::MutexLock lock(&mu_);
      finishing = pending_finish_.has_value();
    }
    if (finishing) {
      EndHello(false);
      return;
    }
    const v1::LauncherHello& hello = event_.hello();
    v1::RegisterJobRequest reg;
    reg.set_job_id(hello.job_id());
    reg.set_world_size(hello.nproc());
    reg.set_scheduler("local");
    reg.set_scheduler_job_id(absl::StrCat(hello.hostname(), ":", hello.pid()));
    absl::StatusOr<v1::RegisterJobResponse> registered =
        service_->store_->RegisterJob(reg);
    if (!registered.ok()) {
      FinishOnce(registered.status());
      EndHello(false);
      return;
    }
    job_ = hello.job_id();
    service_->SetLauncher(job_, this);
    absl::StatusOr<int64_t> incarnation =
        service_->detector_->OnLauncherHello(job_, hello.running_incarnation());
    if (!incarnation.ok()) {
      FinishOnce(incarnation.status());
      EndHello(false);
      return;
    }
    hello_done_ = true;
    v1::LauncherOrder order;
    order.mutable_start()->set_incarnation(*incarnation);
    order.mutable_start()->set_reason(
        hello.running_incarnation() == *incarnation ? "reconnected" : "start");
    (void)Send(std::move(order));
    EndHello(true);
  }

  // Ends Hello(): reads the next event, or finishes a stream that was
  // asked to finish meanwhile. The last touch of `this` in Hello().
  void EndHello(bool read_on) {
    absl::MutexLock lock(&mu_);
    hello_running_ = false;
    if (!pending_finish_) {
      if (read_on) StartRead(&event_);
      return;
    }
    if (!writing_ && !finished_) {
      finished_ = true;
      Finish(ToGrpcStatus(*pending_finish_));
    }
  }

  void FinishOnce(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (finished_ || pending_finish_) return;
    if (writing_ || hello_running_) {
      pending_finish_ = status;  // finished when the write or hello completes
      return;
    }
    finished_ = true;
    Finish(ToGrpcStatus(status));
  }

  DetectorServiceImpl* const service_;
  v1::LauncherEvent event_;
  bool hello_done_ = false;  // read path only
  std::string job_;          // set once by Hello(), before SetLauncher
  absl::Mutex mu_;
  std::deque<v1::LauncherOrder> orders_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool hello_running_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> pending_finish_ ABSL_GUARDED_BY(mu_);
};

DetectorServiceImpl::DetectorServiceImpl(detector::Detector* detector,
                                         coordinator::CoordinatorStore* store,
                                         ThreadPool* pool)
    : detector_(detector),
      store_(store),
      pool_(pool),
      local_(std::make_shared<detector::LocalAdapter>(this)) {}

DetectorServiceImpl::~DetectorServiceImpl() = default;

bool DetectorServiceImpl::shutting_down() {
  absl::MutexLock lock(&mu_);
  return shutting_down_;
}

void DetectorServiceImpl::Add(Stream* s) {
  bool stop;
  {
    absl::MutexLock lock(&mu_);
    streams_.insert(s);
    stop = shutting_down_;
  }
  if (stop) s->Stop();
}

void DetectorServiceImpl::Remove(Stream* s) {
  absl::MutexLock lock(&mu_);
  streams_.erase(s);
}

grpc::ServerBidiReactor<v1::HeartbeatRequest, v1::HeartbeatResponse>*
DetectorServiceImpl::Heartbeat(grpc::CallbackServerContext*) {
  auto* s = new HeartbeatStream(
      detector_, [this] { return shutting_down(); }, [this](Stream* st) { Remove(st); });
  Add(s);
  return s;
}

grpc::ServerBidiReactor<v1::LauncherEvent, v1::LauncherOrder>*
DetectorServiceImpl::Launch(grpc::CallbackServerContext*) {
  auto* s = new LaunchStream(this);
  Add(s);
  return s;
}

void DetectorServiceImpl::SetLauncher(const std::string& job_id, LaunchStream* s) {
  absl::MutexLock lock(&mu_);
  launchers_[job_id] = s;  // a newer launcher of the job replaces the old one
}

void DetectorServiceImpl::ClearLauncher(const std::string& job_id, LaunchStream* s) {
  absl::MutexLock lock(&mu_);
  auto it = launchers_.find(job_id);
  if (it != launchers_.end() && it->second == s) launchers_.erase(it);
}

bool DetectorServiceImpl::IsConnected(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  return launchers_.contains(job_id);
}

absl::Status DetectorServiceImpl::SendStart(const std::string& job_id,
                                            int64_t incarnation,
                                            absl::string_view reason) {
  v1::LauncherOrder order;
  order.mutable_start()->set_incarnation(incarnation);
  order.mutable_start()->set_reason(std::string(reason));
  return SendToLauncher(job_id, std::move(order));
}

absl::Status DetectorServiceImpl::SendCancel(const std::string& job_id,
                                             absl::string_view reason) {
  v1::LauncherOrder order;
  order.mutable_cancel()->set_reason(std::string(reason));
  return SendToLauncher(job_id, std::move(order));
}

absl::Status DetectorServiceImpl::SendToLauncher(const std::string& job_id,
                                                 v1::LauncherOrder order) {
  absl::MutexLock lock(&mu_);
  auto it = launchers_.find(job_id);
  if (it == launchers_.end()) {
    return absl::UnavailableError(
        absl::StrCat("no snapback-launch is connected for job ", job_id,
                     "; the order is retried, and a launcher that reconnects gets it"));
  }
  return it->second->Send(std::move(order));
}

void DetectorServiceImpl::BeginShutdown() {
  std::vector<Stream*> live;
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    live.assign(streams_.begin(), streams_.end());
    // Stop() under the lock: a stream cannot be deleted (Remove takes it)
    // while we hold a pointer to it.
    for (Stream* s : live) s->Stop();
  }
}

bool DetectorServiceImpl::WaitIdle(absl::Time deadline) {
  if (!calls_.WaitIdle(deadline)) return false;
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return streams_.empty(); };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

grpc::ServerUnaryReactor* DetectorServiceImpl::GetJobHealth(
    grpc::CallbackServerContext* ctx, const v1::GetJobHealthRequest* req,
    v1::JobHealth* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "GetJobHealth", [this, req, resp] {
    absl::StatusOr<v1::JobHealth> h = detector_->Health(req->job_id());
    if (!h.ok()) return h.status();
    *resp = *std::move(h);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* DetectorServiceImpl::ListIncidents(
    grpc::CallbackServerContext* ctx, const v1::ListIncidentsRequest* req,
    v1::ListIncidentsResponse* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "ListIncidents", [this, req, resp] {
    absl::StatusOr<std::vector<v1::Incident>> list = detector_->Incidents(req->job_id());
    if (!list.ok()) return list.status();
    for (v1::Incident& i : *list) *resp->add_incidents() = std::move(i);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* DetectorServiceImpl::RestartJob(
    grpc::CallbackServerContext* ctx, const v1::RestartJobRequest* req,
    v1::JobHealth* resp) {
  return rpc::RunOnPool(
      ctx, pool_, &calls_, "RestartJob", [this, req, resp, who = Caller(ctx)] {
        absl::Status s = detector_->RequestRestart(req->job_id(), req->reason());
        if (store_ != nullptr)
          Audit(store_, who, "restart", req->job_id(), -1, req->reason(), s);
        if (!s.ok()) return s;
        absl::StatusOr<v1::JobHealth> h = detector_->Health(req->job_id());
        if (!h.ok()) return h.status();
        *resp = *std::move(h);
        return absl::OkStatus();
      });
}

}  // namespace snapback::server
