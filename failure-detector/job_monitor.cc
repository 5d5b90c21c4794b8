#include "failure-detector/job_monitor.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace snapback::detector {
namespace {

constexpr size_t kStepTimeSamples = 50;

Incident* OpenIncident(std::vector<Incident>& incidents) {
  if (incidents.empty() || incidents.back().closed()) return nullptr;
  return &incidents.back();
}

}  // namespace

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kSuspect:
      return "SUSPECT";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kRestarting:
      return "RESTARTING";
    case JobState::kRecovering:
      return "RECOVERING";
    case JobState::kFinished:
      return "FINISHED";
    case JobState::kGaveUp:
      return "GAVE_UP";
  }
  return "?";
}

const char* IncidentKindName(IncidentKind k) {
  switch (k) {
    case IncidentKind::kRankExit:
      return "rank exit";
    case IncidentKind::kHeartbeatLoss:
      return "heartbeat loss";
    case IncidentKind::kHang:
      return "hang";
    case IncidentKind::kOperatorRestore:
      return "operator restore";
  }
  return "?";
}

JobMonitor::JobMonitor(MonitorOptions options, Clock* clock, int64_t incarnation)
    : options_(std::move(options)), clock_(clock), incarnation_(incarnation) {
  options_.world_size = std::max(1, options_.world_size);
  ResetRanks();
}

void JobMonitor::ResetRanks() {
  ranks_.clear();
  for (int r = 0; r < options_.world_size; ++r) {
    ranks_.push_back(RankState{.phi = PhiAccrualDetector(options_.phi)});
  }
}

absl::Duration JobMonitor::HangLimit() const {
  if (step_times_.empty()) return options_.hang_floor;
  std::vector<double> sorted = step_times_;
  std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
  const absl::Duration median = absl::Seconds(sorted[sorted.size() / 2]);
  return std::max(options_.hang_floor, median * options_.hang_factor);
}

bool JobMonitor::Terminal() const {
  return state_ == JobState::kGaveUp || state_ == JobState::kFinished;
}

void JobMonitor::OnHeartbeat(const Heartbeat& beat) {
  if (state_ == JobState::kGaveUp || beat.incarnation < incarnation_) return;  // a zombie
  if (beat.rank < 0 || beat.rank >= options_.world_size) return;
  if (beat.incarnation > incarnation_) {
    if (OpenIncident(incidents_) == nullptr && state_ == JobState::kRunning &&
        std::none_of(ranks_.begin(), ranks_.end(),
                     [](const RankState& s) { return s.seen; })) {
      // The first run of a job the coordinator knew at an older incarnation
      // (e.g. registered, never beaten): adopt it, nothing was restarted.
      incarnation_ = beat.incarnation;
    } else {
      // The scheduler restarted the job without going through us (e.g.
      // Slurm requeued it on its own): follow it.
      OnRestartRequested(beat.incarnation);
    }
  }
  const absl::Duration now = clock_->Monotonic();
  RankState& r = ranks_[beat.rank];
  if (r.done) return;
  if (!beat.unscheduled || !r.seen) r.phi.Heartbeat(now);
  r.last_beat_wall = clock_->Now();
  // A beat after a broken stream: it reconnected (a network blip), alive.
  r.broken_at = absl::InfiniteDuration();
  r.broken_wall = absl::InfinitePast();
  if (!r.seen || beat.phase != r.phase) {
    r.phase_since = now;
    // Back from a save or restore: the step clock starts again (a long
    // save within its budget is not a hang the moment it ends).
    if (beat.phase == Phase::kTraining) r.step_since = now;
  }
  if (!r.seen || beat.step != r.step) {
    // The time between observed step changes (however many steps each
    // one covers: a rank may report every step or every hundred), which
    // is what the hang check compares against; not from "no step yet".
    if (r.seen && r.step >= 0 && beat.step > r.step) {
      step_times_.push_back(absl::ToDoubleSeconds(now - r.step_since));
      if (step_times_.size() > kStepTimeSamples) step_times_.erase(step_times_.begin());
    }
    r.step_since = now;
  }
  r.step = beat.step;
  r.phase = beat.phase;
  r.seen = true;
  max_step_ = std::max(max_step_, beat.step);

  Incident* open = OpenIncident(incidents_);
  if (state_ == JobState::kRestarting &&
      std::all_of(ranks_.begin(), ranks_.end(),
                  [](const RankState& s) { return s.seen || s.done; })) {
    state_ = JobState::kRecovering;
    if (open != nullptr) open->ranks_back = clock_->Now();
  }
  if (state_ == JobState::kRecovering && open != nullptr) {
    // Restored: every rank is past its restore and has a step (a rank
    // reports -1 until it restored or started from scratch at step 0).
    const bool all_training =
        std::all_of(ranks_.begin(), ranks_.end(), [](const RankState& s) {
          return s.done || (s.seen && s.phase != Phase::kRestoring && s.step >= 0);
        });
    if (open->restored == absl::InfinitePast() && all_training) {
      open->restored = clock_->Now();
      int64_t lowest = -1;
      for (const RankState& s : ranks_) {
        if (!s.done && (lowest < 0 || s.step < lowest)) lowest = s.step;
      }
      open->restored_step = lowest;
    }
    if (open->restored != absl::InfinitePast() && beat.step > open->restored_step) {
      // The job runs again: this closes every incident still open (an
      // earlier one whose restart failed too, e.g. a rank killed while
      // restoring), so each one's MTTR runs to the real recovery.
      const Incident now_closed = *open;
      for (Incident& i : incidents_) {
        if (i.closed()) continue;
        if (i.ranks_back == absl::InfinitePast()) i.ranks_back = now_closed.ranks_back;
        if (i.restored == absl::InfinitePast()) {
          i.restored = now_closed.restored;
          i.restored_step = now_closed.restored_step;
        }
        i.first_new_step = clock_->Now();
      }
      state_ = JobState::kRunning;
    }
  } else if (state_ == JobState::kRecovering && open == nullptr) {
    state_ = JobState::kRunning;
  }
}

