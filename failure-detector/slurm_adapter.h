// SlurmAdapter: the scheduler adapter for a job that is a Slurm batch job.
//
// The job must have been submitted with `sbatch --requeue` (or on a cluster
// with JobRequeue=1), and the coordinator must be able to run Slurm's client
// commands as a user allowed to requeue and cancel it (its owner, an
// operator, or root). Each call runs one command:
//
//   Restart  scontrol requeue <scheduler_job_id>
//            Slurm sends the batch step SIGTERM (SIGKILL after KillWait),
//            puts the job back in the queue and runs the whole script again
//            with SLURM_RESTART_COUNT one higher. The new run is not
//            eligible before AuthInfo's cred_expire + 1 s (121 s with Slurm's
//            default of 120 s; the minimum cred_expire=5 makes it ~6 s), and
//            then waits for the next scheduling pass (bf_interval, 30 s by
//            default). A job that is already pending counts as restarted.
//   Cancel   scancel <scheduler_job_id>
//   Status   scontrol show job -o <scheduler_job_id>
//
// The `reason` of Restart() and Cancel() is not passed to Slurm (neither
// command takes one); the coordinator's incident log keeps it.
//
// Errors, chosen by what the caller should do:
//   INVALID_ARGUMENT     scheduler_job_id is not a Slurm job id ("123" or an
//                        array task "123_4")
//   UNAVAILABLE          the command cannot be run (not installed, wrong path),
//                        did not answer within the timeout, or slurmctld
//                        cannot be reached: retry later. After a timeout the
//                        order may or may not have been carried out: ask
//                        Status().
//   FAILED_PRECONDITION  Slurm refused (unknown job, job not requeueable,
//                        permission denied, held job): the message quotes
//                        Slurm's words and says what to check.
//
// Thread-safe: the adapter has no mutable state; calls run in parallel.
#ifndef SNAPBACK_FAILURE_DETECTOR_SLURM_ADAPTER_H_
#define SNAPBACK_FAILURE_DETECTOR_SLURM_ADAPTER_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "failure-detector/command.h"
#include "failure-detector/scheduler.h"

namespace snapback::detector {

struct SlurmAdapterOptions {
  // The scontrol command: a path, or a name looked up in PATH.
  // Default: "scontrol"
  std::string scontrol = "scontrol";
  // The scancel command: a path, or a name looked up in PATH.
  // Default: "scancel"
  std::string scancel = "scancel";
  // Environment set for every command on top of the coordinator's own, e.g.
  // {"SLURM_CONF", "/etc/slurm/cluster-b.conf"}.
  // Default: empty (the commands see the coordinator's environment)
  std::map<std::string, std::string> env;
  // How long one command may run before it is killed and the call fails
  // with UNAVAILABLE. scontrol itself retries an unreachable slurmctld for
  // about MessageTimeout (10 s by default) before it gives up.
  // Default: 30 s
  absl::Duration command_timeout = absl::Seconds(30);
};

class SlurmAdapter : public SchedulerAdapter {
 public:
  explicit SlurmAdapter(SlurmAdapterOptions options = {});

  std::string name() const override { return "slurm"; }

  // `scontrol requeue <id>`. OK once Slurm has accepted the requeue, or when
  // the job is already pending (so a retry after a timed-out requeue is
  // harmless). FAILED_PRECONDITION when Slurm refuses, e.g. "Requested
  // operation is presently disabled" for a job submitted without --requeue,
  // "Invalid job id specified" for a job Slurm no longer knows, or a job held
  // in REQUEUE_HOLD / SPECIAL_EXIT (release it with `scontrol release <id>`).
  absl::Status Restart(const JobBinding& job, int64_t incarnation,
                       absl::string_view reason) override;

  // `scancel <id>`. OK when Slurm accepted it (also for a job that had
  // already ended); the job shows as kCancelled shortly after.
  absl::Status Cancel(const JobBinding& job, absl::string_view reason) override;

  // `scontrol show job -o <id>`, mapped as follows (detail: "JobState=...
  // Reason=... Restarts=N"):
  //   PENDING REQUEUED REQUEUE_HOLD REQUEUE_FED SPECIAL_EXIT RESV_DEL_HOLD
  //   CONFIGURING                                   -> kPending
  //   RUNNING COMPLETING SIGNALING STAGE_OUT RESIZING
  //   SUSPENDED STOPPED                             -> kRunning
  //   COMPLETED                                     -> kFinished
  //   FAILED TIMEOUT NODE_FAIL OUT_OF_MEMORY BOOT_FAIL
  //   DEADLINE PREEMPTED                            -> kFailed
  //   CANCELLED                                     -> kCancelled
  // A job Slurm does not know (never existed, or purged MinJobAge after it
  // ended) is OK with kUnknown; so is a JobState not listed above.
  absl::StatusOr<SchedulerStatus> Status(const JobBinding& job) override;

  // The state for one JobState word of Slurm (e.g. "REQUEUE_HOLD"); kUnknown
  // for a word not listed above.
  static SchedulerJobState StateFromSlurm(absl::string_view job_state);
  // Parses the output of `scontrol show job -o <id>` (its first line: one
  // line per job, several for an array).
  static SchedulerStatus ParseShowJob(absl::string_view output);

 private:
  // Runs argv under the options' environment and timeout. Start failures and
  // timeouts come back as UNAVAILABLE.
  absl::StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                                    absl::string_view what) const;

  const SlurmAdapterOptions options_;
};

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_SLURM_ADAPTER_H_
