#include "failure-detector/slurm_adapter.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace snapback::detector {
namespace {

// Slurm job ids are decimal; an array task is "<array id>_<index>". Anything
// else is refused before it reaches a command line (no "-h", no "1,2").
bool ValidJobId(absl::string_view id) {
  const size_t underscore = id.find('_');
  const absl::string_view main = id.substr(0, underscore);
  const absl::string_view task =
      underscore == absl::string_view::npos ? "0" : id.substr(underscore + 1);
  auto digits = [](absl::string_view s) {
    if (s.empty() || s.size() > 18) return false;
    for (char c : s) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
    }
    return true;
  };
  return digits(main) && digits(task);
}

absl::Status CheckJobId(const JobBinding& job) {
  if (ValidJobId(job.scheduler_job_id)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("job ", job.job_id, ": scheduler_job_id \"", job.scheduler_job_id,
                   "\" is not a Slurm job id (expected digits, or <array id>_<task> "
                   "for an array task); register the job with the id sbatch printed"));
}

// Words of Slurm's client commands that mean slurmctld did not answer (rather
// than refused). "Unexpected message received" is what 22.05's `scontrol
// requeue` prints when it cannot connect at all.
bool ControllerUnreachable(absl::string_view words) {
  for (absl::string_view s :
       {"Unable to contact slurm controller", "Socket timed out", "Connection refused",
        "Zero Bytes were transmitted", "Unexpected message received",
        "Slurm backup controller in standby mode", "Transport endpoint"}) {
    if (absl::StrContains(words, s)) return true;
  }
  return false;
}

// What Slurm said: stderr, or stdout when stderr is empty.
std::string SlurmWords(const CommandResult& r) {
  std::string words = LastLines(r.err, 4);
  if (words.empty()) words = LastLines(r.out, 4);
  if (words.empty()) words = "(no output)";
  return words;
}

// The status for a command that ran and failed.
absl::Status Refused(const std::vector<std::string>& argv, const CommandResult& r,
                     absl::string_view hint) {
  const std::string words = SlurmWords(r);
  if (ControllerUnreachable(words)) {
    return absl::UnavailableError(absl::StrCat(
        "`", CommandLine(argv), "` could not reach slurmctld (", r.DescribeExit(),
        "): ", words, "; retry later, and check `scontrol ping` and SLURM_CONF"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "Slurm refused `", CommandLine(argv), "` (", r.DescribeExit(), "): ", words, hint));
}

// The value of the token `key`=... in `tokens`, searching from `from`.
absl::string_view Field(const std::vector<absl::string_view>& tokens, size_t from,
                        absl::string_view key) {
  for (size_t i = from; i < tokens.size(); ++i) {
    if (absl::StartsWith(tokens[i], key) && tokens[i].size() > key.size() &&
        tokens[i][key.size()] == '=') {
      return tokens[i].substr(key.size() + 1);
    }
  }
  return {};
}

}  // namespace

SlurmAdapter::SlurmAdapter(SlurmAdapterOptions options) : options_(std::move(options)) {}

absl::StatusOr<CommandResult> SlurmAdapter::Run(const std::vector<std::string>& argv,
                                                absl::string_view what) const {
  absl::StatusOr<CommandResult> r =
      RunCommand(argv, options_.env, options_.command_timeout);
  if (r.ok()) return r;
  // A missing binary is also reported as UNAVAILABLE (retry): the detector's
  // restart-loop guard bounds the retries, and an operator can fix the PATH
  // or the option without restarting the coordinator's job.
  if (absl::IsDeadlineExceeded(r.status())) {
    return absl::UnavailableError(
        absl::StrCat("Slurm did not answer: ", r.status().message(), "; the ", what,
                     " may or may not have happened (ask for the job's status)"));
  }
  return absl::UnavailableError(absl::StrCat(
      "cannot run Slurm's client: ", r.status().message(),
      "; install slurm-client or set the path of scontrol/scancel in the slurm "
      "adapter's options"));
}

absl::Status SlurmAdapter::Restart(const JobBinding& job, int64_t incarnation,
                                   absl::string_view reason) {
  (void)incarnation;  // the coordinator has recorded it; the ranks ask it
  (void)reason;       // scontrol requeue takes none
  if (absl::Status s = CheckJobId(job); !s.ok()) return s;
  const std::vector<std::string> argv = {options_.scontrol, "requeue",
                                         job.scheduler_job_id};
  absl::StatusOr<CommandResult> r = Run(argv, "requeue");
  if (!r.ok()) return r.status();
  if (r->success()) return absl::OkStatus();
  if (absl::StrContains(r->err, "Job is pending execution")) {
    // Already queued to run again (Slurm requeued it itself, or this is a
    // retry of a requeue that went through): the next run is the restart,
    // unless the job is held and will never run by itself.
    absl::StatusOr<SchedulerStatus> st = Status(job);
    if (!st.ok()) return st.status();
    if (absl::StrContains(st->detail, "JobState=REQUEUE_HOLD") ||
        absl::StrContains(st->detail, "JobState=SPECIAL_EXIT") ||
        absl::StrContains(st->detail, "Reason=JobHeldAdmin") ||
        absl::StrContains(st->detail, "Reason=JobHeldUser")) {
      return absl::FailedPreconditionError(
          absl::StrCat("Slurm job ", job.scheduler_job_id, " is held (", st->detail,
                       "); release it with `scontrol release ", job.scheduler_job_id,
                       "` to let it run again"));
    }
    return absl::OkStatus();
  }
  return Refused(argv, *r,
                 absl::StrCat("; a restart needs a batch job submitted with `sbatch "
                              "--requeue` (or JobRequeue=1) that Slurm still knows and "
                              "this user may requeue: check `scontrol show job ",
                              job.scheduler_job_id, "` (Requeue=1)"));
}