void JobMonitor::OnStreamBroken(int rank, int64_t incarnation) {
  if (incarnation != incarnation_ || rank < 0 || rank >= options_.world_size) return;
  if (options_.stream_break_grace <= absl::ZeroDuration()) {
    OnRankFailed(
        rank, incarnation,
        absl::StrCat("rank ", rank, "'s heartbeat stream broke (the process died)"));
    return;
  }
  // Decided by Tick() after the grace, unless the launcher's report of the
  // exit (with its exit code) arrives first.
  if (ranks_[rank].broken_at == absl::InfiniteDuration()) {
    ranks_[rank].broken_at = clock_->Monotonic();
    ranks_[rank].broken_wall = clock_->Now();
  }
}

void JobMonitor::OnRankFailed(int rank, int64_t incarnation, std::string description) {
  if (incarnation != incarnation_ || rank < 0 || rank >= options_.world_size) return;
  if (state_ == JobState::kFailed || Terminal() || ranks_[rank].done) return;
  Fail(IncidentKind::kRankExit, rank, std::move(description));
}

void JobMonitor::OnRankDone(int rank, int64_t incarnation, bool goodbye) {
  if (incarnation != incarnation_ || rank < 0 || rank >= options_.world_size) return;
  if (Terminal()) return;
  RankState& r = ranks_[rank];
  r.broken_at = absl::InfiniteDuration();
  if (goodbye && options_.exit_reports) {
    r.goodbye = true;  // the launcher's exit report decides
    return;
  }
  r.done = true;
  if (std::all_of(ranks_.begin(), ranks_.end(),
                  [](const RankState& s) { return s.done; })) {
    state_ = JobState::kFinished;
    pending_restart_ = false;
  }
}

void JobMonitor::OnFatal(int rank, int64_t incarnation, std::string description) {
  if (incarnation != incarnation_ || rank < 0 || rank >= options_.world_size) return;
  if (Terminal() || ranks_[rank].done) return;
  if (state_ != JobState::kFailed) {
    Fail(IncidentKind::kRankExit, rank, description);
  }
  state_ = JobState::kGaveUp;
  pending_restart_ = false;
  pending_give_up_ = true;
  give_up_reason_ = absl::StrCat(
      description, "; not restarted: fix the cause, then start the job again");
}

