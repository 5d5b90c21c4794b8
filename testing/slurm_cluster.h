// SlurmCluster: a private, real Slurm cluster of one node on loopback, for
// tests of the slurm scheduler adapter (and anything else that needs a real
// slurmctld).
//
// Start(dir) writes a slurm.conf and a fresh munge key into `dir`, starts its
// own munged (private socket), slurmctld and slurmd in the foreground as
// children of the test (each in a process group of its own), and returns once
// the node is idle. Everything the daemons write (state, spool, pid and log
// files) stays under `dir`; the ports are picked free at run time, so it runs
// beside a system Slurm/munge and beside another SlurmCluster.
//
// Settings chosen for short tests (slurm.conf(5), Slurm 22.05):
//   AuthInfo cred_expire=5      a requeued job is eligible again after
//                               cred_expire + 1 s: ~6 s instead of 121 s (5 is
//                               the smallest value Slurm accepts)
//   SchedulerParameters bf_interval=1
//                               the backfill pass that starts it runs every
//                               second instead of every 30 s
//   KillWait=5, SlurmdTimeout=10
// With these a `scontrol requeue` of a running job had it running again in
// ~6 s on the development VM (Debian 12, 2 vCPU).
//
// Needs root (SlurmUser=root, and slurmd runs jobs as their submitter) and
// the Debian packages slurmctld, slurmd, slurm-client and munge (./dev deps).
// Start() chmods `dir` to 0711: munged insists that every directory above its
// socket be searchable by all.
//
// Stop() (also run by the destructor) ends everything by PID: SIGTERM to
// each daemon's process group, SIGKILL after a grace period, then SIGKILL to
// any process left that belongs to this cluster (slurmstepd and job
// processes, found by SLURM_CONF=<this cluster's slurm.conf> in their
// environment), then munged.
//
// Not thread-safe: one owner; the const methods may run in parallel.
#ifndef SNAPBACK_TESTING_SLURM_CLUSTER_H_
#define SNAPBACK_TESTING_SLURM_CLUSTER_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/process.h"

namespace snapback::testing {

class SlurmCluster {
 public:
  // Starts the cluster in `dir` (an existing, empty, private directory with
  // a short path: Unix socket paths are limited to 107 bytes) and waits up
  // to 60 s for its node to be idle.
  // FAILED_PRECONDITION when it cannot run here, with the reason (tests skip
  // on it, and only on it): not root, a binary missing, `dir` unusable, or a
  // daemon exiting at start-up because of the machine (a port taken, a
  // permission refused); the message quotes the daemon's last log lines.
  // INTERNAL when a daemon exits at start-up for another reason, and
  // DEADLINE_EXCEEDED when the daemons run but the node does not become idle
  // within 60 s: tests fail on those. Whatever was started is stopped again
  // on an error.
  static absl::StatusOr<std::unique_ptr<SlurmCluster>> Start(const std::string& dir);

  ~SlurmCluster();  // Stop()
  SlurmCluster(const SlurmCluster&) = delete;
  SlurmCluster& operator=(const SlurmCluster&) = delete;

  // Stops every process of the cluster (see above); returns when they are
  // gone. Idempotent.
  void Stop();

  // Environment for Slurm's client commands (SLURM_CONF), e.g. for
  // SlurmAdapterOptions::env or RunCommand.
  const std::map<std::string, std::string>& env() const { return env_; }
  const std::string& dir() const { return dir_; }
  const std::string& conf_path() const { return conf_path_; }
  // The node's name (this machine's short hostname).
  const std::string& node_name() const { return node_; }
  int slurmctld_port() const { return ctld_port_; }

  // `sbatch --parsable --requeue --output=<dir>/slurm-%j.out <extra_args>
  // <script_path>`; returns the job id. extra_args come after --requeue, so
  // "--no-requeue" overrides it. INTERNAL with sbatch's words when it fails.
  absl::StatusOr<std::string> Sbatch(
      const std::string& script_path,
      const std::vector<std::string>& extra_args = {}) const;

  // Slurm's JobState of a job ("RUNNING", "PENDING", ...) from `scontrol show
  // job`; NOT_FOUND when Slurm does not know it.
  absl::StatusOr<std::string> JobState(const std::string& job_id) const;

  // The last lines of each daemon's log, for failure messages.
  std::string LogTail(int lines = 10) const;

 private:
  struct Daemon {
    std::string name;
    Process process;       // in a process group of its own
    std::string out_path;  // its stdout and stderr
  };

  explicit SlurmCluster(std::string dir);
  absl::Status StartDaemon(const std::string& name, std::vector<std::string> argv);
  // FAILED_PRECONDITION when one of the daemons has exited.
  absl::Status CheckAlive() const;
  // Waits up to `timeout` for a daemon to exit (returns early then).
  void WaitOnDaemons(absl::Duration timeout) const;
  void StopDaemon(Daemon& d, absl::Duration grace);
  // SIGKILLs the processes outside our children that carry this cluster's
  // SLURM_CONF, and waits for them to exit.
  void KillLeftovers();

  std::string dir_;
  std::string conf_path_;
  std::string node_;
  int ctld_port_ = 0;
  std::map<std::string, std::string> env_;
  std::string sbatch_, scontrol_;
  std::vector<Daemon> daemons_;  // munged first
};

}  // namespace snapback::testing

#endif  // SNAPBACK_TESTING_SLURM_CLUSTER_H_
