#include "failure-detector/detector.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace snapback::detector {
namespace {

int64_t Ms(absl::Time t) { return t == absl::InfinitePast() ? 0 : absl::ToUnixMillis(t); }

JobBinding BindingOf(const v1::JobInfo& info) {
  return JobBinding{.job_id = info.job_id(),
                    .world_size = info.world_size(),
                    .scheduler = info.scheduler(),
                    .scheduler_job_id = info.scheduler_job_id()};
}

// One line per decision: operators read the coordinator's log to see what
// the detector did and why.
void Log(const std::string& line) { SNAPBACK_LOG(Info, "detector: %s", line); }

}  // namespace

v1::RankPhase PhaseToProto(Phase p) {
  switch (p) {
    case Phase::kTraining:
      return v1::TRAINING;
    case Phase::kSaving:
      return v1::SAVING;
    case Phase::kRestoring:
      return v1::RESTORING;
  }
  return v1::RANK_PHASE_UNSPECIFIED;
}

Phase PhaseFromProto(v1::RankPhase p) {
  switch (p) {
    case v1::SAVING:
      return Phase::kSaving;
    case v1::RESTORING:
      return Phase::kRestoring;
    default:
      return Phase::kTraining;
  }
}

v1::Incident IncidentToProto(const std::string& job_id, int64_t seq, const Incident& in) {
  v1::Incident out;
  out.set_job_id(job_id);
  out.set_seq(seq);
  out.set_kind(IncidentKindName(in.kind));
  out.set_rank(in.rank);
  out.set_incarnation(in.incarnation);
  out.set_new_incarnation(in.new_incarnation);
  out.set_reason(in.reason);
  out.set_last_step(in.last_step);
  out.set_last_healthy_unix_ms(Ms(in.last_healthy));
  out.set_detected_unix_ms(Ms(in.detected));
  out.set_restart_requested_unix_ms(Ms(in.restart_requested));
  out.set_ranks_back_unix_ms(Ms(in.ranks_back));
  out.set_restored_unix_ms(Ms(in.restored));
  out.set_restored_step(in.restored_step);
  out.set_first_new_step_unix_ms(Ms(in.first_new_step));
  out.set_scheduler_error(in.scheduler_error);
  return out;
}

Detector::Detector(DetectorOptions options, Clock* clock, JobDirectory* jobs)
    : options_(std::move(options)), clock_(clock), jobs_(jobs) {
  if (options_.run_thread) thread_ = std::thread([this] { Loop(); });
}

Detector::~Detector() { Stop(); }

void Detector::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Detector::AddAdapter(std::shared_ptr<SchedulerAdapter> adapter) {
  absl::MutexLock lock(&mu_);
  adapters_[adapter->name()] = std::move(adapter);
}

std::unique_ptr<JobMonitor> Detector::NewMonitor(const v1::JobInfo& info) {
  MonitorOptions o = options_.monitor;
  o.world_size = info.world_size();
  o.exit_reports = info.scheduler() == "local";
  auto m = std::make_unique<JobMonitor>(o, clock_, info.incarnation());
  if (info.latest_committed() >= 0) m->OnCommitted(info.latest_committed());
  return m;
}

absl::StatusOr<Detector::Job*> Detector::GetJob(const std::string& job_id) {
  auto it = by_id_.find(job_id);
  if (it != by_id_.end()) return &it->second;
  absl::StatusOr<v1::JobInfo> info = jobs_->DescribeJob(job_id);
  if (!info.ok()) return info.status();
  absl::StatusOr<std::vector<v1::Incident>> logged = jobs_->ListIncidents(job_id);
  if (!logged.ok()) return logged.status();
  Job job;
  job.monitor = NewMonitor(*info);
  job.binding = BindingOf(*info);
  job.seq_base = static_cast<int64_t>(logged->size());
  job.last_state = job.monitor->state();
  absl::StatusOr<std::vector<v1::JobRun>> runs = jobs_->ListJobRuns(job_id);
  if (!runs.ok()) return runs.status();
  job.run.set_job_id(job_id);
  job.run.set_run(static_cast<int64_t>(runs->size()));
  job.run.set_first_step(-1);
  return &by_id_.emplace(job_id, std::move(job)).first->second;
}

