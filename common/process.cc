#include "common/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"

extern char** environ;

namespace snapback {
namespace {

// Descriptors Spawn() opened for the child; the parent's copies are closed
// once the child has its own.
struct ChildFds {
  int fd[3] = {-1, -1, -1};  // what becomes the child's 0, 1, 2 (-1: inherit)
  bool err_same_as_out = false;
  std::vector<int> owned;  // to close in the parent after the spawn
  ~ChildFds() {
    for (int f : owned) close(f);
  }
};

// Moves `fd` (ours, close-on-exec) above 2, so that setting up one standard
// stream in the child cannot overwrite the source of another.
int AboveStdio(int fd) {
  if (fd > STDERR_FILENO) return fd;
  const int moved = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  close(fd);
  return moved;
}

absl::Status Errno(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(err)));
}

// Sets up the child's stream `target` as `s` says; `parent_end` gets the
// caller's end of a pipe.
absl::Status Prepare(const Stdio& s, int target, ChildFds& fds, int* parent_end) {
  const bool input = target == STDIN_FILENO;
  int fd = -1;
  switch (s.kind) {
    case Stdio::Kind::kInherit:
      return absl::OkStatus();
    case Stdio::Kind::kSameAsStdout:
      if (target != STDERR_FILENO) {
        return absl::InvalidArgumentError("Stdio::SameAsStdout() is for stderr only");
      }
      fds.err_same_as_out = true;
      return absl::OkStatus();
    case Stdio::Kind::kFd:
      fds.fd[target] = s.fd;  // the caller's: not ours to close
      return absl::OkStatus();
    case Stdio::Kind::kDevNull:
      fd = open("/dev/null", (input ? O_RDONLY : O_WRONLY) | O_CLOEXEC);
      if (fd < 0) return Errno("open /dev/null", errno);
      break;
    case Stdio::Kind::kFile: {
      const int flags =
          input ? O_RDONLY : O_WRONLY | O_CREAT | (s.append ? O_APPEND : O_TRUNC);
      fd = open(s.path.c_str(), flags | O_CLOEXEC, 0644);
      if (fd < 0) {
        return Errno(absl::StrCat("open ", s.path, " for the child's ",
                                  input         ? "stdin"
                                  : target == 1 ? "stdout"
                                                : "stderr"),
                     errno);
      }
      break;
    }
    case Stdio::Kind::kPipe: {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) return Errno("pipe", errno);
      // The child reads stdin from p[0] and writes its output to p[1].
      *parent_end = AboveStdio(input ? p[1] : p[0]);
      fd = input ? p[0] : p[1];
      break;
    }
  }
  fd = AboveStdio(fd);
  if (fd < 0) return Errno("fcntl(F_DUPFD_CLOEXEC)", errno);
  fds.owned.push_back(fd);
  fds.fd[target] = fd;
  return absl::OkStatus();
}

bool Unset(absl::string_view name, const std::vector<std::string>& unset) {
  for (const std::string& u : unset) {
    if (!u.empty() && u.back() == '*') {
      if (absl::StartsWith(name, absl::string_view(u).substr(0, u.size() - 1))) {
        return true;
      }
    } else if (name == u) {
      return true;
    }
  }
  return false;
}

