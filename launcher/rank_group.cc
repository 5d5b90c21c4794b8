#include "launcher/rank_group.h"

#include <poll.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace snapback::launcher {

ExitClass ClassifyExit(int exit_code, int signal) {
  if (signal != 0) return ExitClass::kRestart;
  if (exit_code == 0) return ExitClass::kDone;
  if (exit_code == kExitNoRestart) return ExitClass::kNoRestart;
  return ExitClass::kRestart;
}

std::string RankExit::Describe() const {
  std::string how = signal != 0 ? absl::StrCat("killed by signal ", signal, " (",
                                               strsignal(signal), ")")
                                : absl::StrCat("exited with code ", exit_code);
  const char* what = cls == ExitClass::kDone        ? "done"
                     : cls == ExitClass::kNoRestart ? "do not restart"
                                                    : "restart";
  return absl::StrCat("rank ", rank, " (pid ", pid, ", incarnation ", incarnation, ") ",
                      how, ": ", what);
}

RankGroup::RankGroup(LaunchSpec spec) : spec_(std::move(spec)) {}

RankGroup::~RankGroup() { StopAll(absl::Seconds(5)); }

int RankGroup::running() const {
  int n = 0;
  for (const Proc& p : procs_) n += p.process.valid() ? 1 : 0;
  return n;
}

std::vector<pid_t> RankGroup::pids() const {
  std::vector<pid_t> out;
  for (const Proc& p : procs_) {
    if (p.process.valid()) out.push_back(p.process.pid());
  }
  return out;
}

absl::Status RankGroup::Start(int64_t incarnation) {
  if (running() > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(running(), " rank(s) of incarnation ", incarnation_,
                     " are still running; stop them first"));
  }
  if (spec_.argv.empty() || spec_.nproc < 1) {
    return absl::InvalidArgumentError(
        "a launch needs a command and at least one process");
  }
  procs_.clear();
  incarnation_ = incarnation;
  SpawnOptions options;
  // Ours are set below; other SNAPBACK_* settings pass through.
  options.unset_env = {"SNAPBACK_JOB", "SNAPBACK_RANK", "SNAPBACK_WORLD_SIZE",
                       "SNAPBACK_INCARNATION", "SNAPBACK_ENDPOINT"};
  options.env = spec_.env;
  options.env["SNAPBACK_JOB"] = spec_.job_id;
  options.env["SNAPBACK_WORLD_SIZE"] = absl::StrCat(spec_.nproc);
  options.env["SNAPBACK_INCARNATION"] = absl::StrCat(incarnation);
  if (!spec_.endpoint.empty()) options.env["SNAPBACK_ENDPOINT"] = spec_.endpoint;
  // A rank's children (e.g. data-loader workers) are in its group and die
  // with it.
  options.new_process_group = true;
  // A rank that cannot be executed is a failed rank (exit 127), decided on
  // by the detector like any other, not an error of the launcher.
  options.on_exec_failure = OnExecFailure::kChildExits127;
  options.exec_failure_message =
      absl::StrCat("snapback-launch: cannot execute the rank command ", spec_.argv[0]);
  for (int rank = 0; rank < spec_.nproc; ++rank) {
    options.env["SNAPBACK_RANK"] = absl::StrCat(rank);
    absl::StatusOr<Process> process = Process::Spawn(spec_.argv, options);
    if (!process.ok()) {
      StopAll(absl::Seconds(5));
      return absl::InternalError(
          absl::StrCat("starting rank ", rank, ": ", process.status().message()));
    }
    procs_.push_back({rank, *std::move(process)});
  }
  return absl::OkStatus();
}

std::optional<RankExit> RankGroup::Reap(Proc& p) {
  // The rank's children (e.g. data-loader workers) die with it: its
  // process group still exists while the zombie holds the pid.
  if (p.process.HasExited()) p.process.SignalGroup(SIGKILL);
  std::optional<ExitStatus> status = p.process.TryReap();
  if (!status.has_value()) return std::nullopt;
  RankExit e;
  e.rank = p.rank;
  e.incarnation = incarnation_;
  e.pid = p.process.pid();
  e.signal = status->signal;
  e.exit_code = status->exit_code;
  e.cls = ClassifyExit(e.exit_code, e.signal);
  return e;
}

std::optional<RankExit> RankGroup::WaitExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    std::vector<pollfd> fds;
    std::vector<Proc*> owners;
    for (Proc& p : procs_) {
      if (!p.process.valid()) continue;
      fds.push_back({p.process.pidfd(), POLLIN, 0});
      owners.push_back(&p);
    }
    if (fds.empty()) return std::nullopt;
    const int64_t ms =
        std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
    const int rc =
        poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return std::nullopt;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents != 0) {
        if (auto e = Reap(*owners[i])) return e;
      }
    }
  }
}

void RankGroup::StopAll(absl::Duration grace) {
  for (Proc& p : procs_) {
    if (!p.process.valid()) continue;
    p.process.SignalGroup(SIGTERM);
    // A frozen (SIGSTOPped) rank acts on SIGTERM only once continued.
    p.process.SignalGroup(SIGCONT);
  }
  const absl::Time deadline = absl::Now() + grace;
  while (running() > 0 && absl::Now() < deadline) {
    std::vector<pollfd> fds;
    std::vector<Proc*> owners;
    for (Proc& p : procs_) {
      if (p.process.valid()) {
        fds.push_back({p.process.pidfd(), POLLIN, 0});
        owners.push_back(&p);
      }
    }
    const int64_t ms =
        std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (poll(fds.data(), fds.size(), static_cast<int>(ms)) > 0) {
      for (size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents != 0) (void)Reap(*owners[i]);
      }
    }
  }
  for (Proc& p : procs_) {
    if (!p.process.valid()) continue;
    p.process.SignalGroup(SIGKILL);
    p.process.Signal(SIGKILL);
    p.process.Reap();
  }
}

}  // namespace snapback::launcher
