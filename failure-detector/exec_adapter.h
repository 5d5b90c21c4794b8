// ExecAdapter: the scheduler adapter for any scheduler snapback does not know
// (Kubernetes, a site's own batch system): the operator gives one shell
// command template per action, e.g.
//
//   restart: kubectl delete pods -l job-name={scheduler_job_id} --wait=false
//   cancel:  kubectl delete job {scheduler_job_id}
//   status:  my-k8s-job-state {scheduler_job_id}
//
// Each template is run with `/bin/sh -c` after these placeholders are
// replaced, every value shell-quoted (ShellQuote) so that it is exactly one
// word and nothing in it is expanded: a reason holding quotes, `$(...)` or
// `;` stays text.
//
//   {job}               snapback's job id
//   {scheduler_job_id}  the scheduler's id of the job
//   {incarnation}       the incarnation being started (Restart only; '' in
//                       Cancel and Status)
//   {world_size}        number of ranks
//   {reason}            why (Restart and Cancel; '' in Status)
//
// Other text in braces is left alone. The replacement is one pass: braces
// inside a substituted value are not expanded again.
//
// Outcomes:
//   exit code 0          OK (Restart, Cancel); Status reads the first word of
//                        stdout, case-insensitively: pending, running,
//                        finished, failed or cancelled; anything else is
//                        kUnknown with the output as detail
//   other exit / signal  FAILED_PRECONDITION quoting the end of the command's
//                        stderr and its exit code
//   timeout              UNAVAILABLE (the command's process group was killed;
//                        the action may or may not have happened)
//   template unset       UNIMPLEMENTED naming the flag that sets it
//   /bin/sh not runnable INTERNAL
//
// Thread-safe: no mutable state; calls run in parallel.
#ifndef SNAPBACK_FAILURE_DETECTOR_EXEC_ADAPTER_H_
#define SNAPBACK_FAILURE_DETECTOR_EXEC_ADAPTER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "failure-detector/scheduler.h"

namespace snapback::detector {

struct ExecAdapterOptions {
  // Template run by Restart(); it must return once the scheduler has accepted
  // the restart (not when the ranks are back). Set by --exec-restart-command.
  // Default: "" (Restart() fails with UNIMPLEMENTED)
  std::string restart_command;
  // Template run by Cancel(). Set by --exec-cancel-command.
  // Default: "" (Cancel() fails with UNIMPLEMENTED)
  std::string cancel_command;
  // Template run by Status(); prints the state as the first word of stdout.
  // Set by --exec-status-command.
  // Default: "" (Status() fails with UNIMPLEMENTED)
  std::string status_command;
  // How long one command may run before its process group is SIGKILLed and
  // the call fails with UNAVAILABLE.
  // Default: 30 s
  absl::Duration timeout = absl::Seconds(30);
};

class ExecAdapter : public SchedulerAdapter {
 public:
  explicit ExecAdapter(ExecAdapterOptions options);

  std::string name() const override { return "exec"; }
  absl::Status Restart(const JobBinding& job, int64_t incarnation,
                       absl::string_view reason) override;
  absl::Status Cancel(const JobBinding& job, absl::string_view reason) override;
  absl::StatusOr<SchedulerStatus> Status(const JobBinding& job) override;

  // `tmpl` with the placeholders above replaced by shell-quoted values
  // (nullopt incarnation: ''). Exposed for tests and for messages.
  static std::string Expand(absl::string_view tmpl, const JobBinding& job,
                            std::optional<int64_t> incarnation, absl::string_view reason);

 private:
  // Runs the expanded template `tmpl` (configured by `flag`) and maps a
  // failure to the codes above. `action` names it in messages.
  absl::StatusOr<std::string> Run(absl::string_view action, absl::string_view flag,
                                  const std::string& tmpl, const JobBinding& job,
                                  std::optional<int64_t> incarnation,
                                  absl::string_view reason) const;

  const ExecAdapterOptions options_;
};

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_EXEC_ADAPTER_H_
