// JobMonitor: the failure-detection state machine of one job.
//
//   RUNNING ──(a rank's phi ≥ suspect_phi)──► SUSPECT ──(phi ≥ fail_phi)──► FAILED
//      │   ◄──────────(heartbeats resume)───────┘                            ▲  │
//      └──(stream broken / hang / phi ≥ fail_phi / operator restore)─────────┘  │ Tick():
//      kRestart
//                                                                               ▼
//   RUNNING ◄──(a step beyond the restored one)── RECOVERING ◄──(every rank of
//                                                  the new incarnation beats)──
//                                                  RESTARTING
//
// Three signals, all from the ranks' heartbeats (rank, incarnation, step,
// phase): a broken heartbeat stream (the process died: detected at once), a
// phi-accrual suspicion (heartbeats stopped: node, network, or a frozen
// process), and a step that stops advancing for longer than hang_factor ×
// the median time between observed step changes, with a floor (a hung collective:
// heartbeats still flow). Saving and restoring phases have their own budgets, so a long
// save is not a hang.
//
// Every failure opens an Incident with its timeline (last healthy, detected,
// restart requested, ranks back, restored step, first new step). After
// max_restarts_without_progress restarts with no newly committed step, Tick()
// gives up instead of restarting again (GAVE_UP, a terminal FAILED).
//
// All time comes from the injected Clock: monotonic readings for intervals,
// wall time for the incident timestamps. Not thread-safe; the owner
// serialises calls.
#ifndef SNAPBACK_FAILURE_DETECTOR_JOB_MONITOR_H_
#define SNAPBACK_FAILURE_DETECTOR_JOB_MONITOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/clock.h"
#include "failure-detector/phi_accrual.h"

namespace snapback::detector {

enum class Phase { kTraining, kSaving, kRestoring };
// kFinished: every rank finished (closed its checkpointer or exited 0).
// kGaveUp: the terminal failure (restart-loop guard, a "do not restart"
// exit); the owner cancels the job.
enum class JobState {
  kRunning,
  kSuspect,
  kFailed,
  kRestarting,
  kRecovering,
  kFinished,
  kGaveUp
};
enum class IncidentKind { kRankExit, kHeartbeatLoss, kHang, kOperatorRestore };

const char* JobStateName(JobState s);
const char* IncidentKindName(IncidentKind k);

struct Heartbeat {
  int rank = 0;
  int64_t incarnation = 0;
  int64_t step = 0;
  Phase phase = Phase::kTraining;
  // An early beat (phase change, first step after one): alive, but not part
  // of the rhythm phi accrual learns.
  bool unscheduled = false;
};

// One failure and its recovery. Times are wall clock; InfinitePast() means
// "not reached yet".
struct Incident {
  IncidentKind kind = IncidentKind::kRankExit;
  int rank = -1;            // the rank that failed (-1: operator)
  int64_t incarnation = 0;  // the incarnation that failed
  std::string reason;
  int64_t last_step = -1;  // highest step any rank reported before it
  absl::Time last_healthy = absl::InfinitePast();
  absl::Time detected = absl::InfinitePast();
  absl::Time restart_requested = absl::InfinitePast();
  absl::Time ranks_back = absl::InfinitePast();
  absl::Time restored = absl::InfinitePast();
  int64_t restored_step = -1;
  absl::Time first_new_step = absl::InfinitePast();
  int64_t new_incarnation = 0;  // the incarnation that replaced it
  std::string scheduler_error;  // the scheduler's refusal, if any

  bool closed() const { return first_new_step != absl::InfinitePast(); }
  // Detection: last healthy → detected.
  absl::Duration mttd() const { return detected - last_healthy; }
  // Repair: detected → first new step (InfiniteDuration while open).
  absl::Duration mttr() const {
    return closed() ? first_new_step - detected : absl::InfiniteDuration();
  }
  // Steps done before the failure that the restart had to redo.
  int64_t lost_steps() const {
    return restored_step < 0 ? -1 : std::max<int64_t>(0, last_step - restored_step);
  }
};

struct MonitorOptions {
  // Ranks of the job; every one must beat before a (re)start counts as back.
  // Default: 1
  int world_size = 1;
  // Phi at which a silent rank makes the job SUSPECT.
  // Default: 3
  double suspect_phi = 3;
  // Phi at which it is declared failed (heartbeat loss).
  // Default: 8
  double fail_phi = 8;
  // A step that does not advance for hang_factor × the median time between
  // observed step changes (at
  // least hang_floor) while training is a hang.
  // Default: 10
  double hang_factor = 10;
  // Default: 60 s
  absl::Duration hang_floor = absl::Seconds(60);
  // Longest a rank may stay in the saving / restoring phase.
  // Default: 10 min
  absl::Duration save_budget = absl::Minutes(10);
  // Default: 10 min
  absl::Duration restore_budget = absl::Minutes(10);
  // A broken heartbeat stream fails the job this long after it broke,
  // unless the launcher reports the rank's exit first (its exit code says
  // whether to restart at all: a "do not restart" exit must not be
  // restarted because the stream broke a few ms earlier).
  // Default: 250 ms
  absl::Duration stream_break_grace = absl::Milliseconds(250);
  // A launcher reports every rank's exit code (scheduler "local"): see
  // OnRankDone.
  // Default: false
  bool exit_reports = false;
  // Restarts allowed without a newly committed step before giving up.
  // Default: 3
  int max_restarts_without_progress = 3;
  // Default: see PhiAccrualOptions
  PhiAccrualOptions phi;
};

class JobMonitor {
 public:
  // `clock` is not owned and must outlive the monitor.
  JobMonitor(MonitorOptions options, Clock* clock, int64_t incarnation);

