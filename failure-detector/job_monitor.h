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
// the median observed step time, with a floor (a hung collective: heartbeats
// still flow). Saving and restoring phases have their own budgets, so a long
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
enum class JobState { kRunning, kSuspect, kFailed, kRestarting, kRecovering, kGaveUp };
enum class IncidentKind { kRankExit, kHeartbeatLoss, kHang, kOperatorRestore };

const char* JobStateName(JobState s);
const char* IncidentKindName(IncidentKind k);

struct Heartbeat {
  int rank = 0;
  int64_t incarnation = 0;
  int64_t step = 0;
  Phase phase = Phase::kTraining;
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
  // A step that does not advance for hang_factor × the median step time (at
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
  // The job's latest committed step (for the restart-loop guard).
  void OnCommitted(int64_t step);
  // An operator forced a restore: the job restarts like after a failure.
  void OnOperatorRestore(int64_t step);
  // The scheduler was asked to restart the job as `new_incarnation`.
  void OnRestartRequested(int64_t new_incarnation);

  // Evaluates the timers; says what the owner should do now.
  Action Tick();

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
    int64_t step = -1;
    Phase phase = Phase::kTraining;
    absl::Duration step_since = absl::ZeroDuration();   // monotonic: step last advanced
    absl::Duration phase_since = absl::ZeroDuration();  // monotonic: phase last changed
    absl::Time last_beat_wall = absl::InfinitePast();
  };

  void Fail(IncidentKind kind, int rank, std::string reason);
  void ResetRanks();
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
  std::string give_up_reason_;
};

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_JOB_MONITOR_H_
