// Test and benchmark support for running a training job under the failure
// detector on this machine: snapback-launch as a child process whose output is
// drained by a thread (Launcher), and the progress files snapback-demo-job
// keeps with --progress-dir (ReadProgress, WaitProgress), from which a test
// picks the pid of a rank to kill or freeze.
//
// Used by tests/detector_test.cc and bench/recovery_bench.cc.
#ifndef SNAPBACK_TESTING_JOB_HARNESS_H_
#define SNAPBACK_TESTING_JOB_HARNESS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "testing/subprocess.h"

namespace snapback::testing {

// One line of DIR/rank<R>, as snapback-demo-job --progress-dir DIR writes it
// after every step: "PID INCARNATION STEP".
struct Progress {
  pid_t pid = -1;
  int64_t incarnation = 0;
  int64_t step = -1;
};

// The rank's last progress line; nullopt when the file does not exist (yet)
// or cannot be parsed.
std::optional<Progress> ReadProgress(const std::string& dir, int rank);

// Polls DIR/rank<R> (every 5 ms) until the rank is at `step` or later in
// incarnation `incarnation`, and returns that line; nullopt when `timeout`
// passes first.
std::optional<Progress> WaitProgress(const std::string& dir, int rank,
                                     int64_t incarnation, int64_t step,
                                     absl::Duration timeout);

// snapback-launch (or any command) as a child, its stdout (the launcher's and
// its ranks' lines) drained by a thread into memory so no rank ever blocks on
// a full pipe.
//
// The destructor SIGKILLs the child and waits until every process holding
// the pipe (the ranks too) has closed it: stop a job that is still running
// with Signal(SIGTERM) and Wait() first, or its ranks keep the destructor
// waiting until they finish.
//
// Thread-safe.
class Launcher {
 public:
  explicit Launcher(std::vector<std::string> argv);
  ~Launcher();
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  pid_t pid() const { return proc_.pid(); }
  // Sends `signal` to the child (SIGTERM: snapback-launch stops its ranks and
  // exits).
  void Signal(int signal);
  // Exit code once the child and its ranks closed stdout; -1 on timeout.
  int Wait(absl::Duration timeout);
  // The lines read so far that start with `prefix`.
  std::vector<std::string> Lines(const std::string& prefix);
  // Every line read so far, joined by newlines.
  std::string Output();

 private:
  Subprocess proc_;
  std::thread reader_;
  absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
  bool eof_ ABSL_GUARDED_BY(mu_) = false;
};

// What a rank of `incarnation` that is still alive gets when it saves now
// (a 16-float tensor at step 1000): FAILED_PRECONDITION ("stale
// incarnation") once a newer incarnation fenced it.
absl::Status SaveAsIncarnation(const std::string& endpoint, const std::string& job,
                               int world_size, int64_t incarnation);

}  // namespace snapback::testing

#endif  // SNAPBACK_TESTING_JOB_HARNESS_H_
