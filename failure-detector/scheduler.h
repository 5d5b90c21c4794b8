// SchedulerAdapter: how the detector acts on a job — restart it as a new
// incarnation, cancel it, ask its state. One interface, three adapters:
//
//   local  the job runs under snapback-launch, which holds a stream to the
//          coordinator; a restart is an order on that stream (the embedded
//          default; failure-detector/local_adapter.*, over the detector
//          service's launcher streams).
//   slurm  the job is a batch job submitted with `sbatch --requeue`; a restart
//          is `scontrol requeue <id>`, cancel is `scancel <id>`, status is
//          `scontrol show job <id>` (failure-detector/slurm_adapter.*).
//   exec   operator-configured command templates, e.g. for Kubernetes
//          (failure-detector/exec_adapter.*).
//
// The coordinator records the new incarnation *before* it calls Restart(), so
// the restarted ranks learn it from the coordinator (JobInfo.incarnation), not
// from environment left by an earlier submission, and any rank of an older
// incarnation that is still alive is fenced.
//
// Implementations are thread-safe; calls may block for the time the
// scheduler's command needs (bounded by the adapter's own timeout).
#ifndef SNAPBACK_FAILURE_DETECTOR_SCHEDULER_H_
#define SNAPBACK_FAILURE_DETECTOR_SCHEDULER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace snapback::detector {

// What the coordinator knows of a job's scheduler binding (JobInfo).
struct JobBinding {
  std::string job_id;
  int world_size = 1;
  // "local", "slurm", "exec".
  std::string scheduler;
  // The scheduler's own id of the job (Slurm job id; free-form for exec).
  std::string scheduler_job_id;
};

enum class SchedulerJobState {
  kUnknown,  // the scheduler does not know the job (or could not say)
  kPending,  // queued / requeued, not running yet
  kRunning,
  kFinished,  // ended successfully
  kFailed,    // ended with a failure and will not run again by itself
  kCancelled,
};

const char* SchedulerJobStateName(SchedulerJobState s);

struct SchedulerStatus {
  SchedulerJobState state = SchedulerJobState::kUnknown;
  // The scheduler's own words (e.g. Slurm's JobState=REQUEUE_HOLD Reason=...).
  std::string detail;
};

class SchedulerAdapter {
 public:
  virtual ~SchedulerAdapter() = default;
  // "local", "slurm" or "exec".
  virtual std::string name() const = 0;
  // Restarts every rank of the job as `incarnation` (already recorded by the
  // coordinator). Returns once the scheduler has accepted the order, not
  // when the ranks are back. UNAVAILABLE when the scheduler cannot be
  // reached (retry), FAILED_PRECONDITION when it refuses (the message says
  // its words and what to check).
  virtual absl::Status Restart(const JobBinding& job, int64_t incarnation,
                               absl::string_view reason) = 0;
  // Stops the job for good (the restart-loop guard gave up, or an operator).
  virtual absl::Status Cancel(const JobBinding& job, absl::string_view reason) = 0;
  virtual absl::StatusOr<SchedulerStatus> Status(const JobBinding& job) = 0;
};

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_SCHEDULER_H_