  struct Action {
    enum Type { kNone, kRestart, kGiveUp } type = kNone;
    std::string reason;
  };

  // Inputs. Heartbeats of an older incarnation (a zombie) are ignored.
  void OnHeartbeat(const Heartbeat& beat);
  void OnStreamBroken(int rank, int64_t incarnation);
  // The launcher saw the rank's process exit with a failure (`description`
  // says how, e.g. "killed by SIGKILL"). Same effect as a broken stream.
  void OnRankFailed(int rank, int64_t incarnation, std::string description);
  // The rank finished (exit 0, or a final DONE beat): no longer monitored.
  // When every rank has finished the job is kFinished. With exit_reports
  // a goodbye alone (`goodbye`) only stops the watching: the rank counts
  // as done when the launcher reports exit 0, and a failing exit code
  // after a goodbye (an exception unwinding through Close()) is a failure.
  void OnRankDone(int rank, int64_t incarnation, bool goodbye = false);
  // A failure that must not be retried (a "do not restart" exit): the job
  // goes to kGaveUp and the next Tick() says kGiveUp.
  void OnFatal(int rank, int64_t incarnation, std::string description);
  // The scheduler refused or failed the restart order.
  void OnSchedulerError(std::string error);
  // The restart could not even be prepared (fencing failed): Tick() says
  // kRestart again, without counting it toward the restart-loop guard.
  void RetryRestart();
  // The job's latest committed step (for the restart-loop guard).
  void OnCommitted(int64_t step);
  // An operator forced a restore: the job restarts like after a failure.
  void OnOperatorRestore(int64_t step, const std::string& why = "");
  // The scheduler was asked to restart the job as `new_incarnation`.
  void OnRestartRequested(int64_t new_incarnation);

  // Evaluates the timers; says what the owner should do now.
  Action Tick();

  // What the detector knows of one rank (for health reports).
  struct RankView {
    bool seen = false;
    bool done = false;
    int64_t step = -1;
    Phase phase = Phase::kTraining;
    double phi = 0;
    absl::Time last_beat = absl::InfinitePast();
  };
  std::vector<RankView> Ranks() const;
  const std::string& give_up_reason() const { return give_up_reason_; }

  JobState state() const { return state_; }
  int64_t incarnation() const { return incarnation_; }
  const std::vector<Incident>& incidents() const { return incidents_; }
  // When Tick() next has something to decide (for scheduling the owner's
  // timer); monotonic.
  absl::Duration NextDeadline() const;

 private:
  struct RankState {
    PhiAccrualDetector phi;
    bool seen = false;
    bool done = false;
    bool goodbye = false;  // said DONE; done once the launcher reports exit 0
    int64_t step = -1;
    Phase phase = Phase::kTraining;
    absl::Duration step_since = absl::ZeroDuration();   // monotonic: step last advanced
    absl::Duration phase_since = absl::ZeroDuration();  // monotonic: phase last changed
    absl::Time last_beat_wall = absl::InfinitePast();
    // Monotonic time the heartbeat stream broke (InfiniteDuration: it did not).
    absl::Duration broken_at = absl::InfiniteDuration();
    absl::Time broken_wall = absl::InfinitePast();
  };

  void Fail(IncidentKind kind, int rank, std::string reason);
  void ResetRanks();
  bool Terminal() const;
  absl::Duration HangLimit() const;

  MonitorOptions options_;
  Clock* clock_;
  int64_t incarnation_;
  JobState state_ = JobState::kRunning;
  std::vector<RankState> ranks_;
  std::vector<Incident> incidents_;
  std::vector<double> step_times_;  // seconds per step, recent
  int64_t max_step_ = -1;
  int64_t committed_ = -1;
  int64_t committed_at_last_restart_ = -1;
  int restarts_without_progress_ = 0;
  bool pending_restart_ = false;
  bool pending_give_up_ = false;
  bool retrying_ = false;  // the pending restart is a retry
  std::string give_up_reason_;
};

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_JOB_MONITOR_H_
