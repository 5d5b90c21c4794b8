// Heartbeater: the rank's heartbeat stream to the coordinator's failure
// detector (proto/snapback/v1/detector.proto). Internal to the client
// library; one per Checkpointer.
//
// A thread keeps one Heartbeat stream open and sends {job, rank,
// incarnation, step, phase, time} every interval, and at once when the phase
// changes. When the stream fails (the coordinator restarted, the network
// blinked) it reconnects with the interval as backoff. Stop() sends a final
// DONE beat and half-closes, so the detector knows the rank finished rather
// than died; a process that dies without Stop() breaks the stream, which is
// how the detector learns of a crash at once.
//
// When the coordinator answers that this rank is fenced (a newer incarnation
// of the job runs), the heartbeat says so on stderr and stops; the rank's
// checkpoint calls fail with FAILED_PRECONDITION too.
//
// Thread-safe.
#ifndef SNAPBACK_CLIENT_HEARTBEAT_H_
#define SNAPBACK_CLIENT_HEARTBEAT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "snapback/v1/detector.grpc.pb.h"

namespace snapback::internal_client {

struct HeartbeatOptions {
  std::string job_id;
  int rank = 0;
  int64_t incarnation = 0;
  // Default: 1 s
  absl::Duration interval = absl::Seconds(1);
  // A new step is sent at once (an unscheduled beat), at most this often,
  // so the detector knows the step each rank reached when it fails: the
  // SLA report's lost steps are exact for steps at least this long, and
  // undercount by at most one step per gap below that. Zero = steps only
  // ride on the scheduled beats (and the first one after a phase change).
  // Default: 50 ms
  absl::Duration step_report_gap = absl::Milliseconds(50);
  // How long Stop() waits for the goodbye before it cancels the stream.
  // Default: 2 s
  absl::Duration stop_timeout = absl::Seconds(2);
};

class Heartbeater {
 public:
  Heartbeater(std::shared_ptr<grpc::Channel> channel, HeartbeatOptions options);
  ~Heartbeater();  // Stop()
  Heartbeater(const Heartbeater&) = delete;
  Heartbeater& operator=(const Heartbeater&) = delete;

  // The training step: sent at once, at most every step_report_gap (the
  // first step after a phase change always at once, so the detector sees at
  // once that training resumed after a restore, or goes on after a save).
  void SetStep(int64_t step);
  // The phase (sent at once). `step` >= 0 also sets the step.
  void SetPhase(v1::RankPhase phase, int64_t step = -1);
  // Says goodbye (phase DONE) and ends the stream. Idempotent.
  void Stop();

 private:
  void Loop();
  v1::HeartbeatRequest Beat(v1::RankPhase phase, bool unscheduled) const;

  const HeartbeatOptions options_;
  std::unique_ptr<v1::DetectorService::Stub> stub_;
  std::atomic<int64_t> step_{-1};
  std::atomic<int> phase_{v1::TRAINING};
  std::atomic<bool> fenced_{false};
  std::atomic<bool> eager_step_{false};  // the next SetStep beats at once

  absl::Mutex stop_mu_;  // one Stop() at a time
  absl::Mutex mu_;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;          // something changed
  bool urgent_ ABSL_GUARDED_BY(mu_) = false;        // beat now (phase, eager step)
  bool step_pending_ ABSL_GUARDED_BY(mu_) = false;  // a step not sent yet
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;  // the live stream's
  int failures_ ABSL_GUARDED_BY(mu_) = 0;                    // stream failures in a row
  absl::Notification finished_;
  std::thread thread_;
};

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_HEARTBEAT_H_
