// Detector: the failure detector of the coordinator — one JobMonitor per job,
// a thread that evaluates their timers, the scheduler adapters that restart
// or cancel jobs, and the durable incident log.
//
// Inputs come from the coordinator's gRPC handlers (heartbeat streams, the
// launcher's control streams, commits). When a monitor says a job failed,
// the detector
//   1. raises the job's incarnation in the coordinator's metadata (fencing
//      every rank of the old one: their checkpoint calls now fail), then
//   2. orders the job's scheduler adapter to restart it as that incarnation,
// and writes every change of an incident's timeline to the log before it
// acts on it. A job without a scheduler binding is only logged: nothing can
// restart it, so it is not fenced either.
//
// A restart order the scheduler refuses is retried every restart_retry (and
// noted on the incident). A job the restart-loop guard gave up on, or whose
// rank exited with the "do not restart" code, is cancelled through its
// adapter and stays GAVE_UP.
//
// Time: the monitors read the injected clock. The detector's thread waits
// in real time for the earliest monitor deadline (at most max_wait); tests
// on a FakeClock call TEST_Evaluate() after moving the clock instead.
//
// Thread-safe.
#ifndef SNAPBACK_FAILURE_DETECTOR_DETECTOR_H_
#define SNAPBACK_FAILURE_DETECTOR_DETECTOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "failure-detector/job_monitor.h"
#include "failure-detector/scheduler.h"
#include "snapback/v1/coordinator.pb.h"
#include "snapback/v1/detector.pb.h"

namespace snapback::detector {

// What the detector needs of the coordinator's metadata (implemented over
// CoordinatorStore; a fake in tests).
class JobDirectory {
 public:
  virtual ~JobDirectory() = default;
  virtual absl::StatusOr<v1::JobInfo> DescribeJob(const std::string& job_id) = 0;
  // Raises the job's incarnation to max(current + 1, at_least) (aborting the
  // older incarnations' WRITING checkpoints) and returns the job as updated.
  // `at_least` covers ranks that run an incarnation the metadata has not
  // recorded yet (a new job's first run, before its first checkpoint call).
  virtual absl::StatusOr<v1::JobInfo> AdvanceIncarnation(const std::string& job_id,
                                                         int64_t at_least) = 0;
  // Writes (creates or replaces) incident (job_id, seq), synced.
  virtual absl::Status PutIncident(const v1::Incident& incident) = 0;
  virtual absl::StatusOr<std::vector<v1::Incident>> ListIncidents(
      const std::string& job_id) = 0;
  // Writes (creates or replaces) run (job_id, run), synced; lists a job's.
  virtual absl::Status PutJobRun(const v1::JobRun& run) = 0;
  virtual absl::StatusOr<std::vector<v1::JobRun>> ListJobRuns(
      const std::string& job_id) = 0;
};

struct DetectorOptions {
  // Thresholds of every job's monitor (world_size comes from the job).
  // Default: see MonitorOptions
  MonitorOptions monitor;
  // How soon a restart the scheduler refused is ordered again.
  // Default: 5 s
  absl::Duration restart_retry = absl::Seconds(5);
  // Longest the thread sleeps between evaluations.
  // Default: 250 ms
  absl::Duration max_wait = absl::Milliseconds(250);
  // Run the evaluation thread (false in tests that drive time by hand).
  // Default: true
  bool run_thread = true;
};

class Detector {
 public:
  // `clock` and `jobs` are not owned and must outlive the detector.
  Detector(DetectorOptions options, Clock* clock, JobDirectory* jobs);
  ~Detector();  // Stop()
  // Stops the evaluation thread (no more orders). Idempotent.
  void Stop();
  Detector(const Detector&) = delete;
  Detector& operator=(const Detector&) = delete;

  // Adds the adapter for jobs whose JobInfo.scheduler is adapter->name().
  void AddAdapter(std::shared_ptr<SchedulerAdapter> adapter);