void Detector::NewRun(Job& job) {
  if (job.run.started_unix_ms() == 0) return;  // nothing of it was seen
  v1::JobRun next;
  next.set_job_id(job.run.job_id());
  next.set_run(job.run.run() + 1);
  next.set_first_step(-1);
  job.run = std::move(next);
  job.persisted_run.clear();
}

void Detector::Persist(const std::string& job_id, Job& job) {
  {
    // The run's times, each set once, when the event is seen (Persist runs
    // right after every input).
    v1::JobRun& run = job.run;
    const int64_t now = absl::ToUnixMillis(clock_->Now());
    const JobState st = job.monitor->state();
    // Only until the first step: after it, Persist (run on every beat)
    // costs O(1) here, not a scan of every rank.
    if (run.first_step_unix_ms() == 0) {
      for (const JobMonitor::RankView& r : job.monitor->Ranks()) {
        if (!r.seen) continue;
        if (run.started_unix_ms() == 0) run.set_started_unix_ms(now);
        if (r.step >= 0 && run.first_step_unix_ms() == 0) {
          run.set_first_step_unix_ms(now);
          run.set_first_step(r.step);
        }
      }
    }
    if (run.started_unix_ms() != 0 && run.ended_unix_ms() == 0 &&
        (st == JobState::kFinished || st == JobState::kGaveUp)) {
      run.set_ended_unix_ms(now);
      run.set_end_state(JobStateName(st));
    }
    if (run.started_unix_ms() != 0) {
      std::string bytes = run.SerializeAsString();
      if (bytes != job.persisted_run) {
        absl::Status s = jobs_->PutJobRun(run);
        if (!s.ok()) {
          // Not fatal; the run's next change writes it again (not every
          // heartbeat: a failing store must not cost a synced write each).
          Log(absl::StrCat("job ", job_id, ": could not log run ", run.run(), ": ",
                           s.ToString()));
        }
        job.persisted_run = std::move(bytes);
      }
    }
  }
  const std::vector<Incident>& incidents = job.monitor->incidents();
  job.persisted.resize(incidents.size());
  for (size_t i = 0; i < incidents.size(); ++i) {
    // A closed incident that was written closed does not change again.
    if (!job.persisted[i].empty() && incidents[i].closed() && job.persisted_closed > i) {
      continue;
    }
    const v1::Incident proto =
        IncidentToProto(job_id, job.seq_base + static_cast<int64_t>(i), incidents[i]);
    std::string bytes = proto.SerializeAsString();
    if (bytes == job.persisted[i]) continue;
    absl::Status s = jobs_->PutIncident(proto);
    if (!s.ok()) {
      // Not fatal for detection; the next change writes it again.
      Log(absl::StrCat("job ", job_id, ": could not log incident ", proto.seq(), ": ",
                       s.ToString()));
      continue;
    }
    job.persisted[i] = std::move(bytes);
    if (incidents[i].closed() && job.persisted_closed == i) job.persisted_closed = i + 1;
  }
  const JobState state = job.monitor->state();
  if (state != job.last_state) {
    std::string why;
    if (!incidents.empty() &&
        (state == JobState::kFailed || state == JobState::kGaveUp)) {
      why = absl::StrCat(
          ": ", state == JobState::kGaveUp && !job.monitor->give_up_reason().empty()
                    ? job.monitor->give_up_reason()
                    : incidents.back().reason);
    }
    Log(absl::StrCat("job ", job_id, " incarnation ", job.monitor->incarnation(), ": ",
                     JobStateName(job.last_state), " -> ", JobStateName(state), why));
    job.last_state = state;
  }
}

