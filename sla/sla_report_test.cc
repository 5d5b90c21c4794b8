// The SLA report's numbers against a scripted incident sequence whose
// timestamps are known (docs/sla.md has the definitions checked here).
#include "sla/sla_report.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/match.h"

namespace snapback::sla {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;  // ms
int64_t At(double seconds) { return kT0 + static_cast<int64_t>(seconds * 1000); }

v1::CheckpointInfo Ckpt(int64_t step, int64_t incarnation, double created,
                        double committed, double blocked_s) {
  v1::CheckpointInfo c;
  c.set_job_id("j");
  c.set_step(step);
  c.set_state(v1::COMMITTED);
  c.set_incarnation(incarnation);
  c.set_created_unix_ms(At(created));
  c.set_committed_unix_ms(At(committed));
  c.set_max_blocked_us(static_cast<int64_t>(blocked_s * 1e6));
  c.set_logical_bytes(1000);
  c.set_new_bytes(100);
  c.set_sent_bytes(50);
  return c;
}

v1::Incident Inc(int64_t seq, const std::string& kind, int64_t last_step, double fault,
                 double detected, double back, double restored, int64_t restored_step,
                 double first_new) {
  v1::Incident i;
  i.set_job_id("j");
  i.set_seq(seq);
  i.set_kind(kind);
  i.set_rank(1);
  i.set_incarnation(seq + 1);
  i.set_new_incarnation(seq + 2);
  i.set_last_step(last_step);
  i.set_last_healthy_unix_ms(At(fault));
  i.set_detected_unix_ms(At(detected));
  i.set_restart_requested_unix_ms(At(detected + 0.1));
  i.set_ranks_back_unix_ms(At(back));
  i.set_restored_unix_ms(At(restored));
  i.set_restored_step(restored_step);
  i.set_first_new_step_unix_ms(first_new > 0 ? At(first_new) : 0);
  return i;
}

// One run [0 s, 200 s], startup 10 s; one step per second; saves every 10
// steps blocking 1 s (2 s for the last); a crash at 38 s (step 28, restored
// 20, saved at 30 s + 1 s of stall, committed at 32 s) and a freeze at 75 s
// (step 45, restored 40, saved at 68 s + 1 s, committed at 70 s).
ReportInput Scripted() {
  ReportInput in;
  in.job.set_job_id("j");
  in.job.set_world_size(2);
  in.state = "FINISHED";
  v1::JobRun run;
  run.set_job_id("j");
  run.set_started_unix_ms(At(0));
  run.set_first_step_unix_ms(At(10));
  run.set_first_step(0);
  run.set_ended_unix_ms(At(200));
  run.set_end_state("FINISHED");
  in.runs.push_back(run);
  in.checkpoints = {Ckpt(10, 1, 20, 22, 1), Ckpt(20, 1, 30, 32, 1),
                    Ckpt(30, 2, 58, 60, 1), Ckpt(40, 2, 68, 70, 1),
                    Ckpt(50, 3, 100, 103, 2)};
  v1::CheckpointInfo aborted = Ckpt(25, 1, 35, 0, 5);
  aborted.set_state(v1::ABORTED);
  in.checkpoints.push_back(aborted);  // never counts
  in.incidents = {Inc(0, "rank exit", 28, 38, 38.5, 45, 47, 20, 48),
                  Inc(1, "heartbeat loss", 45, 75, 78, 90, 92, 40, 94)};
  in.now_unix_ms = At(300);
  return in;
}

TEST(SlaReportTest, ScriptedIncidentsGiveTheExactNumbers) {
  const v1::SlaReport r = ComputeReport(Scripted());
  EXPECT_EQ(r.from_unix_ms(), At(0));
  EXPECT_EQ(r.to_unix_ms(), At(200)) << "a finished job's window ends when it did";
  ASSERT_EQ(r.incidents_size(), 2);
  const v1::IncidentReport& crash = r.incidents(0);
  EXPECT_EQ(crash.kind(), "crash");
  EXPECT_EQ(crash.detail(), "rank exit");
  EXPECT_DOUBLE_EQ(crash.mttd_seconds(), 0.5);
  EXPECT_DOUBLE_EQ(crash.mttr_seconds(), 9.5);
  EXPECT_DOUBLE_EQ(crash.time_to_recover_seconds(), 10);
  EXPECT_DOUBLE_EQ(crash.restore_seconds(), 2);
  EXPECT_EQ(crash.lost_steps(), 8);
  EXPECT_DOUBLE_EQ(crash.lost_seconds(), 7)
      << "fault 38 s - training moved on from step 20 at 31 s (not its commit at 32 s)";
  EXPECT_EQ(crash.restored_step_saved_unix_ms(), At(31));
  EXPECT_EQ(crash.restored_step_committed_unix_ms(), At(32));
  EXPECT_EQ(crash.restore_source(), "latest committed");
  const v1::IncidentReport& freeze = r.incidents(1);
  EXPECT_EQ(freeze.kind(), "freeze");
  EXPECT_DOUBLE_EQ(freeze.mttd_seconds(), 3);
  EXPECT_DOUBLE_EQ(freeze.mttr_seconds(), 16);
  EXPECT_EQ(freeze.lost_steps(), 5);
  EXPECT_DOUBLE_EQ(freeze.lost_seconds(), 6);
  EXPECT_EQ(r.incidents_by_kind().at("crash"), 1);
  EXPECT_EQ(r.incidents_by_kind().at("freeze"), 1);

  EXPECT_EQ(r.mttr_seconds().count(), 2);
  EXPECT_DOUBLE_EQ(r.mttr_seconds().p50(), 9.5);
  EXPECT_DOUBLE_EQ(r.mttr_seconds().p90(), 16);
  EXPECT_DOUBLE_EQ(r.mttr_seconds().max(), 16);
  EXPECT_DOUBLE_EQ(r.mttr_seconds().mean(), 12.75);
  EXPECT_DOUBLE_EQ(r.lost_seconds().p50(), 6);
  EXPECT_DOUBLE_EQ(r.lost_seconds().p90(), 7);
  EXPECT_DOUBLE_EQ(r.lost_steps().max(), 8);
  EXPECT_TRUE(r.lost_steps_exact()) << "1 s steps are longer than the 50 ms report gap";

  // Wall 200 s; badput: startup 10 + 1 + 2, saves 1+1+1+1+2, wasted 7 + 6,
  // infrastructure 7 + 15, restore 2 + 2 = 58 s.
  EXPECT_DOUBLE_EQ(r.wall_seconds(), 200);
  EXPECT_DOUBLE_EQ(r.badput().program_startup(), 13);
  EXPECT_DOUBLE_EQ(r.badput().unproductive_checkpoint_save_time(), 6);
  EXPECT_DOUBLE_EQ(r.badput().wasted_progress_from_disruption(), 13);
  EXPECT_DOUBLE_EQ(r.badput().infrastructure_recovery_from_disruption(), 22);
  EXPECT_DOUBLE_EQ(r.badput().unproductive_checkpoint_restore_time(), 4);
  EXPECT_DOUBLE_EQ(r.badput().other(), 0);
  EXPECT_DOUBLE_EQ(r.productive_seconds(), 142);
  EXPECT_DOUBLE_EQ(r.goodput(), 0.71);
  EXPECT_DOUBLE_EQ(r.ettr(), 0.71);
  EXPECT_DOUBLE_EQ(r.checkpoint_stall_overhead(), 6.0 / 200);
  ASSERT_GT(r.goodput_over_time_size(), 0);
  EXPECT_DOUBLE_EQ(r.goodput_over_time(r.goodput_over_time_size() - 1).value(), 0.71);
  EXPECT_EQ(r.checkpoints_committed(), 5);
  EXPECT_EQ(r.logical_bytes(), 5000u);
  EXPECT_EQ(r.sent_bytes(), 250u);

  // Lag: commits at 22, 32, 60, 70, 103; the window ends at 200.
  EXPECT_DOUBLE_EQ(r.durability_lag_max_seconds(), 97);
  EXPECT_DOUBLE_EQ(r.durability_lag_seconds(), 97);
  EXPECT_NEAR(r.durability_lag_mean_seconds(), 5983.0 / 200, 1e-9);
  EXPECT_EQ(r.durability_lag_over_time_size(), 49);

  // Compliance with the default targets: only goodput misses.
  EXPECT_FALSE(r.meets_goodput());
  EXPECT_TRUE(r.meets_mttr());
  EXPECT_TRUE(r.meets_lost_work());
  EXPECT_TRUE(r.meets_mttd());
  EXPECT_FALSE(r.compliant());

  // Young/Daly: cost 1 s, MTBF 200/2 = 100 s, R = p50(10, 19) = 10 s.
  const v1::IntervalAdvice& a = r.advice();
  EXPECT_DOUBLE_EQ(a.save_cost_seconds(), 1);
  EXPECT_DOUBLE_EQ(a.mtbf_seconds(), 100);
  EXPECT_DOUBLE_EQ(a.recovery_seconds(), 10);
  EXPECT_DOUBLE_EQ(a.current_interval_seconds(), 10);
  EXPECT_DOUBLE_EQ(a.step_seconds(), 1);
  EXPECT_NEAR(a.recommended_interval_seconds(), std::sqrt(200.0), 1e-9);
  EXPECT_EQ(a.recommended_interval_steps(), 14);
  EXPECT_EQ(a.current_interval_steps(), 10);
  EXPECT_NEAR(a.expected_ettr_current(), 0.75, 1e-9);
  EXPECT_NEAR(a.expected_ettr_recommended(),
              1 - 1 / std::sqrt(200.0) - (10 + std::sqrt(200.0) / 2) / 100, 1e-9);
}

TEST(SlaReportTest, TargetsWindowsOpenIncidentsAndOperatorRestores) {
  ReportInput in = Scripted();
  in.targets.set_mttr_seconds(10);  // the freeze's 16 s misses
  in.targets.set_goodput(0.7);
  v1::SlaReport r = ComputeReport(in);
  EXPECT_TRUE(r.incidents(0).meets_mttr());
  EXPECT_FALSE(r.incidents(1).meets_mttr());
  EXPECT_FALSE(r.meets_mttr());
  EXPECT_TRUE(r.meets_goodput());

  // A window around the second incident only.
  in.from_unix_ms = At(60);
  in.to_unix_ms = At(100);
  r = ComputeReport(in);
  ASSERT_EQ(r.incidents_size(), 1);
  EXPECT_EQ(r.incidents(0).seq(), 1);
  EXPECT_DOUBLE_EQ(r.wall_seconds(), 40);
  // In [60, 100]: save stall [68, 69], wasted [69, 75], infra [75, 90],
  // restore [90, 92], startup [92, 94].
  EXPECT_DOUBLE_EQ(r.productive_seconds(), 40 - 1 - 6 - 15 - 2 - 2);

  // An operator restore, and an incident still open (ranks not back).
  in = Scripted();
  in.state = "RESTARTING";
  in.runs[0].set_ended_unix_ms(0);
  in.runs[0].clear_end_state();
  in.incidents.push_back(Inc(2, "operator restore", 55, 120, 120, 125, 126, 30, 127));
  v1::Incident open = Inc(3, "hang", 60, 150, 170, 0, 0, -1, 0);
  open.set_ranks_back_unix_ms(0);
  open.set_restored_unix_ms(0);
  in.incidents.push_back(open);
  r = ComputeReport(in);
  EXPECT_EQ(r.to_unix_ms(), At(300)) << "a running job's window ends now";
  ASSERT_EQ(r.incidents_size(), 4);
  EXPECT_EQ(r.incidents(2).kind(), "operator");
  EXPECT_EQ(r.incidents(2).restore_source(), "operator target");
  EXPECT_EQ(r.incidents(2).lost_steps(), 25);
  EXPECT_DOUBLE_EQ(r.incidents(2).lost_seconds(), 61)
      << "fault 120 s - step 30 at 58 + 1 s";
  EXPECT_FALSE(r.incidents(3).closed());
  EXPECT_DOUBLE_EQ(r.incidents(3).mttr_seconds(), -1);
  EXPECT_EQ(r.mttr_seconds().count(), 3) << "open incidents have no MTTR yet";
  EXPECT_EQ(r.mttd_seconds().count(), 4);
  EXPECT_DOUBLE_EQ(r.badput().infrastructure_recovery_from_disruption(),
                   7 + 15 + 5 + (300 - 150));
  EXPECT_EQ(r.advice().mtbf_seconds(), 300.0 / 3) << "operators are not failures";
}

TEST(SlaReportTest, ARunCutShortBeforeItsFirstStepIsStartupOnlyUntilTheNextRun) {
  // The coordinator restarted while the job was starting: run 0 never got a
  // first step or an end, run 1 (watched afresh) did.
  ReportInput in;
  in.job.set_job_id("j");
  in.state = "FINISHED";
  v1::JobRun r0, r1;
  r0.set_started_unix_ms(At(0));
  r1.set_run(1);
  r1.set_started_unix_ms(At(5));
  r1.set_first_step_unix_ms(At(6));
  r1.set_ended_unix_ms(At(100));
  r1.set_end_state("FINISHED");
  in.runs = {r0, r1};
  in.now_unix_ms = At(1000);
  const v1::SlaReport r = ComputeReport(in);
  EXPECT_DOUBLE_EQ(r.wall_seconds(), 100);
  EXPECT_DOUBLE_EQ(r.badput().program_startup(), 5 + 1);
  EXPECT_DOUBLE_EQ(r.goodput(), 0.94);
}

TEST(SlaReportTest, AClockSteppedBackGivesNoNegativeDurations) {
  ReportInput in = Scripted();
  // Detected "before" the fault, restored "before" the ranks were back.
  in.incidents[0].set_detected_unix_ms(At(37));
  in.incidents[0].set_restored_unix_ms(At(44));
  v1::Incident odd = Inc(2, "hang", 55, 120, 121, 125, 126, 40, 127);
  odd.set_detected_unix_ms(0);  // closed, never detected
  in.incidents.push_back(odd);
  const v1::SlaReport r = ComputeReport(in);
  for (const v1::IncidentReport& x : r.incidents()) {
    for (double v : {x.mttd_seconds(), x.mttr_seconds(), x.restore_seconds(),
                     x.lost_seconds(), x.time_to_recover_seconds()}) {
      EXPECT_TRUE(v >= 0 || v == -1) << "-1 means not reached; " << x.ShortDebugString();
    }
  }
  for (const v1::Distribution* d :
       {&r.mttd_seconds(), &r.mttr_seconds(), &r.restore_seconds(), &r.lost_seconds()}) {
    for (double v : d->values()) EXPECT_GE(v, 0);
  }
  EXPECT_EQ(r.mttr_seconds().count(), 2)
      << "a closed incident never detected has no MTTR";
  EXPECT_TRUE(absl::StrContains(RenderHtml(r), "id=\"mttr-dist\""));
}

TEST(SlaReportTest, FastStepsMakeLostStepsALowerBoundAndSayWhy) {
  ReportInput in = Scripted();
  in.step_report_gap = absl::Seconds(2);  // steps take 1 s
  const v1::SlaReport r = ComputeReport(in);
  EXPECT_FALSE(r.lost_steps_exact());
  bool said = false;
  for (const std::string& n : r.notes()) said |= absl::StrContains(n, "lower bound");
  EXPECT_TRUE(said);
}

TEST(SlaReportTest, AnEmptyJobHasAReportWithoutNumbersNotACrash) {
  ReportInput in;
  in.job.set_job_id("empty");
  in.now_unix_ms = At(10);
  const v1::SlaReport r = ComputeReport(in);
  EXPECT_EQ(r.incidents_size(), 0);
  EXPECT_DOUBLE_EQ(r.wall_seconds(), 0);
  EXPECT_NE(r.advice().summary(), "");
  EXPECT_NE(RenderMarkdown(r), "");
  EXPECT_TRUE(absl::StrContains(RenderHtml(r), "no incidents"));
}

TEST(SlaReportTest, RenderingsCarryTheNumbersAndTheJsonRoundTrips) {
  const v1::SlaReport r = ComputeReport(Scripted());
  const std::string md = RenderMarkdown(r);
  EXPECT_TRUE(absl::StrContains(md, "71.0 %")) << md;
  EXPECT_TRUE(absl::StrContains(md, "WASTED_PROGRESS_FROM_DISRUPTION | 13.0 s")) << md;
  EXPECT_TRUE(absl::StrContains(md, "| 0 | crash | 1 |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "MISSES its targets")) << md;

  const std::string html = RenderHtml(r);
  for (const char* id :
       {"id=\"timeline\"", "id=\"mttr-dist\"", "id=\"lost-dist\"", "id=\"goodput\"",
        "id=\"lag\"", "class=\"incident\" data-seq=\"1\""}) {
    EXPECT_TRUE(absl::StrContains(html, id)) << id;
  }
  EXPECT_FALSE(absl::StrContains(html, "<script"));
  EXPECT_FALSE(absl::StrContains(html, "http://"));
  EXPECT_FALSE(absl::StrContains(html, "https://"));

  v1::SlaReport back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ReportToJson(r), &back).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(back, r));
}

}  // namespace
}  // namespace snapback::sla
