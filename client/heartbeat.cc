#include "client/heartbeat.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "common/log.h"

namespace snapback::internal_client {

Heartbeater::Heartbeater(std::shared_ptr<grpc::Channel> channel, HeartbeatOptions options)
    : options_(std::move(options)), stub_(v1::DetectorService::NewStub(channel)) {
  thread_ = std::thread([this] { Loop(); });
}

Heartbeater::~Heartbeater() { Stop(); }

void Heartbeater::SetStep(int64_t step) {
  if (step_.exchange(step) == step) return;
  const bool eager = eager_step_.exchange(false);
  if (!eager && options_.step_report_gap <= absl::ZeroDuration()) return;
  absl::MutexLock lock(&mu_);
  // Wake the thread only when a step becomes pending (or must go now): with
  // 1 ms steps it wakes at most once per gap, not once per step.
  if (!step_pending_ || eager) wake_ = true;
  step_pending_ = true;
  urgent_ = urgent_ || eager;
}

void Heartbeater::SetPhase(v1::RankPhase phase, int64_t step) {
  if (step >= 0) step_.store(step);
  phase_.store(phase);
  if (phase == v1::TRAINING) eager_step_.store(true);
  absl::MutexLock lock(&mu_);
  wake_ = true;
  urgent_ = true;
}

v1::HeartbeatRequest Heartbeater::Beat(v1::RankPhase phase, bool unscheduled) const {
  v1::HeartbeatRequest req;
  req.mutable_rank()->set_job_id(options_.job_id);
  req.mutable_rank()->set_rank(options_.rank);
  req.mutable_rank()->set_incarnation(options_.incarnation);
  req.set_step(step_.load());
  req.set_phase(phase);
  req.set_sent_unix_ms(absl::ToUnixMillis(absl::Now()));
  req.set_unscheduled(unscheduled);
  return req;
}

void Heartbeater::Loop() {
  for (;;) {
    grpc::ClientContext ctx;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) break;
      ctx_ = &ctx;
    }
    auto stream = stub_->Heartbeat(&ctx);
    bool ok = true;
    bool stopping = false;
    // Scheduled beats keep their own clock: an early beat in between does
    // not move the next one (the detector learns the rhythm from them).
    absl::Time next = absl::Now();
    while (ok) {
      const absl::Time now = absl::Now();
      const bool scheduled = now >= next;
      if (scheduled) {
        next += options_.interval;
        if (next <= now) next = now + options_.interval;  // fell behind: no burst
      }
      {
        absl::MutexLock lock(&mu_);
        urgent_ = false;
        step_pending_ = false;  // this beat carries the step
      }
      ok = stream->Write(Beat(static_cast<v1::RankPhase>(phase_.load()), !scheduled));
      if (!ok) break;
      const absl::Time step_due = absl::Now() + options_.step_report_gap;
      absl::MutexLock lock(&mu_);
      failures_ = 0;
      // Until the scheduled beat, a phase change, Stop(), or a new step once
      // the gap since this beat has passed.
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stop_; };
      for (;;) {
        if (stop_ || urgent_) break;
        const absl::Time until = step_pending_ ? std::min(next, step_due) : next;
        if (absl::Now() >= until) break;
        mu_.AwaitWithDeadline(absl::Condition(&ready), until);
        wake_ = false;
      }
      if (stop_) {
        stopping = true;
        break;
      }
    }
    if (stopping && ok) {
      // Goodbye: the detector stops watching this rank instead of seeing a
      // death when the stream ends.
      (void)stream->Write(Beat(v1::DONE, true));
      (void)stream->WritesDone();
    }
    v1::HeartbeatResponse resp;
    while (stream->Read(&resp)) {
      if (resp.fenced()) {
        fenced_.store(true);
        SNAPBACK_LOG(Warning, "%s", resp.message());
      }
    }
    const grpc::Status status = stream->Finish();
    {
      absl::MutexLock lock(&mu_);
      ctx_ = nullptr;
      if (stop_ || fenced_.load()) break;
      if (status.error_code() == grpc::StatusCode::NOT_FOUND ||
          status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
        SNAPBACK_LOG(Warning, "heartbeat refused, not retrying: %s",
                     status.error_message());
        break;
      }
      // Reconnect at once the first time (a blip must not look like a
      // death: the detector waits only a short grace for a broken stream),
      // then after a pause (the coordinator may be restarting).
      if (failures_++ > 0) {
        mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.interval);
        if (stop_) break;
      }
    }
  }
  finished_.Notify();
}

void Heartbeater::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (!thread_.joinable()) return;
  if (!finished_.WaitForNotificationWithTimeout(options_.stop_timeout)) {
    // A coordinator that does not answer must not hold up Close().
    absl::MutexLock lock(&mu_);
    if (ctx_ != nullptr) ctx_->TryCancel();
  }
  thread_.join();
}

}  // namespace snapback::internal_client