absl::Status Detector::OnHeartbeat(const std::string& job_id, const Heartbeat& beat) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> job = GetJob(job_id);
  if (!job.ok()) return job.status();
  if ((*job)->monitor->state() == JobState::kFinished) {
    // Every rank of the last run finished: a beat now is a new run of the
    // job (e.g. a resubmitted batch job). Watch it afresh.
    absl::StatusOr<v1::JobInfo> info = jobs_->DescribeJob(job_id);
    if (!info.ok()) return info.status();
    (*job)->seq_base += static_cast<int64_t>((*job)->monitor->incidents().size());
    (*job)->persisted.clear();
    (*job)->persisted_closed = 0;
    (*job)->monitor = NewMonitor(*info);
    NewRun(**job);
    (*job)->binding = BindingOf(*info);
  }
  JobMonitor& m = *(*job)->monitor;
  if (beat.incarnation < m.incarnation()) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", beat.rank, " of job ", job_id, " runs incarnation ",
                     beat.incarnation, " but the job is at incarnation ", m.incarnation(),
                     ": this process was replaced by a restart and must exit"));
  }
  m.OnHeartbeat(beat);
  Persist(job_id, **job);
  return absl::OkStatus();
}

void Detector::OnStreamEnded(const std::string& job_id, int rank, int64_t incarnation,
                             bool done) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> job = GetJob(job_id);
  if (!job.ok()) return;
  if (done) {
    (*job)->monitor->OnRankDone(rank, incarnation, /*goodbye=*/true);
  } else {
    (*job)->monitor->OnStreamBroken(rank, incarnation);
  }
  Persist(job_id, **job);
  wake_ = true;
}

void Detector::OnRankExited(const std::string& job_id, const v1::RankExited& exit) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> job = GetJob(job_id);
  if (!job.ok()) return;
  JobMonitor& m = *(*job)->monitor;
  switch (exit.exit_class()) {
    case v1::EXIT_DONE:
      m.OnRankDone(exit.rank(), exit.incarnation());
      break;
    case v1::EXIT_NO_RESTART:
      m.OnFatal(exit.rank(), exit.incarnation(), exit.description());
      break;
    default:
      m.OnRankFailed(exit.rank(), exit.incarnation(), exit.description());
      break;
  }
  Persist(job_id, **job);
  wake_ = true;
}

void Detector::OnCommitted(const std::string& job_id, int64_t step) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> job = GetJob(job_id);
  if (job.ok()) (*job)->monitor->OnCommitted(step);
}

absl::StatusOr<int64_t> Detector::OnLauncherHello(const std::string& job_id,
                                                  int64_t running_incarnation) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> found = GetJob(job_id);
  if (!found.ok()) return found.status();
  Job& job = **found;
  JobMonitor& m = *job.monitor;
  if (m.state() == JobState::kGaveUp && running_incarnation > 0) {
    // A launcher that was away when the detector gave up: its ranks must stop.
    return absl::FailedPreconditionError(
        absl::StrCat("the detector gave up on job ", job_id, ": ", m.give_up_reason()));
  }
  if (running_incarnation > 0 && running_incarnation >= m.incarnation()) {
    return running_incarnation;  // a reconnect: the ranks keep running
  }
  if (running_incarnation > 0 && m.state() == JobState::kRestarting) {
    return m.incarnation();  // a restart was ordered while it was away
  }
  // A fresh start: a new incarnation fences whatever ran before.
  absl::StatusOr<v1::JobInfo> info =
      jobs_->AdvanceIncarnation(job_id, m.incarnation() + 1);
  if (!info.ok()) return info.status();
  job.binding = BindingOf(*info);
  const bool open = !m.incidents().empty() && !m.incidents().back().closed() &&
                    m.state() != JobState::kGaveUp && m.state() != JobState::kFinished;
  if (open) {
    m.OnRestartRequested(info->incarnation());
  } else {
    job.seq_base += static_cast<int64_t>(m.incidents().size());
    job.persisted.clear();
    job.persisted_closed = 0;
    job.monitor = NewMonitor(*info);
    NewRun(job);
  }
  job.retry_at = absl::InfiniteDuration();
  Persist(job_id, job);
  Log(absl::StrCat("job ", job_id, ": snapback-launch starts incarnation ",
                   info->incarnation()));
  return info->incarnation();
}