  // A beat of a rank. FAILED_PRECONDITION when the rank's incarnation is
  // older than the job's (a fenced zombie: it must exit); NOT_FOUND for an
  // unknown job.
  absl::Status OnHeartbeat(const std::string& job_id, const Heartbeat& beat);
  // The rank's heartbeat stream ended: `done` when it said goodbye (phase
  // DONE), else the process died.
  void OnStreamEnded(const std::string& job_id, int rank, int64_t incarnation, bool done);
  // The launcher saw a rank exit.
  void OnRankExited(const std::string& job_id, const v1::RankExited& exit);
  // A checkpoint of the job committed.
  void OnCommitted(const std::string& job_id, int64_t step);
  // A launcher (re)connected: returns the incarnation its ranks must run. A
  // fresh start (running_incarnation 0) begins a new incarnation; a
  // reconnect keeps the running one unless a restart is pending.
  absl::StatusOr<int64_t> OnLauncherHello(const std::string& job_id,
                                          int64_t running_incarnation);
  // Operator: restart the job now. FAILED_PRECONDITION when it has no
  // scheduler or was given up.
  absl::Status RequestRestart(const std::string& job_id, const std::string& reason);

  absl::StatusOr<v1::JobHealth> Health(const std::string& job_id);
  absl::StatusOr<std::vector<v1::Incident>> Incidents(const std::string& job_id);
  // The state (JobStateName) of every job the detector watches: those it
  // has heard of since it started. Creates nothing (Health() would start
  // watching the job), so metrics may call it for every job.
  std::map<std::string, std::string> WatchedJobStates();

  // Evaluates every monitor once and carries out what they decide, on the
  // caller's thread (for tests with a FakeClock).
  void TEST_Evaluate();

 private:
  struct Job {
    std::unique_ptr<JobMonitor> monitor;
    JobBinding binding;
    int64_t seq_base = 0;                      // incidents logged before this monitor
    std::vector<std::string> persisted;        // serialized incidents as last written
    v1::JobRun run;                            // the run being watched
    std::string persisted_run;                 // `run` as last written
    size_t persisted_closed = 0;               // incidents [0, n) were written closed
    JobState last_state = JobState::kRunning;  // as last logged
    absl::Duration retry_at = absl::InfiniteDuration();  // monotonic
    int64_t retry_incarnation = 0;
    std::string retry_reason;
  };
  struct Order {
    std::string job_id;
    enum { kRestart, kCancel } type = kRestart;
    // Raise the incarnation first (false: a retry of an order already made).
    bool advance = true;
    int64_t incarnation = 0;
    std::string reason;
  };

  // The job's entry, created from the coordinator's metadata on first use.
  absl::StatusOr<Job*> GetJob(const std::string& job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::unique_ptr<JobMonitor> NewMonitor(const v1::JobInfo& info)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A new monitor watches a new run of the job.
  static void NewRun(Job& job);
  // Writes the incidents whose timeline changed, and the run's times.
  void Persist(const std::string& job_id, Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ticks every monitor; returns the orders to carry out (without the lock).
  std::vector<Order> Evaluate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Raises the incarnation (for a restart) and calls the adapter.
  void Carry(std::vector<Order> orders) ABSL_LOCKS_EXCLUDED(mu_);
  void Loop();

  const DetectorOptions options_;
  Clock* const clock_;
  JobDirectory* const jobs_;

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<SchedulerAdapter>> adapters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Job> by_id_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Serialises Carry() so two restarts of one job never interleave.
  absl::Mutex carry_mu_;
  std::thread thread_;
};

// The wire form of an incident of `job_id`.
v1::Incident IncidentToProto(const std::string& job_id, int64_t seq, const Incident& in);
v1::RankPhase PhaseToProto(Phase p);
// Heartbeat phase from the wire; DONE and unspecified map to kTraining.
Phase PhaseFromProto(v1::RankPhase p);

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_DETECTOR_H_
