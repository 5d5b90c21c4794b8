#include "testing/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/time/clock.h"

namespace snapback::testing {

Subprocess::Subprocess(std::vector<std::string> argv) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) std::abort();
  pid_ = fork();
  if (pid_ < 0) std::abort();
  if (pid_ == 0) {
    dup2(fds[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  out_fd_ = fds[0];
}

Subprocess::~Subprocess() {
  if (!exited_) {
    Kill(SIGKILL);
    Wait(absl::Seconds(30));
  }
  if (out_fd_ >= 0) close(out_fd_);
}

std::optional<std::string> Subprocess::ReadLine(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return std::nullopt;
    pollfd p{out_fd_, POLLIN, 0};
    int rc = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return std::nullopt;
    char buf[4096];
    ssize_t n = read(out_fd_, buf, sizeof(buf));
    if (n <= 0) return std::nullopt;  // EOF: the child closed stdout
    buffer_.append(buf, n);
  }
}

std::optional<std::string> Subprocess::WaitForLine(const std::string& prefix,
                                                   absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (auto line = ReadLine(deadline - absl::Now())) {
    if (line->rfind(prefix, 0) == 0) return line;
  }
  return std::nullopt;
}

void Subprocess::Kill(int signal) {
  if (!exited_) kill(pid_, signal);
}

int Subprocess::Wait(absl::Duration timeout) {
  if (exited_) return exit_code_;
  // A pidfd becomes readable when the child exits: wait on it with a
  // deadline instead of polling waitpid().
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd >= 0) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      pollfd p{pidfd, POLLIN, 0};
      const int64_t ms =
          std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
      const int rc = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
      if (rc < 0 && errno == EINTR) continue;
      break;
    }
    close(pidfd);
  }
  int status = 0;
  // Already reaped by nobody else; WNOHANG: still running means timeout.
  if (waitpid(pid_, &status, pidfd >= 0 ? WNOHANG : 0) != pid_) return -1;
  exited_ = true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return exit_code_;
}

std::string Subprocess::BinPath(const std::string& name) {
  const char* dir = std::getenv("SNAPBACK_BIN_DIR");
  std::string bin = dir ? dir : "bin";
  std::string path = bin + "/" + name;
  if (access(path.c_str(), X_OK) == 0) return path;
  return bin + "/../tests/" + name;
}

}  // namespace snapback::testing