std::vector<std::string> BuildEnv(const SpawnOptions& o) {
  std::vector<std::string> out;
  if (o.inherit_env) {
    for (char** e = environ; *e != nullptr; ++e) {
      absl::string_view kv(*e);
      const absl::string_view name = kv.substr(0, kv.find('='));
      if (o.env.contains(std::string(name)) || Unset(name, o.unset_env)) continue;
      out.emplace_back(kv);
    }
  }
  for (const auto& [k, v] : o.env) out.push_back(absl::StrCat(k, "=", v));
  return out;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Writes a NUL-terminated string (async-signal-safe).
void WriteAll(int fd, const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    const ssize_t w = write(fd, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

// The child side of the fork path: only async-signal-safe calls (and
// execvpe, which searches PATH with stack buffers in glibc).
[[noreturn]] void RunChild(const SpawnOptions& o, const ChildFds& fds, char* const* argv,
                           char* const* envp, const char* failure_message) {
  if (o.new_process_group) setpgid(0, 0);
  // Dispositions first, then the mask: a pending signal must not run one of
  // the parent's handlers here.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int target = 0; target < 3; ++target) {
    const int fd = fds.fd[target];
    if (fd < 0) continue;
    if (fd == target) {
      fcntl(fd, F_SETFD, 0);  // keep it across the exec
    } else {
      dup2(fd, target);
    }
  }
  if (fds.err_same_as_out) dup2(STDOUT_FILENO, STDERR_FILENO);
  int err = 0;
  if (!o.working_dir.empty() && chdir(o.working_dir.c_str()) != 0) {
    err = errno;
  } else {
    if (o.search_path) {
      execvpe(argv[0], argv, envp);
    } else {
      execve(argv[0], argv, envp);
    }
    err = errno;
  }
  WriteAll(STDERR_FILENO, failure_message);
  WriteAll(STDERR_FILENO, ": ");
  const char* desc = strerrordesc_np(err);  // a table lookup, unlike strerror
  WriteAll(STDERR_FILENO, desc != nullptr ? desc : "unknown error");
  WriteAll(STDERR_FILENO, "\n");
  _exit(127);
}

}  // namespace

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

int PidfdSendSignal(int pidfd, int sig) {
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

bool WaitPidfd(int pidfd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    pollfd p{pidfd, POLLIN, 0};
    // Round up so that the last poll does not spin on a sub-millisecond rest.
    const absl::Duration left = deadline - absl::Now();
    const int64_t ms =
        left <= absl::ZeroDuration() ? 0 : absl::ToInt64Milliseconds(left) + 1;
    const int rc = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 1) return true;
    if (rc < 0 || absl::Now() >= deadline) return false;
  }
}

absl::StatusOr<Process> Process::Spawn(const std::vector<std::string>& argv,
                                       const SpawnOptions& options) {
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("Process::Spawn: an empty command");
  }
  // Everything the child needs is built here, before any fork.
  std::vector<std::string> env_strings = BuildEnv(options);
  std::vector<std::string> arg_strings = argv;
  std::vector<char*> envp = Pointers(env_strings);
  std::vector<char*> args = Pointers(arg_strings);
  const std::string failure_message = options.exec_failure_message.empty()
                                          ? absl::StrCat("cannot execute ", argv[0])
                                          : options.exec_failure_message;

  Process p;
  ChildFds fds;
  absl::Status s = Prepare(options.in, STDIN_FILENO, fds, &p.in_fd_);
  if (s.ok()) s = Prepare(options.out, STDOUT_FILENO, fds, &p.out_fd_);
  if (s.ok()) s = Prepare(options.err, STDERR_FILENO, fds, &p.err_fd_);
  if (!s.ok()) return s;  // `p` closes the parent's pipe ends

  pid_t pid = -1;
  if (options.on_exec_failure == OnExecFailure::kChildExits127) {
    pid = fork();
    if (pid < 0) return Errno(absl::StrCat("fork for ", argv[0]), errno);
    if (pid == 0)
      RunChild(options, fds, args.data(), envp.data(), failure_message.c_str());
    // Also from the parent: no race with a signal to the group right after.
    if (options.new_process_group) setpgid(pid, pid);
  } else {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    for (int target = 0; target < 3; ++target) {
      // glibc clears close-on-exec when source and target are the same.
      if (fds.fd[target] >= 0) {
        posix_spawn_file_actions_adddup2(&actions, fds.fd[target], target);
      }
    }
    if (fds.err_same_as_out) {
      posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    }
    if (!options.working_dir.empty()) {
      posix_spawn_file_actions_addchdir_np(&actions, options.working_dir.c_str());
    }
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (options.new_process_group) flags |= POSIX_SPAWN_SETPGROUP;
    posix_spawnattr_setflags(&attr, flags);
    posix_spawnattr_setpgroup(&attr, 0);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    const int rc =
        options.search_path
            ? posix_spawnp(&pid, args[0], &actions, &attr, args.data(), envp.data())
            : posix_spawn(&pid, args[0], &actions, &attr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      const char* path = std::getenv("PATH");
      const std::string where =
          options.search_path && argv[0].find('/') == std::string::npos
              ? absl::StrCat(" (looked up in PATH=", path ? path : "", ")")
              : std::string();
      const std::string msg =
          absl::StrCat("cannot run `", argv[0], "`", where, ": ", strerror(rc));
      if (rc == ENOENT || rc == ENOTDIR) return absl::NotFoundError(msg);
      return absl::InternalError(msg);
    }
  }
  p.pid_ = pid;
  p.own_group_ = options.new_process_group;
  p.pidfd_ = PidfdOpen(pid);
  if (p.pidfd_ < 0) {
    const int err = errno;
    return Errno(absl::StrCat("pidfd_open for ", argv[0]), err);  // `p` kills it
  }
  return p;
}