absl::Status Detector::RequestRestart(const std::string& job_id,
                                      const std::string& reason) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> found = GetJob(job_id);
  if (!found.ok()) return found.status();
  absl::StatusOr<v1::JobInfo> info = jobs_->DescribeJob(job_id);
  if (!info.ok()) return info.status();
  if (info->scheduler().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id,
        " has no scheduler binding: run it under snapback-launch, or register "
        "it with scheduler slurm or exec"));
  }
  Job& job = **found;
  if (job.monitor->state() == JobState::kGaveUp) {
    return absl::FailedPreconditionError(
        absl::StrCat("the detector gave up on job ", job_id, " (",
                     job.monitor->give_up_reason(), "); start it again by hand"));
  }
  const int64_t target =
      info->restore_target() >= 0 ? info->restore_target() : info->latest_committed();
  job.monitor->OnOperatorRestore(target, reason);
  Persist(job_id, job);
  wake_ = true;
  return absl::OkStatus();
}

absl::StatusOr<v1::JobHealth> Detector::Health(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> found = GetJob(job_id);
  if (!found.ok()) return found.status();
  const Job& job = **found;
  const JobMonitor& m = *job.monitor;
  v1::JobHealth h;
  h.set_job_id(job_id);
  h.set_state(JobStateName(m.state()));
  h.set_incarnation(m.incarnation());
  h.set_reason(m.give_up_reason());
  h.set_scheduler(job.binding.scheduler);
  h.set_incidents(static_cast<int32_t>(job.seq_base + m.incidents().size()));
  int rank = 0;
  for (const JobMonitor::RankView& r : m.Ranks()) {
    v1::RankHealth* out = h.add_ranks();
    out->set_rank(rank++);
    out->set_seen(r.seen);
    out->set_step(r.step);
    out->set_phase(r.done ? v1::DONE : PhaseToProto(r.phase));
    out->set_phi(r.phi);
    out->set_last_beat_unix_ms(Ms(r.last_beat));
  }
  return h;
}

std::map<std::string, std::string> Detector::WatchedJobStates() {
  absl::MutexLock lock(&mu_);
  std::map<std::string, std::string> out;
  for (const auto& [id, job] : by_id_) out[id] = JobStateName(job.monitor->state());
  return out;
}

absl::StatusOr<std::vector<v1::Incident>> Detector::Incidents(const std::string& job_id) {
  absl::StatusOr<v1::JobInfo> info = jobs_->DescribeJob(job_id);
  if (!info.ok()) return info.status();
  return jobs_->ListIncidents(job_id);
}

std::vector<Detector::Order> Detector::Evaluate() {
  std::vector<Order> orders;
  const absl::Duration now = clock_->Monotonic();
  for (auto& [job_id, job] : by_id_) {
    const JobMonitor::Action a = job.monitor->Tick();
    if (a.type == JobMonitor::Action::kRestart) {
      orders.push_back({.job_id = job_id,
                        .type = Order::kRestart,
                        .advance = true,
                        .incarnation = job.monitor->incarnation(),
                        .reason = a.reason});
    } else if (a.type == JobMonitor::Action::kGiveUp) {
      orders.push_back({.job_id = job_id,
                        .type = Order::kCancel,
                        .advance = false,
                        .incarnation = 0,
                        .reason = a.reason});
    } else if (job.retry_at != absl::InfiniteDuration() &&
               (job.monitor->state() != JobState::kRestarting ||
                job.retry_incarnation != job.monitor->incarnation())) {
      job.retry_at = absl::InfiniteDuration();  // moot: the job moved on
    } else if (job.retry_at <= now) {
      job.retry_at = absl::InfiniteDuration();
      orders.push_back({.job_id = job_id,
                        .type = Order::kRestart,
                        .advance = false,
                        .incarnation = job.retry_incarnation,
                        .reason = job.retry_reason});
    }
    Persist(job_id, job);
  }
  return orders;
}

