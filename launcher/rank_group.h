// RankGroup: the processes of one incarnation of a job on this machine — the
// process-management core of snapback-launch (the local scheduler).
//
// Start(incarnation) spawns nproc copies of the rank command, each with
// SNAPBACK_JOB, SNAPBACK_RANK, SNAPBACK_WORLD_SIZE, SNAPBACK_INCARNATION and
// SNAPBACK_ENDPOINT set and in a process group of its own (so a rank's
// children die with it). WaitExit() reports each rank's exit, classified by
// the exit-code contract below; StopAll() ends the survivors with SIGTERM,
// then SIGKILL after a grace period, and reaps them.
//
// Exit-code contract (docs/architecture.md):
//   0                      done: this rank finished the job
//   kExitNoRestart (78)    do not restart: a configuration or user error
//   kExitRestartMe (75)    restart me: a transient failure the rank noticed
//   any other code         failure: restart
//   killed by a signal     failure: restart
//
// Processes are started by common/process (an empty signal mask and default
// dispositions in every rank; a rank command that cannot be executed is a
// rank that exits with 127, so it restarts like any failed rank). Exits are
// waited for with pidfds and poll(), not by polling waitpid.
// Not thread-safe: one owner.
#ifndef SNAPBACK_LAUNCHER_RANK_GROUP_H_
#define SNAPBACK_LAUNCHER_RANK_GROUP_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/process.h"

namespace snapback::launcher {

inline constexpr int kExitRestartMe = 75;  // EX_TEMPFAIL
inline constexpr int kExitNoRestart = 78;  // EX_CONFIG

enum class ExitClass { kDone, kNoRestart, kRestart };

struct LaunchSpec {
  std::string job_id;
  int nproc = 1;
  // The rank command: argv[0] is looked up in PATH.
  std::vector<std::string> argv;
  // Coordinator address given to the ranks as SNAPBACK_ENDPOINT.
  std::string endpoint;
  // More environment for every rank.
  std::map<std::string, std::string> env;
};

struct RankExit {
  int rank = -1;
  int64_t incarnation = 0;
  pid_t pid = -1;
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal killed it
  ExitClass cls = ExitClass::kRestart;
  std::string Describe() const;
};

// The class of a waitpid() status under the contract above.
ExitClass ClassifyExit(int exit_code, int signal);

class RankGroup {
 public:
  explicit RankGroup(LaunchSpec spec);
  ~RankGroup();  // StopAll(5 s)
  RankGroup(const RankGroup&) = delete;
  RankGroup& operator=(const RankGroup&) = delete;

  // Spawns the ranks of `incarnation`. FAILED_PRECONDITION while ranks of
  // the previous start are alive (StopAll() first); INTERNAL when a process
  // cannot be started (the ones already started are stopped).
  absl::Status Start(int64_t incarnation);
  // The next exit of a rank of the current start, or nullopt when none
  // happens within `timeout` (or no rank is running).
  std::optional<RankExit> WaitExit(absl::Duration timeout);
  // SIGTERM to every running rank's process group, SIGKILL to those still
  // alive after `grace`; returns when all are reaped. Their exits are not
  // reported by WaitExit().
  void StopAll(absl::Duration grace);

  int running() const;
  int64_t incarnation() const { return incarnation_; }
  std::vector<pid_t> pids() const;

 private:
  struct Proc {
    int rank;
    Process process;  // valid() while the rank runs
  };
  std::optional<RankExit> Reap(Proc& p);

  LaunchSpec spec_;
  int64_t incarnation_ = 0;
  std::vector<Proc> procs_;
};

}  // namespace snapback::launcher

#endif  // SNAPBACK_LAUNCHER_RANK_GROUP_H_
