#include "launcher/rank_group.h"

#include <signal.h>

#include <fstream>
#include <sstream>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "testing/test_util.h"

namespace snapback::launcher {
namespace {

using ::snapback::testing::Slurp;

using testing::TempDir;

LaunchSpec Sh(const std::string& script, int nproc = 4) {
  return {.job_id = "j",
          .nproc = nproc,
          .argv = {"/bin/sh", "-c", script},
          .endpoint = "127.0.0.1:7420",
          .env = {}};
}

TEST(RankGroup, RanksGetTheirEnvironmentAndAKilledRankIsReported) {
  TempDir dir;
  RankGroup g(
      Sh("echo $SNAPBACK_JOB $SNAPBACK_RANK $SNAPBACK_WORLD_SIZE $SNAPBACK_INCARNATION "
         "$SNAPBACK_ENDPOINT > " +
         dir.path() + "/r$SNAPBACK_RANK.tmp && mv " + dir.path() +
         "/r$SNAPBACK_RANK.tmp " + dir.path() + "/r$SNAPBACK_RANK; exec sleep 60"));
  ASSERT_TRUE(g.Start(7).ok());
  EXPECT_EQ(g.running(), 4);
  for (int r = 0; r < 4; ++r) {
    const std::string path = dir.path() + "/r" + std::to_string(r);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (Slurp(path).empty() && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(5));
    EXPECT_EQ(Slurp(path), "j " + std::to_string(r) + " 4 7 127.0.0.1:7420\n");
  }
  const pid_t victim = g.pids()[2];
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  auto e = g.WaitExit(absl::Seconds(10));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->rank, 2);
  EXPECT_EQ(e->signal, SIGKILL);
  EXPECT_EQ(e->cls, ExitClass::kRestart);
  EXPECT_EQ(e->incarnation, 7);
  EXPECT_EQ(g.running(), 3);
  const absl::Time t0 = absl::Now();
  g.StopAll(absl::Seconds(10));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5)) << "SIGTERM should have been enough";
  EXPECT_EQ(g.running(), 0);
}

TEST(RankGroup, ExitCodesFollowTheContract) {
  EXPECT_EQ(ClassifyExit(0, 0), ExitClass::kDone);
  EXPECT_EQ(ClassifyExit(kExitNoRestart, 0), ExitClass::kNoRestart);
  EXPECT_EQ(ClassifyExit(kExitRestartMe, 0), ExitClass::kRestart);
  EXPECT_EQ(ClassifyExit(1, 0), ExitClass::kRestart);
  EXPECT_EQ(ClassifyExit(-1, SIGSEGV), ExitClass::kRestart);

  RankGroup g(Sh(
      "case $SNAPBACK_RANK in 0) exit 0;; 1) exit 78;; 2) exit 75;; *) exit 3;; esac"));
  ASSERT_TRUE(g.Start(1).ok());
  std::map<int, RankExit> exits;
  while (auto e = g.WaitExit(absl::Seconds(10))) exits[e->rank] = *e;
  ASSERT_EQ(exits.size(), 4u);
  EXPECT_EQ(exits[0].cls, ExitClass::kDone);
  EXPECT_EQ(exits[1].cls, ExitClass::kNoRestart);
  EXPECT_EQ(exits[2].cls, ExitClass::kRestart);
  EXPECT_EQ(exits[3].exit_code, 3);
  EXPECT_EQ(exits[3].cls, ExitClass::kRestart);
}

TEST(RankGroup, ARankIgnoringSigtermIsKilledAfterTheGrace) {
  TempDir dir;
  RankGroup g(Sh("trap '' TERM; touch " + dir.path() +
                     "/ready$SNAPBACK_RANK; while :; do sleep 1; done",
                 1));
  ASSERT_TRUE(g.Start(1).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (Slurp(dir.path() + "/ready0").empty() &&
         !std::ifstream(dir.path() + "/ready0") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const absl::Time t0 = absl::Now();
  g.StopAll(absl::Milliseconds(500));
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(450));
  EXPECT_EQ(g.running(), 0);
}

TEST(RankGroup, RanksGetSigtermEvenWhenTheLauncherBlocksIt) {
  // snapback-launch blocks SIGINT/SIGTERM (it reads them from a signalfd);
  // its ranks must not inherit that, or StopAll always waits out the grace.
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  TempDir dir;
  RankGroup g(Sh("touch " + dir.path() + "/ready$SNAPBACK_RANK; exec sleep 600", 2));
  ASSERT_TRUE(g.Start(1).ok());
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((!std::ifstream(dir.path() + "/ready0") ||
          !std::ifstream(dir.path() + "/ready1")) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const absl::Time t0 = absl::Now();
  g.StopAll(absl::Seconds(30));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5)) << "SIGTERM did not reach the ranks";
  EXPECT_EQ(g.running(), 0);
}

TEST(RankGroup, ARankCommandThatCannotBeExecutedIsAFailedRank) {
  // Not an error of Start(): the detector decides, as for any failed rank.
  RankGroup g({.job_id = "j",
               .nproc = 2,
               .argv = {"snapback-no-such-rank-command"},
               .endpoint = "",
               .env = {}});
  ASSERT_TRUE(g.Start(1).ok());
  std::map<int, RankExit> exits;
  while (auto e = g.WaitExit(absl::Seconds(10))) exits[e->rank] = *e;
  ASSERT_EQ(exits.size(), 2u);
  for (const auto& [rank, e] : exits) {
    EXPECT_EQ(e.exit_code, 127);
    EXPECT_EQ(e.cls, ExitClass::kRestart);
  }
}

TEST(RankGroup, RestartAsANewIncarnationAfterStopping) {
  RankGroup g(Sh("exec sleep 60", 2));
  ASSERT_TRUE(g.Start(1).ok());
  EXPECT_EQ(g.Start(2).code(), absl::StatusCode::kFailedPrecondition);
  const std::vector<pid_t> old = g.pids();
  g.StopAll(absl::Seconds(5));
  ASSERT_TRUE(g.Start(2).ok());
  EXPECT_EQ(g.incarnation(), 2);
  EXPECT_EQ(g.running(), 2);
  EXPECT_NE(g.pids(), old);
}

}  // namespace
}  // namespace snapback::launcher