void Detector::Carry(std::vector<Order> orders) {
  absl::MutexLock carry(&carry_mu_);
  for (Order& order : orders) {
    absl::StatusOr<v1::JobInfo> info = absl::UnknownError("");
    std::shared_ptr<SchedulerAdapter> adapter;
    {
      absl::MutexLock lock(&mu_);
      auto it = by_id_.find(order.job_id);
      if (it == by_id_.end()) continue;
      Job& job = it->second;
      info = jobs_->DescribeJob(order.job_id);
      if (info.ok()) {
        job.binding = BindingOf(*info);
        auto a = adapters_.find(info->scheduler());
        if (a != adapters_.end()) adapter = a->second;
      }
      if (adapter == nullptr) {
        const std::string why =
            !info.ok() ? info.status().ToString()
            : info->scheduler().empty()
                ? std::string(
                      "the job has no scheduler binding (not run under "
                      "snapback-launch, Slurm or exec): nothing restarts it")
                : absl::StrCat("no scheduler adapter \"", info->scheduler(),
                               "\" is configured on this coordinator");
        job.monitor->OnSchedulerError(why);
        Persist(order.job_id, job);
        Log(absl::StrCat("job ", order.job_id, ": cannot ",
                         order.type == Order::kRestart ? "restart" : "cancel", ": ",
                         why));
        continue;
      }
      if (order.type == Order::kRestart && order.advance) {
        // Fence first: once the incarnation is raised no rank of the old one
        // can commit, whatever the scheduler does next.
        if (job.monitor->state() != JobState::kFailed ||
            job.monitor->incarnation() != order.incarnation) {
          continue;  // overtaken (a launcher's fresh start, a give-up) since Evaluate
        }
        info = jobs_->AdvanceIncarnation(order.job_id, job.monitor->incarnation() + 1);
        if (!info.ok()) {
          // Not fenced, so not restarted: try the whole restart again.
          job.monitor->OnSchedulerError(info.status().ToString());
          job.monitor->RetryRestart();
          Persist(order.job_id, job);
          continue;
        }
        order.incarnation = info->incarnation();
        job.monitor->OnRestartRequested(order.incarnation);
        Persist(order.job_id, job);
      }
    }
    const JobBinding binding = BindingOf(*info);
    absl::Status s = order.type == Order::kRestart
                         ? adapter->Restart(binding, order.incarnation, order.reason)
                         : adapter->Cancel(binding, order.reason);
    Log(absl::StrCat("job ", order.job_id, ": ", adapter->name(), " ",
                     order.type == Order::kRestart
                         ? absl::StrCat("restart as incarnation ", order.incarnation)
                         : std::string("cancel"),
                     " (", order.reason, "): ", s.ok() ? "ordered" : s.ToString()));
    if (!s.ok() && order.type == Order::kRestart) {
      absl::MutexLock lock(&mu_);
      auto it = by_id_.find(order.job_id);
      if (it == by_id_.end()) continue;
      Job& job = it->second;
      job.monitor->OnSchedulerError(std::string(s.message()));
      job.retry_at = clock_->Monotonic() + options_.restart_retry;
      job.retry_incarnation = order.incarnation;
      job.retry_reason = order.reason;
      Persist(order.job_id, job);
    }
  }
}

void Detector::TEST_Evaluate() {
  std::vector<Order> orders;
  {
    absl::MutexLock lock(&mu_);
    orders = Evaluate();
  }
  Carry(std::move(orders));
}

void Detector::Loop() {
  for (;;) {
    std::vector<Order> orders;
    {
      absl::MutexLock lock(&mu_);
      absl::Duration next = absl::InfiniteDuration();
      // Deadlines already past were just evaluated: one that Tick() did not
      // act on is not a reason to wake again at once.
      const absl::Duration now = clock_->Monotonic();
      for (const auto& [id, job] : by_id_) {
        for (absl::Duration d : {job.monitor->NextDeadline(), job.retry_at}) {
          if (d > now) next = std::min(next, d);
        }
      }
      const absl::Duration wait = std::clamp(next - clock_->Monotonic(),
                                             absl::Milliseconds(1), options_.max_wait);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), wait);
      if (stop_) return;
      wake_ = false;
      orders = Evaluate();
    }
    if (!orders.empty()) Carry(std::move(orders));
  }
}

}  // namespace snapback::detector
