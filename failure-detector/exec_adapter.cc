#include "failure-detector/exec_adapter.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "failure-detector/command.h"

namespace snapback::detector {

ExecAdapter::ExecAdapter(ExecAdapterOptions options) : options_(std::move(options)) {}

std::string ExecAdapter::Expand(absl::string_view tmpl, const JobBinding& job,
                                std::optional<int64_t> incarnation,
                                absl::string_view reason) {
  // StrReplaceAll scans the template once, so a value that itself contains
  // "{job}" is not substituted again.
  return absl::StrReplaceAll(
      tmpl, {{"{job}", ShellQuote(job.job_id)},
             {"{scheduler_job_id}", ShellQuote(job.scheduler_job_id)},
             {"{incarnation}",
              ShellQuote(incarnation ? absl::StrCat(*incarnation) : std::string())},
             {"{world_size}", ShellQuote(absl::StrCat(job.world_size))},
             {"{reason}", ShellQuote(reason)}});
}

absl::StatusOr<std::string> ExecAdapter::Run(absl::string_view action,
                                             absl::string_view flag,
                                             const std::string& tmpl,
                                             const JobBinding& job,
                                             std::optional<int64_t> incarnation,
                                             absl::string_view reason) const {
  if (tmpl.empty()) {
    return absl::UnimplementedError(absl::StrCat("the exec scheduler adapter has no ",
                                                 action, " command: set it with ", flag,
                                                 " (job ", job.job_id, ")"));
  }
  const std::string script = Expand(tmpl, job, incarnation, reason);
  absl::StatusOr<CommandResult> r =
      RunCommand({"/bin/sh", "-c", script}, {}, options_.timeout);
  if (!r.ok()) {
    if (absl::IsDeadlineExceeded(r.status())) {
      return absl::UnavailableError(absl::StrCat(
          "the ", action, " command of job ", job.job_id,
          " timed out: ", r.status().message(), "; it may or may not have taken effect"));
    }
    return r.status();
  }
  if (!r->success()) {
    const std::string tail = LastLines(r->err, 5);
    return absl::FailedPreconditionError(absl::StrCat(
        "the ", action, " command of job ", job.job_id, " failed (", r->DescribeExit(),
        "): ", tail.empty() ? "(nothing on stderr)" : tail, "; command: ", script));
  }
  return std::move(r->out);
}

absl::Status ExecAdapter::Restart(const JobBinding& job, int64_t incarnation,
                                  absl::string_view reason) {
  return Run("restart", "--exec-restart-command", options_.restart_command, job,
             incarnation, reason)
      .status();
}

absl::Status ExecAdapter::Cancel(const JobBinding& job, absl::string_view reason) {
  return Run("cancel", "--exec-cancel-command", options_.cancel_command, job,
             std::nullopt, reason)
      .status();
}

absl::StatusOr<SchedulerStatus> ExecAdapter::Status(const JobBinding& job) {
  absl::StatusOr<std::string> out = Run("status", "--exec-status-command",
                                        options_.status_command, job, std::nullopt, "");
  if (!out.ok()) return out.status();
  const absl::string_view text = absl::StripAsciiWhitespace(*out);
  const absl::string_view word = text.substr(0, text.find_first_of(" \t\r\n"));
  const std::string lower = absl::AsciiStrToLower(word);
  SchedulerStatus st;
  st.detail = std::string(text.substr(0, 500));
  using S = SchedulerJobState;
  for (S s : {S::kPending, S::kRunning, S::kFinished, S::kFailed, S::kCancelled}) {
    if (lower == SchedulerJobStateName(s)) st.state = s;
  }
  if (st.state == S::kUnknown) {
    st.detail = absl::StrCat(
        "the status command printed \"", text.substr(0, 300),
        "\"; expected pending, running, finished, failed or cancelled as its first word");
  }
  return st;
}

}  // namespace snapback::detector
