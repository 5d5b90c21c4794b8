#include "failure-detector/job_monitor.h"

#include <random>

#include "gtest/gtest.h"

namespace snapback::detector {
namespace {

class JobMonitorTest : public ::testing::Test {
 protected:
  JobMonitor Make(MonitorOptions o = {}) {
    if (o.world_size == 1) o.world_size = 4;
    return JobMonitor(o, &clock_, /*incarnation=*/1);
  }
  // Every rank in `ranks` beats at `step`, then time moves `dt`.
  void Beat(JobMonitor& m, std::vector<int> ranks, int64_t inc, int64_t step,
            Phase phase = Phase::kTraining, absl::Duration dt = absl::Seconds(1)) {
    for (int r : ranks)
      m.OnHeartbeat({.rank = r, .incarnation = inc, .step = step, .phase = phase});
    clock_.Advance(dt);
  }
  FakeClock clock_;
};

TEST_F(JobMonitorTest, BrokenStreamFailsAfterTheGraceAndTheIncidentTracksTheRecovery) {
  JobMonitor m = Make();
  for (int step = 1; step <= 30; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  m.OnCommitted(20);
  m.OnStreamBroken(2, 1);
  // The launcher gets stream_break_grace to report the exit code first.
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kNone);
  clock_.Advance(absl::Milliseconds(250));
  JobMonitor::Action a = m.Tick();
  EXPECT_EQ(m.state(), JobState::kFailed);
  ASSERT_EQ(a.type, JobMonitor::Action::kRestart);
  EXPECT_NE(a.reason.find("rank 2"), std::string::npos) << a.reason;
  ASSERT_EQ(m.incidents().size(), 1u);
  EXPECT_EQ(m.incidents()[0].kind, IncidentKind::kRankExit);
  EXPECT_LE(m.incidents()[0].mttd(), absl::Seconds(1));

  clock_.Advance(absl::Milliseconds(300));
  m.OnRestartRequested(2);
  EXPECT_EQ(m.state(), JobState::kRestarting);
  Beat(m, {0, 1, 2}, 2, 20, Phase::kRestoring);
  EXPECT_EQ(m.state(), JobState::kRestarting) << "one rank is not back yet";
  Beat(m, {3}, 2, 20, Phase::kRestoring);
  EXPECT_EQ(m.state(), JobState::kRecovering);
  Beat(m, {0, 1, 2, 3}, 2, 20, Phase::kTraining);
  Beat(m, {0}, 2, 21, Phase::kTraining);
  EXPECT_EQ(m.state(), JobState::kRunning);
  const Incident& inc = m.incidents()[0];
  EXPECT_TRUE(inc.closed());
  EXPECT_EQ(inc.restored_step, 20);
  EXPECT_EQ(inc.lost_steps(), 10);
  EXPECT_LT(inc.detected, inc.restart_requested);
  EXPECT_LT(inc.restart_requested, inc.ranks_back);
  EXPECT_LE(inc.ranks_back, inc.restored);
  EXPECT_LT(inc.restored, inc.first_new_step);
  EXPECT_EQ(inc.mttr(), inc.first_new_step - inc.detected);
}

TEST_F(JobMonitorTest, FrozenRankIsSuspectedThenFailedWithinTheTarget) {
  JobMonitor m = Make();
  for (int step = 1; step <= 60; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  // Rank 1 freezes (SIGSTOP): its beats stop, the others go on.
  bool saw_suspect = false;
  JobMonitor::Action a;
  for (int i = 0; i < 300 && a.type == JobMonitor::Action::kNone; ++i) {
    if (i % 10 == 0) {
      for (int r : {0, 2, 3}) m.OnHeartbeat({.rank = r, .incarnation = 1, .step = 61});
    }
    a = m.Tick();
    saw_suspect = saw_suspect || m.state() == JobState::kSuspect;
    clock_.Advance(absl::Milliseconds(100));
  }
  ASSERT_EQ(a.type, JobMonitor::Action::kRestart);
  EXPECT_TRUE(saw_suspect);
  const Incident& inc = m.incidents().back();
  EXPECT_EQ(inc.kind, IncidentKind::kHeartbeatLoss);
  EXPECT_EQ(inc.rank, 1);
  EXPECT_LE(inc.mttd(), absl::Seconds(10)) << "target: a frozen process within 10 s";
  EXPECT_GE(inc.mttd(), absl::Seconds(2)) << "no faster than the learned rhythm allows";
}

TEST_F(JobMonitorTest, RankThatBeatsButNeverAdvancesIsAHang) {
  MonitorOptions o;
  o.hang_floor = absl::Seconds(5);
  o.hang_factor = 10;
  JobMonitor m = Make(o);
  for (int step = 1; step <= 20; ++step) Beat(m, {0, 1, 2, 3}, 1, step);  // 1 s per step
  // Rank 3 keeps beating at step 20 while the others move on.
  absl::Duration detected_after;
  JobMonitor::Action a;
  for (int i = 0; i < 300 && a.type == JobMonitor::Action::kNone; ++i) {
    if (i % 10 == 0) {
      for (int r : {0, 1, 2})
        m.OnHeartbeat({.rank = r, .incarnation = 1, .step = 21 + i / 10});
      m.OnHeartbeat({.rank = 3, .incarnation = 1, .step = 20});
    }
    a = m.Tick();
    detected_after += absl::Milliseconds(100);
    clock_.Advance(absl::Milliseconds(100));
  }
  ASSERT_EQ(a.type, JobMonitor::Action::kRestart);
  EXPECT_EQ(m.incidents().back().kind, IncidentKind::kHang);
  EXPECT_EQ(m.incidents().back().rank, 3);
  // Limit = 10 x the 1 s median step; rank 3's step last moved 1 s before.
  EXPECT_GE(detected_after, absl::Seconds(8));
  EXPECT_LE(detected_after, absl::Seconds(11));
}

TEST_F(JobMonitorTest, ALongSaveIsNotAHangUntilItsBudget) {
  MonitorOptions o;
  o.hang_floor = absl::Seconds(5);
  o.save_budget = absl::Minutes(3);
  JobMonitor m = Make(o);
  for (int step = 1; step <= 10; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  // A 2-minute save: heartbeats flow, the step does not move.
  for (int s = 0; s < 120; ++s) {
    Beat(m, {0, 1, 2, 3}, 1, 10, Phase::kSaving);
    ASSERT_EQ(m.Tick().type, JobMonitor::Action::kNone) << "at " << s << " s";
  }
  for (int s = 0; s < 70; ++s) Beat(m, {0, 1, 2, 3}, 1, 10, Phase::kSaving);
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kRestart);
  EXPECT_NE(m.incidents().back().reason.find("saving"), std::string::npos);
}

TEST_F(JobMonitorTest, ZombiesOfAnOldIncarnationAreIgnored) {
  JobMonitor m = Make();
  for (int step = 1; step <= 10; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  m.OnStreamBroken(0, 1);
  clock_.Advance(absl::Milliseconds(250));
  ASSERT_EQ(m.Tick().type, JobMonitor::Action::kRestart);
  m.OnRestartRequested(2);
  // The old incarnation's ranks still talk, and break.
  Beat(m, {1, 2, 3}, 1, 11);
  m.OnStreamBroken(1, 1);
  EXPECT_EQ(m.state(), JobState::kRestarting);
  Beat(m, {0, 1, 2, 3}, 2, 10, Phase::kRestoring);
  EXPECT_EQ(m.state(), JobState::kRecovering);
}

TEST_F(JobMonitorTest, TheLaunchersExitReportWinsOverTheBrokenStream) {
  JobMonitor m = Make();
  for (int step = 1; step <= 10; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  // Rank 1 exits 0 without a goodbye, rank 2 exits 78: the streams break
  // first, the launcher's reports follow within the grace.
  m.OnStreamBroken(1, 1);
  m.OnStreamBroken(2, 1);
  clock_.Advance(absl::Milliseconds(20));
  m.OnRankDone(1, 1);
  m.OnFatal(2, 1, "rank 2 exited with code 78");
  JobMonitor::Action a = m.Tick();
  EXPECT_EQ(a.type, JobMonitor::Action::kGiveUp);
  EXPECT_EQ(m.state(), JobState::kGaveUp);
  ASSERT_EQ(m.incidents().size(), 1u);
  EXPECT_EQ(m.incidents()[0].rank, 2);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kNone);
}

TEST_F(JobMonitorTest, AGoodbyeThenAFailingExitIsAFailureUnderALauncher) {
  MonitorOptions o;
  o.exit_reports = true;
  JobMonitor m = Make(o);
  for (int step = 1; step <= 5; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  // An exception unwinds through Close(): DONE, then exit 1.
  m.OnRankDone(2, 1, /*goodbye=*/true);
  clock_.Advance(absl::Seconds(5));  // no beats from it: not a heartbeat loss
  for (int r : {0, 1, 3}) m.OnHeartbeat({.rank = r, .incarnation = 1, .step = 6});
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kNone);
  m.OnRankFailed(2, 1, "rank 2 exited with code 1");
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kRestart);
  // A goodbye then exit 0 is done.
  m.OnRestartRequested(2);
  for (int r = 0; r < 4; ++r) {
    m.OnRankDone(r, 2, /*goodbye=*/true);
    m.OnRankDone(r, 2);
  }
  EXPECT_EQ(m.state(), JobState::kFinished);
}

TEST_F(JobMonitorTest, NoHangBeforeTheFirstStepNorRightAfterALongSave) {
  MonitorOptions o;
  o.hang_floor = absl::Seconds(60);
  JobMonitor m = Make(o);
  // No step reported yet for 5 minutes (a slow first save): not a hang.
  for (int s = 0; s < 300; ++s) {
    Beat(m, {0, 1, 2, 3}, 1, -1);
    ASSERT_EQ(m.Tick().type, JobMonitor::Action::kNone) << s;
  }
  // Steps every 1 s, then a 5-minute blocking save (within its budget).
  for (int step = 0; step < 30; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  for (int s = 0; s < 300; ++s) Beat(m, {0, 1, 2, 3}, 1, 30, Phase::kSaving);
  Beat(m, {0, 1, 2, 3}, 1, 30, Phase::kTraining, absl::Milliseconds(1));
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kNone) << "the save just ended";
  EXPECT_TRUE(m.incidents().empty());
}

TEST_F(JobMonitorTest, ALoopThatReportsEveryHundredStepsIsNotHungBetweenReports) {
  MonitorOptions o;
  o.hang_floor = absl::Seconds(60);
  JobMonitor m = Make(o);
  // Beats every 1 s; the step moves by 100 every 50 s: the hang limit is
  // 10 x the time between step changes, not x the time per step.
  for (int k = 0; k < 12; ++k) {
    for (int s = 0; s < 50; ++s) {
      Beat(m, {0, 1, 2, 3}, 1, 100 * k);
      ASSERT_EQ(m.Tick().type, JobMonitor::Action::kNone) << k << " " << s;
    }
  }
  // Stuck for good: caught at 10 x 50 s.
  JobMonitor::Action a;
  int waited = 0;
  for (; waited < 1000 && a.type == JobMonitor::Action::kNone; ++waited) {
    Beat(m, {0, 1, 2, 3}, 1, 1200);
    a = m.Tick();
  }
  EXPECT_EQ(a.type, JobMonitor::Action::kRestart);
  EXPECT_GE(waited, 490);
  EXPECT_LE(waited, 510);
}

TEST_F(JobMonitorTest, EveryRankDoneFinishesTheJob) {
  JobMonitor m = Make();
  for (int step = 1; step <= 3; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  for (int r = 0; r < 4; ++r) m.OnRankDone(r, 1);
  EXPECT_EQ(m.state(), JobState::kFinished);
  clock_.Advance(absl::Minutes(5));  // silence after the end is no failure
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kNone);
  EXPECT_TRUE(m.incidents().empty());
}

TEST_F(JobMonitorTest, AFailureDuringRecoveryClosesBothIncidentsAtTheRealRecovery) {
  JobMonitor m = Make();
  for (int step = 1; step <= 10; ++step) Beat(m, {0, 1, 2, 3}, 1, step);
  m.OnRankFailed(0, 1, "rank 0 killed by SIGKILL");
  ASSERT_EQ(m.Tick().type, JobMonitor::Action::kRestart);
  m.OnRestartRequested(2);
  Beat(m, {0, 1, 2, 3}, 2, -1, Phase::kRestoring);
  m.OnRankFailed(3, 2, "rank 3 killed by SIGKILL while restoring");
  ASSERT_EQ(m.Tick().type, JobMonitor::Action::kRestart);
  m.OnRestartRequested(3);
  Beat(m, {0, 1, 2, 3}, 3, 5, Phase::kTraining);
  Beat(m, {0, 1, 2, 3}, 3, 6, Phase::kTraining);
  ASSERT_EQ(m.incidents().size(), 2u);
  EXPECT_EQ(m.state(), JobState::kRunning);
  for (const Incident& i : m.incidents()) {
    EXPECT_TRUE(i.closed());
    EXPECT_EQ(i.restored_step, 5);
  }
  EXPECT_GT(m.incidents()[0].mttr(), m.incidents()[1].mttr());
}

TEST_F(JobMonitorTest, RestartLoopWithoutProgressGivesUp) {
  MonitorOptions o;
  o.max_restarts_without_progress = 2;
  JobMonitor m = Make(o);
  int64_t inc = 1;
  auto crash_and_restart = [&]() {
    Beat(m, {0, 1, 2, 3}, inc, 5);
    m.OnStreamBroken(0, inc);
    clock_.Advance(absl::Milliseconds(250));
    return m.Tick();
  };
  ASSERT_EQ(crash_and_restart().type, JobMonitor::Action::kRestart);
  m.OnRestartRequested(++inc);
  m.OnCommitted(10);  // progress: the count starts again
  ASSERT_EQ(crash_and_restart().type, JobMonitor::Action::kRestart);
  m.OnRestartRequested(++inc);
  ASSERT_EQ(crash_and_restart().type, JobMonitor::Action::kRestart);
  m.OnRestartRequested(++inc);
  JobMonitor::Action a = crash_and_restart();
  EXPECT_EQ(a.type, JobMonitor::Action::kGiveUp);
  EXPECT_EQ(m.state(), JobState::kGaveUp);
  EXPECT_NE(a.reason.find("without a newly committed step"), std::string::npos)
      << a.reason;
  EXPECT_EQ(m.Tick().type, JobMonitor::Action::kNone);
}

TEST_F(JobMonitorTest, HealthyJobWithJitterAndSavesHasNoFalsePositiveInTwoMinutes) {
  JobMonitor m = Make();
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> jitter(700, 1300);  // heartbeat period, ms
  absl::Duration next_beat[4] = {};
  int64_t step = 0;
  absl::Duration since_step;
  for (absl::Duration t; t < absl::Minutes(2); t += absl::Milliseconds(50)) {
    // A step every 2 s; then a 20 s save (seconds 10-29 of every 30).
    const bool saving = (t / absl::Seconds(1)) % 30 >= 10 &&
                        (t / absl::Seconds(1)) % 30 < 30 &&
                        (t / absl::Seconds(1)) % 30 < 20 + 10;
    if (!saving && (since_step += absl::Milliseconds(50)) >= absl::Seconds(2)) {
      ++step;
      since_step = absl::ZeroDuration();
    }
    for (int r = 0; r < 4; ++r) {
      if (t >= next_beat[r]) {
        m.OnHeartbeat({.rank = r,
                       .incarnation = 1,
                       .step = step,
                       .phase = saving ? Phase::kSaving : Phase::kTraining});
        next_beat[r] = t + absl::Milliseconds(jitter(rng));
      }
    }
    ASSERT_EQ(m.Tick().type, JobMonitor::Action::kNone) << "false positive at " << t;
    clock_.Advance(absl::Milliseconds(50));
  }
  EXPECT_TRUE(m.incidents().empty());
}

}  // namespace
}  // namespace snapback::detector
