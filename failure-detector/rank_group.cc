#include "failure-detector/rank_group.h"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace snapback::detector {
namespace {

// glibc 2.36's <sys/pidfd.h> lacks C linkage for C++ callers: use the
// system call directly.
int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

}  // namespace

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
  for (const Proc& p : procs_) n += p.alive ? 1 : 0;
  return n;
}

std::vector<pid_t> RankGroup::pids() const {
  std::vector<pid_t> out;
  for (const Proc& p : procs_) {
    if (p.alive) out.push_back(p.pid);
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
  for (Proc& p : procs_) {
    if (p.pidfd >= 0) close(p.pidfd);
  }
  procs_.clear();
  incarnation_ = incarnation;
  for (int rank = 0; rank < spec_.nproc; ++rank) {
    // Everything the child needs is built here: after fork() in a threaded
    // process only async-signal-safe calls are allowed.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      absl::string_view kv(*e);
      const absl::string_view key = kv.substr(0, kv.find('='));
      // Ours are set below; other SNAPBACK_* settings pass through.
      if (key == "SNAPBACK_JOB" || key == "SNAPBACK_RANK" ||
          key == "SNAPBACK_WORLD_SIZE" || key == "SNAPBACK_INCARNATION" ||
          key == "SNAPBACK_ENDPOINT" || spec_.env.contains(std::string(key))) {
        continue;
      }
      env_strings.emplace_back(kv);
    }
    for (const auto& [k, v] : spec_.env) env_strings.push_back(absl::StrCat(k, "=", v));
    env_strings.push_back(absl::StrCat("SNAPBACK_JOB=", spec_.job_id));
    env_strings.push_back(absl::StrCat("SNAPBACK_RANK=", rank));
    env_strings.push_back(absl::StrCat("SNAPBACK_WORLD_SIZE=", spec_.nproc));
    env_strings.push_back(absl::StrCat("SNAPBACK_INCARNATION=", incarnation));
    if (!spec_.endpoint.empty()) {
      env_strings.push_back(absl::StrCat("SNAPBACK_ENDPOINT=", spec_.endpoint));
    }
    std::vector<char*> envp, argv;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = spec_.argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);

    pid_t pid = fork();
    if (pid < 0) {
      const int err = errno;
      StopAll(absl::Seconds(5));
      return absl::InternalError(
          absl::StrCat("fork for rank ", rank, ": ", strerror(err)));
    }
    if (pid == 0) {
      setpgid(0, 0);
      // The launcher blocks SIGINT/SIGTERM to read them from a signalfd; a
      // rank must get them (StopAll's SIGTERM, Ctrl-C) like any process.
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      execvpe(argv[0], argv.data(), envp.data());
      const char msg[] = "snapback-launch: cannot execute the rank command\n";
      (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
      _exit(127);
    }
    setpgid(pid, pid);  // also from the parent: no race with the first kill
    int fd = PidfdOpen(pid);
    if (fd < 0) {
      const int err = errno;
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      StopAll(absl::Seconds(5));
      return absl::InternalError(
          absl::StrCat("pidfd_open for rank ", rank, ": ", strerror(err)));
    }
    procs_.push_back({rank, pid, fd, true});
  }
  return absl::OkStatus();
}

std::optional<RankExit> RankGroup::Reap(Proc& p) {
  // The rank's children (e.g. data-loader workers) die with it: its
  // process group still exists while the zombie holds the pid.
  siginfo_t info{};
  if (waitid(P_PID, p.pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
      info.si_pid == p.pid) {
    kill(-p.pid, SIGKILL);
  }
  int status = 0;
  pid_t r = waitpid(p.pid, &status, WNOHANG);
  if (r != p.pid) return std::nullopt;
  p.alive = false;
  close(p.pidfd);
  p.pidfd = -1;
  RankExit e;
  e.rank = p.rank;
  e.incarnation = incarnation_;
  e.pid = p.pid;
  if (WIFSIGNALED(status)) e.signal = WTERMSIG(status);
  if (WIFEXITED(status)) e.exit_code = WEXITSTATUS(status);
  e.cls = ClassifyExit(e.exit_code, e.signal);
  return e;
}

std::optional<RankExit> RankGroup::WaitExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    std::vector<pollfd> fds;
    std::vector<Proc*> owners;
    for (Proc& p : procs_) {
      if (!p.alive) continue;
      fds.push_back({p.pidfd, POLLIN, 0});
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
    if (!p.alive) continue;
    kill(-p.pid, SIGTERM);
    // A frozen (SIGSTOPped) rank acts on SIGTERM only once continued.
    kill(-p.pid, SIGCONT);
  }
  const absl::Time deadline = absl::Now() + grace;
  while (running() > 0 && absl::Now() < deadline) {
    std::vector<pollfd> fds;
    std::vector<Proc*> owners;
    for (Proc& p : procs_) {
      if (p.alive) {
        fds.push_back({p.pidfd, POLLIN, 0});
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
    if (!p.alive) continue;
    kill(-p.pid, SIGKILL);
    kill(p.pid, SIGKILL);
    waitpid(p.pid, nullptr, 0);
    p.alive = false;
    close(p.pidfd);
    p.pidfd = -1;
  }
}

}  // namespace snapback::detector
