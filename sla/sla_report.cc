#include "sla/sla_report.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace snapback::sla {
namespace {

constexpr double kMs = 1000.0;

// The badput buckets in order of precedence: where intervals overlap (a save
// stall inside progress that a failure then wasted), the time counts once,
// in the first bucket that covers it.
enum Bucket {
  kInfra = 0,
  kRestore,
  kStartup,
  kWasted,
  kSave,
  kOther,
  kBuckets,
};

struct Interval {
  int64_t from = 0, to = 0;
  Bucket bucket = kOther;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // Nearest rank: the smallest value with at least p of the values at or
  // below it (what an operator reads as "90 % of incidents took at most").
  const size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

v1::Distribution Distribute(const std::vector<double>& values) {
  v1::Distribution d;
  d.set_count(static_cast<int32_t>(values.size()));
  if (values.empty()) return d;
  double sum = 0;
  for (double v : values) {
    sum += v;
    d.add_values(v);
  }
  d.set_p50(Percentile(values, 0.5));
  d.set_p90(Percentile(values, 0.9));
  d.set_max(*std::max_element(values.begin(), values.end()));
  d.set_mean(sum / static_cast<double>(values.size()));
  return d;
}

std::string KindOf(const std::string& detail) {
  if (detail == "rank exit") return "crash";
  if (detail == "heartbeat loss") return "freeze";
  if (detail == "hang") return "hang";
  if (absl::StartsWith(detail, "operator")) return "operator";
  if (absl::StrContains(detail, "storage") || absl::StrContains(detail, "damaged")) {
    return "storage";
  }
  return "other";
}

// The p-th of `points` evenly spaced times in [from, to] (in double: no
// overflow for any window).
int64_t At(int64_t from, int64_t to, int p, int points) {
  return from + static_cast<int64_t>(static_cast<double>(to - from) * p / points);
}

// An interval for the advice line: "0.35 s", "14 s", "6.5 min", "2.1 h".
std::string HumanInterval(double s) {
  if (s < 10) return absl::StrFormat("%.2g s", s);
  if (s < 600) return absl::StrFormat("%.0f s", s);
  if (s < 7200) return absl::StrFormat("%.1f min", s / 60);
  return absl::StrFormat("%.1f h", s / 3600);
}

// to - from, never negative (the timestamps are the coordinator's wall
// clock, which an NTP step can move backwards).
double Seconds(int64_t from_ms, int64_t to_ms) {
  return std::max(0.0, static_cast<double>(to_ms - from_ms) / kMs);
}

// The median seconds per step, from consecutive committed checkpoints of one
// incarnation (their Begin times are when the ranks reached those steps);
// 0 when unknown.
double StepSeconds(const std::vector<const v1::CheckpointInfo*>& committed) {
  std::vector<double> per_step;
  for (size_t i = 1; i < committed.size(); ++i) {
    const v1::CheckpointInfo& a = *committed[i - 1];
    const v1::CheckpointInfo& b = *committed[i];
    if (a.incarnation() != b.incarnation() || b.step() <= a.step()) continue;
    const double dt = Seconds(a.created_unix_ms(), b.created_unix_ms());
    if (dt > 0) per_step.push_back(dt / static_cast<double>(b.step() - a.step()));
  }
  return Percentile(per_step, 0.5);
}

}  // namespace

v1::SlaTargets DefaultTargets() {
  v1::SlaTargets t;
  t.set_mttr_seconds(300);
  t.set_lost_work_seconds(600);
  t.set_goodput(0.95);
  t.set_mttd_seconds(60);
  return t;
}

v1::SlaReport ComputeReport(const ReportInput& in) {
  v1::SlaReport r;
  r.set_job_id(in.job.job_id());
  r.set_generated_unix_ms(in.now_unix_ms);
  r.set_state(in.state);
  r.set_world_size(in.job.world_size());
  *r.mutable_targets() = in.targets;
  const v1::SlaTargets& t = in.targets;

  // Committed checkpoints by step, oldest first.
  std::vector<const v1::CheckpointInfo*> committed;
  std::map<int64_t, const v1::CheckpointInfo*> by_step;
  for (const v1::CheckpointInfo& c : in.checkpoints) {
    if (c.state() != v1::COMMITTED || c.committed_unix_ms() <= 0) continue;
    committed.push_back(&c);
    by_step[c.step()] = &c;
  }
  std::sort(committed.begin(), committed.end(),
            [](const v1::CheckpointInfo* a, const v1::CheckpointInfo* b) {
              return a->committed_unix_ms() < b->committed_unix_ms();
            });
  const double step_seconds = StepSeconds(committed);

  // The time the job ran: its runs (a run without an end ends where the
  // next begins, or now).
  std::vector<std::pair<int64_t, int64_t>> spans;
  std::vector<int64_t> run_end(in.runs.size(), 0);
  for (size_t i = 0; i < in.runs.size(); ++i) {
    const v1::JobRun& run = in.runs[i];
    if (run.started_unix_ms() <= 0) continue;
    int64_t end = run.ended_unix_ms();
    if (end <= 0) {
      end = i + 1 < in.runs.size() && in.runs[i + 1].started_unix_ms() > 0
                ? in.runs[i + 1].started_unix_ms()
                : in.now_unix_ms;
    }
    run_end[i] = std::max(end, run.started_unix_ms());
    spans.emplace_back(run.started_unix_ms(), run_end[i]);
  }
  if (spans.empty() && !committed.empty()) {
    // No run log (a job older than it): from its first checkpoint.
    spans.emplace_back(committed.front()->created_unix_ms(), in.now_unix_ms);
    r.add_notes(
        "no run log for this job: wall time counts from its first checkpoint, and "
        "startup time before it is not seen");
  }
  int64_t from = in.from_unix_ms > 0
                     ? in.from_unix_ms
                     : (spans.empty() ? in.now_unix_ms : spans.front().first);
  int64_t to = in.to_unix_ms > 0 ? in.to_unix_ms : in.now_unix_ms;
  if (!spans.empty() && in.to_unix_ms <= 0) {
    int64_t last_end = 0;
    for (const auto& s : spans) last_end = std::max(last_end, s.second);
    // A finished job's window ends when it did, not at "now".
    if (in.state == "FINISHED" || in.state == "GAVE_UP") to = std::min(to, last_end);
  }
  to = std::max(to, from);
  r.set_from_unix_ms(from);
  r.set_to_unix_ms(to);

  // Badput intervals.
  std::vector<Interval> bad;
  auto add = [&](int64_t a, int64_t b, Bucket k) {
    if (a > 0 && b > a) bad.push_back({a, b, k});
  };
  for (size_t i = 0; i < in.runs.size(); ++i) {
    const v1::JobRun& run = in.runs[i];
    // Startup until the run's first step, never past the run's end (a run
    // cut short by a coordinator restart before its first step ends where
    // the next run begins).
    if (run.started_unix_ms() > 0) {
      add(run.started_unix_ms(),
          run.first_step_unix_ms() > 0 ? std::min(run.first_step_unix_ms(), run_end[i])
                                       : run_end[i],
          kStartup);
    }
  }
  uint64_t logical = 0, new_bytes = 0, sent = 0;
  std::vector<double> stalls;
  for (const v1::CheckpointInfo* c : committed) {
    if (c->committed_unix_ms() < from || c->committed_unix_ms() > to) continue;
    r.set_checkpoints_committed(r.checkpoints_committed() + 1);
    logical += c->logical_bytes();
    new_bytes += c->new_bytes();
    sent += c->sent_bytes();
    const int64_t stall_ms = c->max_blocked_us() / 1000;
    stalls.push_back(static_cast<double>(c->max_blocked_us()) / 1e6);
    add(c->created_unix_ms(), c->created_unix_ms() + stall_ms, kSave);
  }
  r.set_logical_bytes(logical);
  r.set_new_bytes(new_bytes);
  r.set_sent_bytes(sent);
  *r.mutable_save_stall_seconds() = Distribute(stalls);

  // Incidents.
  std::vector<double> mttd, mttr, restore, lost_steps, lost_seconds, recover;
  bool exact =
      step_seconds <= 0 || step_seconds >= absl::ToDoubleSeconds(in.step_report_gap);
  for (const v1::Incident& i : in.incidents) {
    const int64_t fault =
        i.last_healthy_unix_ms() > 0 ? i.last_healthy_unix_ms() : i.detected_unix_ms();
    if (fault <= 0 || fault > to) continue;
    const int64_t end_of_incident =
        i.first_new_step_unix_ms() > 0 ? i.first_new_step_unix_ms() : in.now_unix_ms;
    if (end_of_incident < from) continue;
    v1::IncidentReport* x = r.add_incidents();
    x->set_seq(i.seq());
    x->set_detail(i.kind());
    x->set_kind(KindOf(i.kind()));
    x->set_reason(i.reason());
    x->set_rank(i.rank());
    x->set_incarnation(i.incarnation());
    x->set_new_incarnation(i.new_incarnation());
    x->set_fault_unix_ms(fault);
    x->set_detected_unix_ms(i.detected_unix_ms());
    x->set_restart_ordered_unix_ms(i.restart_requested_unix_ms());
    x->set_ranks_back_unix_ms(i.ranks_back_unix_ms());
    x->set_restored_unix_ms(i.restored_unix_ms());
    x->set_first_new_step_unix_ms(i.first_new_step_unix_ms());
    x->set_restored_step(i.restored_step());
    x->set_step_at_fault(i.last_step());
    x->set_closed(i.first_new_step_unix_ms() > 0);
    (*r.mutable_incidents_by_kind())[x->kind()]++;
    x->set_restore_source(i.restored_step() < 0     ? (x->closed() ? "none" : "")
                          : x->kind() == "operator" ? "operator target"
                                                    : "latest committed");
    // When the ranks moved on from the restored step: the Begin of its save
    // plus the save's blocking stall (the upload went on beside training,
    // so the commit came later than that and would undercount).
    auto it = by_step.find(i.restored_step());
    const v1::CheckpointInfo* restored_ckpt = it != by_step.end() ? it->second : nullptr;
    const int64_t restored_saved =
        restored_ckpt != nullptr
            ? restored_ckpt->created_unix_ms() + restored_ckpt->max_blocked_us() / 1000
            : int64_t{0};
    x->set_restored_step_committed_unix_ms(
        restored_ckpt != nullptr ? restored_ckpt->committed_unix_ms() : 0);
    x->set_restored_step_saved_unix_ms(restored_saved);

    x->set_mttd_seconds(i.detected_unix_ms() > 0 ? Seconds(fault, i.detected_unix_ms())
                                                 : -1);
    x->set_mttr_seconds(x->closed() && i.detected_unix_ms() > 0
                            ? Seconds(i.detected_unix_ms(), i.first_new_step_unix_ms())
                            : -1);
    x->set_time_to_recover_seconds(
        x->closed() ? Seconds(fault, i.first_new_step_unix_ms()) : -1);
    x->set_restore_seconds(i.restored_unix_ms() > 0 && i.ranks_back_unix_ms() > 0
                               ? Seconds(i.ranks_back_unix_ms(), i.restored_unix_ms())
                               : -1);
    // Lost work: what was done after the restored step, up to the fault. An operator's
    // forced restore loses it on purpose, and is counted all the same (the report says
    // which incidents were operators).
    int64_t wasted_from = 0;
    if (i.restored_step() >= 0) {
      x->set_lost_steps(std::max<int64_t>(0, i.last_step() - i.restored_step()));
      if (restored_saved > 0) {
        wasted_from = std::min(restored_saved, fault);
      } else if (step_seconds > 0) {
        wasted_from = fault - static_cast<int64_t>(static_cast<double>(x->lost_steps()) *
                                                   step_seconds * kMs);
        r.add_notes(absl::StrCat("incident ", i.seq(), ": the restored step ",
                                 i.restored_step(),
                                 " is no longer in the commit log; its lost time is "
                                 "estimated from the step time"));
      }
    } else if (x->closed()) {
      // Started over: everything since the run's first step was lost.
      x->set_lost_steps(std::max<int64_t>(0, i.last_step() + 1));
      for (const v1::JobRun& run : in.runs) {
        if (run.first_step_unix_ms() > 0 && run.first_step_unix_ms() <= fault) {
          wasted_from = run.first_step_unix_ms();
        }
      }
    } else {
      x->set_lost_steps(-1);
    }
    x->set_lost_seconds(wasted_from > 0 ? Seconds(wasted_from, fault)
                                        : (x->closed() ? 0 : -1));
    add(wasted_from, fault, kWasted);
    const int64_t back =
        i.ranks_back_unix_ms() > 0 ? i.ranks_back_unix_ms() : end_of_incident;
    add(fault, back, kInfra);
    if (i.ranks_back_unix_ms() > 0) {
      const int64_t restored =
          i.restored_unix_ms() > 0 ? i.restored_unix_ms() : end_of_incident;
      add(i.ranks_back_unix_ms(), restored, kRestore);
      if (i.restored_unix_ms() > 0) add(i.restored_unix_ms(), end_of_incident, kStartup);
    }

    if (x->mttd_seconds() >= 0) mttd.push_back(x->mttd_seconds());
    if (x->closed()) {
      if (x->mttr_seconds() >= 0) mttr.push_back(x->mttr_seconds());
      recover.push_back(x->time_to_recover_seconds());
      if (x->restore_seconds() >= 0) restore.push_back(x->restore_seconds());
      if (x->lost_steps() >= 0)
        lost_steps.push_back(static_cast<double>(x->lost_steps()));
      if (x->lost_seconds() >= 0) lost_seconds.push_back(x->lost_seconds());
      x->set_meets_mttr(x->mttr_seconds() <= t.mttr_seconds());
      x->set_meets_lost_work(x->lost_seconds() <= t.lost_work_seconds());
      x->set_meets_mttd(x->mttd_seconds() <= t.mttd_seconds());
    }
  }
  *r.mutable_mttd_seconds() = Distribute(mttd);
  *r.mutable_mttr_seconds() = Distribute(mttr);
  *r.mutable_restore_seconds() = Distribute(restore);
  *r.mutable_lost_steps() = Distribute(lost_steps);
  *r.mutable_lost_seconds() = Distribute(lost_seconds);
  r.set_lost_steps_exact(exact);
  if (!exact) {
    r.add_notes(absl::StrFormat(
        "steps take %.3f s, less than the heartbeat's step report gap (%s): lost steps "
        "are lower bounds (lost seconds are exact)",
        step_seconds, absl::FormatDuration(in.step_report_gap)));
  }

  // The sweep: elementary segments of [from, to] inside the runs, each
  // counted in the first bucket covering it, else productive. Samples of
  // cumulative goodput at evenly spaced points.
  struct Event {
    int64_t at;
    int kind;  // 0..kBuckets-1: bucket, kBuckets: run span, kBuckets+1: sample
    int delta;
  };
  std::vector<Event> events;
  for (const Interval& iv : bad) {
    const int64_t a = std::max(iv.from, from), b = std::min(iv.to, to);
    if (b <= a) continue;
    events.push_back({a, iv.bucket, +1});
    events.push_back({b, iv.bucket, -1});
  }
  for (const auto& [a0, b0] : spans) {
    const int64_t a = std::max(a0, from), b = std::min(b0, to);
    if (b <= a) continue;
    events.push_back({a, kBuckets, +1});
    events.push_back({b, kBuckets, -1});
  }
  const int points = std::max(2, in.series_points);
  for (int p = 1; p <= points; ++p) {
    events.push_back({At(from, to, p, points), kBuckets + 1, 0});
  }
  std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    return a.at != b.at ? a.at < b.at : a.kind > b.kind;  // samples after changes at `at`
  });
  std::array<int, kBuckets + 1> open{};
  std::array<double, kBuckets> bucket_ms{};
  double wall_ms = 0, productive_ms = 0;
  int64_t prev = from;
  for (const Event& e : events) {
    const double len = static_cast<double>(e.at - prev);
    if (len > 0 && open[kBuckets] > 0) {
      wall_ms += len;
      int k = 0;
      while (k < kBuckets && open[k] == 0) ++k;
      if (k < kBuckets) {
        bucket_ms[k] += len;
      } else {
        productive_ms += len;
      }
    }
    prev = e.at;
    if (e.kind == kBuckets + 1) {
      v1::Point* pt = r.add_goodput_over_time();
      pt->set_unix_ms(e.at);
      pt->set_value(wall_ms > 0 ? productive_ms / wall_ms : 0);
    } else {
      open[e.kind] += e.delta;
    }
  }
  r.set_wall_seconds(wall_ms / kMs);
  r.set_productive_seconds(productive_ms / kMs);
  r.set_goodput(wall_ms > 0 ? productive_ms / wall_ms : 0);
  r.set_ettr(r.goodput());
  v1::Badput* b = r.mutable_badput();
  b->set_infrastructure_recovery_from_disruption(bucket_ms[kInfra] / kMs);
  b->set_unproductive_checkpoint_restore_time(bucket_ms[kRestore] / kMs);
  b->set_program_startup(bucket_ms[kStartup] / kMs);
  b->set_wasted_progress_from_disruption(bucket_ms[kWasted] / kMs);
  b->set_unproductive_checkpoint_save_time(bucket_ms[kSave] / kMs);
  b->set_other(bucket_ms[kOther] / kMs);
  r.set_checkpoint_stall_overhead(wall_ms > 0 ? bucket_ms[kSave] / wall_ms : 0);

  // Durability lag: the age of the newest committed checkpoint, a sawtooth
  // that drops to 0 at each commit; before the first commit it counts from
  // the window's start.
  {
    std::vector<int64_t> commits;
    for (const v1::CheckpointInfo* c : committed)
      commits.push_back(c->committed_unix_ms());
    std::sort(commits.begin(), commits.end());
    auto newest_at = [&](int64_t at) -> int64_t {
      auto it = std::upper_bound(commits.begin(), commits.end(), at);
      return it == commits.begin() ? 0 : *(it - 1);
    };
    auto lag_at = [&](int64_t at) {
      const int64_t n = newest_at(at);
      return Seconds(n > 0 ? n : from, at);
    };
    double area = 0, max_lag = 0;
    int64_t cursor = from;
    std::vector<int64_t> cuts;
    for (int64_t c : commits) {
      if (c > from && c < to) cuts.push_back(c);
    }
    cuts.push_back(to);
    for (int64_t c : cuts) {
      // Over [cursor, c) the lag grows linearly from lag_at(cursor).
      const double l0 = lag_at(cursor), len = Seconds(cursor, c);
      area += len * (l0 + len / 2);
      max_lag = std::max(max_lag, l0 + len);
      cursor = c;
    }
    r.set_durability_lag_seconds(lag_at(std::min(in.now_unix_ms, to)));
    r.set_durability_lag_max_seconds(max_lag);
    r.set_durability_lag_mean_seconds(to > from ? area / Seconds(from, to) : 0);
    for (int p = 0; p <= points; ++p) {
      const int64_t at = At(from, to, p, points);
      v1::Point* pt = r.add_durability_lag_over_time();
      pt->set_unix_ms(at);
      pt->set_value(lag_at(at));
    }
  }

  // Compliance.
  r.set_meets_goodput(r.goodput() >= t.goodput());
  r.set_meets_mttr(r.mttr_seconds().count() == 0 ||
                   r.mttr_seconds().p90() <= t.mttr_seconds());
  r.set_meets_lost_work(r.lost_seconds().count() == 0 ||
                        r.lost_seconds().p90() <= t.lost_work_seconds());
  r.set_meets_mttd(r.mttd_seconds().count() == 0 ||
                   r.mttd_seconds().p90() <= t.mttd_seconds());
  r.set_compliant(r.meets_goodput() && r.meets_mttr() && r.meets_lost_work() &&
                  r.meets_mttd());

  // Young/Daly: the interval that minimises save cost + expected rework.
  {
    v1::IntervalAdvice* a = r.mutable_advice();
    std::vector<double> gaps;
    for (size_t i = 1; i < committed.size(); ++i) {
      if (committed[i]->incarnation() != committed[i - 1]->incarnation()) continue;
      gaps.push_back(Seconds(committed[i - 1]->committed_unix_ms(),
                             committed[i]->committed_unix_ms()));
    }
    const double w = r.save_stall_seconds().p50();
    const int failures = static_cast<int>(std::count_if(
        r.incidents().begin(), r.incidents().end(),
        [](const v1::IncidentReport& x) { return x.kind() != "operator"; }));
    const double wall = r.wall_seconds();
    const double mtbf = failures > 0 ? wall / failures : wall;
    const double recovery = Percentile(recover, 0.5);
    const double delta = Percentile(gaps, 0.5);
    a->set_save_cost_seconds(w);
    a->set_mtbf_seconds(mtbf);
    a->set_mtbf_is_lower_bound(failures == 0);
    a->set_recovery_seconds(recovery);
    a->set_current_interval_seconds(delta);
    a->set_step_seconds(step_seconds);
    auto ettr = [&](double interval) {
      if (interval <= 0 || mtbf <= 0) return 0.0;
      return std::clamp(1 - w / interval - (recovery + interval / 2) / mtbf, 0.0, 1.0);
    };
    if (w > 0 && mtbf > 0) {
      const double best = std::sqrt(2 * w * mtbf);
      a->set_recommended_interval_seconds(best);
      a->set_expected_ettr_recommended(ettr(best));
      if (step_seconds > 0) {
        a->set_recommended_interval_steps(
            std::max<int64_t>(1, std::llround(best / step_seconds)));
      }
    }
    if (delta > 0) {
      a->set_expected_ettr_current(ettr(delta));
      if (step_seconds > 0) {
        a->set_current_interval_steps(
            std::max<int64_t>(1, std::llround(delta / step_seconds)));
      }
    }
    if (a->recommended_interval_seconds() <= 0 || delta <= 0) {
      a->set_summary(
          "not enough data for advice yet: needs at least two committed checkpoints of "
          "one incarnation with measured save stalls");
    } else {
      const double gain = a->expected_ettr_recommended() - a->expected_ettr_current();
      a->set_summary(absl::StrFormat(
          "checkpoint every %s%s instead of every %s%s: expected ETTR %.1f %% -> "
          "%.1f %% (%+.1f points)%s",
          HumanInterval(a->recommended_interval_seconds()),
          a->recommended_interval_steps() > 0
              ? absl::StrCat(" (", a->recommended_interval_steps(), " steps)")
              : "",
          HumanInterval(delta),
          a->current_interval_steps() > 0
              ? absl::StrCat(" (", a->current_interval_steps(), " steps)")
              : "",
          100 * a->expected_ettr_current(), 100 * a->expected_ettr_recommended(),
          100 * gain,
          failures == 0
              ? "; no failure in the window, so MTBF is at least the window and "
                "the advice leans long"
              : ""));
    }
  }
  if (!in.incidents.empty() && r.incidents_size() == 0) {
    r.add_notes("no incident of this job falls in the window");
  }
  return r;
}

}  // namespace snapback::sla
