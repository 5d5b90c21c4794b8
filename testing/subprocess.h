// A child process for multi-process tests: started with common/process
// (posix_spawn), stdout captured through a pipe and read line by line with
// deadlines, killed for real (SIGKILL) when a test says so.
#ifndef SNAPBACK_TESTING_SUBPROCESS_H_
#define SNAPBACK_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/process.h"

namespace snapback::testing {

class Subprocess {
 public:
  // Starts argv[0] (a path) with argv. Aborts the test binary, saying why,
  // when it cannot be started (nothing to test then).
  explicit Subprocess(std::vector<std::string> argv);
  ~Subprocess();  // SIGKILLs a child still running, reaps it
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // The next line of stdout, or nullopt at EOF or when `timeout` passes.
  std::optional<std::string> ReadLine(absl::Duration timeout);
  // Reads lines until one starts with `prefix`; returns it (nullopt on
  // EOF/timeout).
  std::optional<std::string> WaitForLine(const std::string& prefix,
                                         absl::Duration timeout);
  void Kill(int signal);
  // Waits for exit; returns the exit code, 128+signal when killed, or -1 on
  // timeout.
  int Wait(absl::Duration timeout);

  // Path of a binary built into build/<preset>/bin (SNAPBACK_BIN_DIR) or
  // build/<preset>/tests.
  static std::string BinPath(const std::string& name);

 private:
  Process process_;
  pid_t pid_ = -1;   // stays set after the reap
  int out_fd_ = -1;  // the child's stdout (owned by process_)
  std::string buffer_;
  bool exited_ = false;
  int exit_code_ = -1;
};

}  // namespace snapback::testing

#endif  // SNAPBACK_TESTING_SUBPROCESS_H_
