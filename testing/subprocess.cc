#include "testing/subprocess.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/time/clock.h"

namespace snapback::testing {

Subprocess::Subprocess(std::vector<std::string> argv) {
  SpawnOptions options;
  options.search_path = false;
  options.out = Stdio::Pipe();
  absl::StatusOr<Process> process = Process::Spawn(argv, options);
  if (!process.ok()) {
    std::fprintf(stderr, "Subprocess: %s\n", process.status().ToString().c_str());
    std::abort();
  }
  process_ = *std::move(process);
  pid_ = process_.pid();
  out_fd_ = process_.stdout_fd();
}

Subprocess::~Subprocess() {
  if (!exited_) {
    Kill(SIGKILL);
    Wait(absl::Seconds(30));
  }
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
  if (!exited_) process_.Signal(signal);
}

int Subprocess::Wait(absl::Duration timeout) {
  if (exited_) return exit_code_;
  // The pidfd becomes readable when the child exits: a wait with a deadline
  // instead of polling waitpid().
  if (!process_.WaitExited(timeout)) return -1;
  const ExitStatus e = process_.Reap();
  exited_ = true;
  exit_code_ = e.signal == 0 ? e.exit_code : 128 + e.signal;
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