void JobMonitor::OnSchedulerError(std::string error) {
  if (Incident* open = OpenIncident(incidents_)) open->scheduler_error = std::move(error);
}

void JobMonitor::RetryRestart() {
  if (state_ != JobState::kFailed) return;
  pending_restart_ = true;
  retrying_ = true;
}

std::vector<JobMonitor::RankView> JobMonitor::Ranks() const {
  std::vector<RankView> out;
  const absl::Duration now = clock_->Monotonic();
  for (const RankState& r : ranks_) {
    out.push_back({.seen = r.seen,
                   .done = r.done,
                   .step = r.step,
                   .phase = r.phase,
                   .phi = r.seen && !r.done ? r.phi.Phi(now) : 0,
                   .last_beat = r.last_beat_wall});
  }
  return out;
}

void JobMonitor::OnCommitted(int64_t step) { committed_ = std::max(committed_, step); }

void JobMonitor::OnOperatorRestore(int64_t step, const std::string& why) {
  if (state_ == JobState::kGaveUp) return;
  // A finished job can be restarted by an operator too.
  Fail(IncidentKind::kOperatorRestore, -1,
       absl::StrCat("an operator forced a restore to step ", step,
                    why.empty() ? "" : absl::StrCat(": ", why)));
}

void JobMonitor::OnRestartRequested(int64_t new_incarnation) {
  if (state_ == JobState::kGaveUp || new_incarnation <= incarnation_) return;
  incarnation_ = new_incarnation;
  ResetRanks();
  state_ = JobState::kRestarting;
  pending_restart_ = false;
  if (Incident* open = OpenIncident(incidents_)) {
    if (open->restart_requested == absl::InfinitePast()) {
      open->restart_requested = clock_->Now();
    }
    open->new_incarnation = new_incarnation;
  }
}

void JobMonitor::Fail(IncidentKind kind, int rank, std::string reason) {
  Incident incident;
  incident.kind = kind;
  incident.rank = rank;
  incident.incarnation = incarnation_;
  incident.reason = std::move(reason);
  incident.last_step = max_step_;
  incident.detected = clock_->Now();
  incident.last_healthy = incident.detected;
  if (kind == IncidentKind::kRankExit && rank >= 0) {
    // A process exit is known to the moment: its stream broke (or the
    // launcher reported it, now).
    if (ranks_[rank].broken_wall != absl::InfinitePast()) {
      incident.last_healthy = ranks_[rank].broken_wall;
    }
  } else if (rank >= 0 && ranks_[rank].seen) {
    incident.last_healthy = ranks_[rank].last_beat_wall;
  }
  if (kind == IncidentKind::kHang && rank >= 0) {
    // Healthy until its step last advanced.
    incident.last_healthy =
        incident.detected - (clock_->Monotonic() - ranks_[rank].step_since);
  }
  incidents_.push_back(std::move(incident));
  state_ = JobState::kFailed;
  pending_restart_ = true;
}