Process::Process(Process&& other) noexcept { *this = std::move(other); }

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    KillAndReap();
    CloseFds();
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::exchange(other.pidfd_, -1);
    in_fd_ = std::exchange(other.in_fd_, -1);
    out_fd_ = std::exchange(other.out_fd_, -1);
    err_fd_ = std::exchange(other.err_fd_, -1);
    own_group_ = other.own_group_;
    reaped_ = std::exchange(other.reaped_, false);
  }
  return *this;
}

Process::~Process() {
  KillAndReap();
  CloseFds();
}

void Process::KillAndReap() {
  if (!valid()) return;
  SignalGroup(SIGKILL);
  Signal(SIGKILL);
  (void)Reap();
}

void Process::CloseFds() {
  for (int* fd : {&pidfd_, &in_fd_, &out_fd_, &err_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

int Process::ReleaseStdin() { return std::exchange(in_fd_, -1); }
int Process::ReleaseStdout() { return std::exchange(out_fd_, -1); }
int Process::ReleaseStderr() { return std::exchange(err_fd_, -1); }

void Process::Signal(int sig) const {
  if (!valid()) return;
  if (pidfd_ >= 0) {
    PidfdSendSignal(pidfd_, sig);
  } else {
    kill(pid_, sig);
  }
}

void Process::SignalGroup(int sig) const {
  if (valid() && own_group_) kill(-pid_, sig);
}

bool Process::HasExited() const {
  if (pid_ <= 0 || reaped_) return reaped_;
  siginfo_t info{};
  return waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid_;
}

bool Process::WaitExited(absl::Duration timeout) const {
  if (pid_ <= 0 || reaped_) return reaped_;
  return WaitPidfd(pidfd_, timeout);
}

namespace {
ExitStatus FromWaitStatus(int status) {
  ExitStatus e;
  if (WIFSIGNALED(status)) e.signal = WTERMSIG(status);
  if (WIFEXITED(status)) e.exit_code = WEXITSTATUS(status);
  return e;
}
}  // namespace

std::optional<ExitStatus> Process::TryReap() {
  if (!valid()) return std::nullopt;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) != pid_) return std::nullopt;
  reaped_ = true;
  if (pidfd_ >= 0) close(pidfd_);
  pidfd_ = -1;
  return FromWaitStatus(status);
}

ExitStatus Process::Reap() {
  if (!valid()) return {};
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  reaped_ = true;
  if (pidfd_ >= 0) close(pidfd_);
  pidfd_ = -1;
  return r == pid_ ? FromWaitStatus(status) : ExitStatus{};
}

}  // namespace snapback
