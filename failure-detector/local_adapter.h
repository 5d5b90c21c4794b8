// LocalAdapter: the scheduler adapter for a job that runs under
// snapback-launch on one machine (scheduler "local", the embedded default).
//
// snapback-launch holds a Launch stream to the coordinator (proto
// snapback.v1.DetectorService.Launch); the detector service owns those
// streams and offers them to this adapter as a LauncherLink:
//
//   Restart  a Start order on the job's launcher stream: the launcher stops
//            the ranks still running (SIGTERM, then SIGKILL after its
//            --stop-grace) and starts the new incarnation
//   Cancel   a Cancel order: the launcher stops the ranks and exits 1
//   Status   kRunning while a launcher of the job is connected, otherwise
//            kUnknown (the launcher may be reconnecting, or gone)
//
// Errors: UNAVAILABLE when no launcher of the job is connected (or its stream
// is closing). The detector retries the order, and a launcher that
// reconnects learns the incarnation to run in the answer to its hello, so an
// order is never lost for good.
//
// Thread-safe when the LauncherLink is.
#ifndef SNAPBACK_FAILURE_DETECTOR_LOCAL_ADAPTER_H_
#define SNAPBACK_FAILURE_DETECTOR_LOCAL_ADAPTER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "failure-detector/scheduler.h"

namespace snapback::detector {

// The coordinator's connections to the snapback-launch processes, as the
// local adapter needs them. Implemented by the detector service
// (server/detector_service), which holds the Launch streams; a fake in tests.
// Implementations are thread-safe.
class LauncherLink {
 public:
  virtual ~LauncherLink() = default;
  // Queues a Start order for the launcher of `job_id`: run `incarnation`
  // (stopping the ranks of an older one first). OK once queued on the
  // stream, not when the ranks run. UNAVAILABLE when no launcher of the job
  // is connected or its stream is closing.
  virtual absl::Status SendStart(const std::string& job_id, int64_t incarnation,
                                 absl::string_view reason) = 0;
  // Queues a Cancel order: the launcher stops its ranks and exits. Errors as
  // SendStart().
  virtual absl::Status SendCancel(const std::string& job_id,
                                  absl::string_view reason) = 0;
  // True while a launcher of `job_id` is connected (its hello was accepted
  // and its stream has not ended).
  virtual bool IsConnected(const std::string& job_id) = 0;
};

class LocalAdapter final : public SchedulerAdapter {
 public:
  // `link` is not owned and must outlive the adapter.
  explicit LocalAdapter(LauncherLink* link) : link_(link) {}

  std::string name() const override { return "local"; }
  absl::Status Restart(const JobBinding& job, int64_t incarnation,
                       absl::string_view reason) override;
  absl::Status Cancel(const JobBinding& job, absl::string_view reason) override;
  absl::StatusOr<SchedulerStatus> Status(const JobBinding& job) override;

 private:
  LauncherLink* const link_;
};

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_LOCAL_ADAPTER_H_