JobMonitor::Action JobMonitor::Tick() {
  if (pending_give_up_) {
    pending_give_up_ = false;
    return {Action::kGiveUp, give_up_reason_};
  }
  if (Terminal()) return {Action::kNone, give_up_reason_};
  const absl::Duration now = clock_->Monotonic();
  if (state_ == JobState::kRunning || state_ == JobState::kSuspect ||
      state_ == JobState::kRecovering) {
    bool suspect = false;
    for (int i = 0; i < options_.world_size && state_ != JobState::kFailed; ++i) {
      const RankState& r = ranks_[i];
      if (r.done || r.goodbye) continue;
      if (r.broken_at != absl::InfiniteDuration() &&
          now - r.broken_at >= options_.stream_break_grace) {
        Fail(IncidentKind::kRankExit, i,
             absl::StrCat("rank ", i, "'s heartbeat stream broke (the process died)"));
        break;
      }
      if (!r.seen) continue;
      const double phi = r.phi.Phi(now);
      if (phi >= options_.fail_phi) {
        Fail(IncidentKind::kHeartbeatLoss, i,
             absl::StrFormat(
                 "no heartbeat from rank %d for %.1f s (phi %.1f): node, network "
                 "or a frozen process",
                 i, absl::ToDoubleSeconds(clock_->Now() - r.last_beat_wall), phi));
        break;
      }
      suspect = suspect || phi >= options_.suspect_phi;
      const absl::Duration in_phase = now - r.phase_since;
      if (r.phase == Phase::kSaving && in_phase > options_.save_budget) {
        Fail(IncidentKind::kHang, i,
             absl::StrCat("rank ", i, " has been saving for ",
                          absl::FormatDuration(in_phase), ", over the budget of ",
                          absl::FormatDuration(options_.save_budget)));
      } else if (r.phase == Phase::kRestoring && in_phase > options_.restore_budget) {
        Fail(IncidentKind::kHang, i,
             absl::StrCat("rank ", i, " has been restoring for ",
                          absl::FormatDuration(in_phase), ", over the budget of ",
                          absl::FormatDuration(options_.restore_budget)));
      } else if (r.phase == Phase::kTraining && state_ != JobState::kRecovering &&
                 r.step >= 0 && !r.goodbye && now - r.step_since > HangLimit()) {
        Fail(IncidentKind::kHang, i,
             absl::StrCat("rank ", i, " has been at step ", r.step, " for ",
                          absl::FormatDuration(now - r.step_since), " (limit ",
                          absl::FormatDuration(HangLimit()),
                          "): a hung collective? Heartbeats still arrive"));
      }
    }
    if (state_ == JobState::kRunning && suspect) state_ = JobState::kSuspect;
    if (state_ == JobState::kSuspect && !suspect) state_ = JobState::kRunning;
  }
  if (state_ == JobState::kFailed && pending_restart_) {
    pending_restart_ = false;
    if (retrying_) {
      retrying_ = false;
      return {Action::kRestart, incidents_.back().reason};
    }
    if (committed_ > committed_at_last_restart_) restarts_without_progress_ = 0;
    committed_at_last_restart_ = committed_;
    if (++restarts_without_progress_ > options_.max_restarts_without_progress) {
      state_ = JobState::kGaveUp;
      give_up_reason_ = absl::StrCat(
          "gave up after ", options_.max_restarts_without_progress,
          " restarts without a newly committed step (latest committed: ", committed_,
          "); fix the cause, then restart the job by hand");
      return {Action::kGiveUp, give_up_reason_};
    }
    return {Action::kRestart, incidents_.back().reason};
  }
  return {};
}

absl::Duration JobMonitor::NextDeadline() const {
  absl::Duration next = absl::InfiniteDuration();
  if (pending_give_up_ || (state_ == JobState::kFailed && pending_restart_)) {
    return absl::ZeroDuration();
  }
  // FAILED without a pending restart (no scheduler could take it) waits for
  // an event, not a timer.
  if (Terminal() || state_ == JobState::kRestarting || state_ == JobState::kFailed) {
    return next;
  }
  for (const RankState& r : ranks_) {
    if (r.done || r.goodbye) continue;
    if (r.broken_at != absl::InfiniteDuration()) {
      next = std::min(next, r.broken_at + options_.stream_break_grace);
    }
    if (!r.seen) continue;
    next = std::min(next, r.phi.WhenPhiReaches(options_.suspect_phi));
    next = std::min(next, r.phi.WhenPhiReaches(options_.fail_phi));
    switch (r.phase) {
      case Phase::kTraining:
        if (r.step >= 0 && state_ != JobState::kRecovering) {
          next = std::min(next, r.step_since + HangLimit());
        }
        break;
      case Phase::kSaving:
        next = std::min(next, r.phase_since + options_.save_budget);
        break;
      case Phase::kRestoring:
        next = std::min(next, r.phase_since + options_.restore_budget);
        break;
    }
  }
  return next;
}

}  // namespace snapback::detector