absl::Status SlurmAdapter::Cancel(const JobBinding& job, absl::string_view reason) {
  (void)reason;  // scancel takes none
  if (absl::Status s = CheckJobId(job); !s.ok()) return s;
  const std::vector<std::string> argv = {options_.scancel, job.scheduler_job_id};
  absl::StatusOr<CommandResult> r = Run(argv, "cancel");
  if (!r.ok()) return r.status();
  if (r->success()) return absl::OkStatus();
  return Refused(
      argv, *r,
      absl::StrCat("; check that this user may cancel job ", job.scheduler_job_id,
                   " (`scontrol show job ", job.scheduler_job_id, "`)"));
}

absl::StatusOr<SchedulerStatus> SlurmAdapter::Status(const JobBinding& job) {
  if (absl::Status s = CheckJobId(job); !s.ok()) return s;
  const std::vector<std::string> argv = {options_.scontrol, "show", "job", "-o",
                                         job.scheduler_job_id};
  absl::StatusOr<CommandResult> r = Run(argv, "query");
  if (!r.ok()) return r.status();
  if (!r->success()) {
    if (absl::StrContains(r->err, "Invalid job id specified")) {
      return SchedulerStatus{SchedulerJobState::kUnknown,
                             absl::StrCat("Slurm does not know job ",
                                          job.scheduler_job_id, " (", SlurmWords(*r),
                                          "): it never existed or ended more than "
                                          "MinJobAge ago")};
    }
    return Refused(argv, *r, "");
  }
  return ParseShowJob(r->out);
}

SchedulerJobState SlurmAdapter::StateFromSlurm(absl::string_view s) {
  using S = SchedulerJobState;
  static constexpr std::pair<absl::string_view, S> kStates[] = {
      {"PENDING", S::kPending},      {"REQUEUED", S::kPending},
      {"REQUEUE_HOLD", S::kPending}, {"REQUEUE_FED", S::kPending},
      {"SPECIAL_EXIT", S::kPending}, {"RESV_DEL_HOLD", S::kPending},
      {"CONFIGURING", S::kPending},  {"RUNNING", S::kRunning},
      {"COMPLETING", S::kRunning},   {"SIGNALING", S::kRunning},
      {"STAGE_OUT", S::kRunning},    {"RESIZING", S::kRunning},
      {"SUSPENDED", S::kRunning},    {"STOPPED", S::kRunning},
      {"COMPLETED", S::kFinished},   {"FAILED", S::kFailed},
      {"TIMEOUT", S::kFailed},       {"NODE_FAIL", S::kFailed},
      {"OUT_OF_MEMORY", S::kFailed}, {"BOOT_FAIL", S::kFailed},
      {"DEADLINE", S::kFailed},      {"PREEMPTED", S::kFailed},
      {"CANCELLED", S::kCancelled},
  };
  for (const auto& [name, state] : kStates) {
    if (s == name) return state;
  }
  return S::kUnknown;
}

SchedulerStatus SlurmAdapter::ParseShowJob(absl::string_view output) {
  const absl::string_view line = output.substr(0, output.find('\n'));
  const std::vector<absl::string_view> tokens =
      absl::StrSplit(line, ' ', absl::SkipWhitespace());
  // The real JobState is the one followed by Reason=: a job name (which comes
  // earlier on the line and may hold spaces) is unlikely to fake both.
  size_t at = tokens.size();
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    if (absl::StartsWith(tokens[i], "JobState=") &&
        absl::StartsWith(tokens[i + 1], "Reason=")) {
      at = i;
      break;
    }
  }
  if (at == tokens.size()) {
    return {SchedulerJobState::kUnknown,
            absl::StrCat("unexpected output of `scontrol show job -o`: ",
                         line.substr(0, 300))};
  }
  const absl::string_view state = Field(tokens, at, "JobState");
  const absl::string_view why = Field(tokens, at, "Reason");
  const absl::string_view restarts = Field(tokens, at, "Restarts");
  SchedulerStatus st;
  st.state = StateFromSlurm(state);
  st.detail = absl::StrCat("JobState=", state, " Reason=", why);
  if (!restarts.empty()) absl::StrAppend(&st.detail, " Restarts=", restarts);
  return st;
}

}  // namespace snapback::detector
