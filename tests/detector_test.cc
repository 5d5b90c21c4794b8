// The failure detector for real: an embedded server (coordinator + detector),
// snapback-launch as a process, and snapback-demo-job ranks that are
// SIGKILLed, SIGSTOPped, hung, or exit with "do not restart". Each test checks
// what the detector logged (the durable incident log) and that the job ends
// bit-identical to an uninterrupted run (every rank prints "done N ok" only
// when its final state equals the reference).
#include <signal.h>
#include <sys/types.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "snapback/client.h"
#include "testing/job_harness.h"
#include "testing/server_fixture.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using ::snapback::testing::Launcher;
using ::snapback::testing::Progress;
using ::snapback::testing::Subprocess;

class DetectorTest : public ::testing::Test {
 protected:
  void StartServer(detector::MonitorOptions monitor = {}) {
    server::ServerOptions o = testing::EmbeddedServerOptions(dir_.path() + "/node");
    o.detector.monitor = monitor;
    auto server = server::Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    progress_ = dir_.path() + "/progress";
    std::filesystem::create_directories(progress_);
  }

  std::unique_ptr<Launcher> Launch(const std::string& job, int nproc, int steps,
                                   int step_ms, std::vector<std::string> extra = {},
                                   int heartbeat_ms = 1000) {
    std::vector<std::string> argv = {Subprocess::BinPath("snapback-launch"),
                                     "--job",
                                     job,
                                     "--nproc",
                                     std::to_string(nproc),
                                     "--endpoint",
                                     server_->address(),
                                     "--stop-grace",
                                     "2s",
                                     "--heartbeat-ms",
                                     std::to_string(heartbeat_ms),
                                     "--",
                                     Subprocess::BinPath("snapback-demo-job"),
                                     "--steps",
                                     std::to_string(steps),
                                     "--save-every",
                                     "5",
                                     "--mib",
                                     "1",
                                     "--step-ms",
                                     std::to_string(step_ms),
                                     "--progress-dir",
                                     progress_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Launcher>(argv);
  }

  // Polls the rank's progress file until it is at `step` or later in
  // incarnation `inc` (a condition with a deadline, not a fixed sleep).
  Progress WaitProgress(int rank, int64_t inc, int64_t step, absl::Duration timeout) {
    std::optional<Progress> p =
        ::snapback::testing::WaitProgress(progress_, rank, inc, step, timeout);
    if (p.has_value()) return *p;
    ADD_FAILURE() << "rank " << rank << " did not reach step " << step
                  << " of incarnation " << inc;
    return {};
  }

  std::vector<v1::Incident> Incidents(const std::string& job) {
    auto list = server_->TEST_coordinator_store()->ListIncidents(job);
    EXPECT_TRUE(list.ok()) << list.status();
    return list.ok() ? *list : std::vector<v1::Incident>{};
  }

  v1::JobHealth Health(const std::string& job) {
    auto h = server_->TEST_detector()->Health(job);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : v1::JobHealth{};
  }

  // A closed incident's timeline is in order.
  static void ExpectConsistent(const v1::Incident& i) {
    SCOPED_TRACE(i.DebugString());
    EXPECT_GT(i.last_healthy_unix_ms(), 0);
    EXPECT_LE(i.last_healthy_unix_ms(), i.detected_unix_ms());
    EXPECT_LE(i.detected_unix_ms(), i.restart_requested_unix_ms());
    EXPECT_LE(i.restart_requested_unix_ms(), i.ranks_back_unix_ms());
    EXPECT_LE(i.ranks_back_unix_ms(), i.restored_unix_ms());
    EXPECT_LE(i.restored_unix_ms(), i.first_new_step_unix_ms());
    EXPECT_GT(i.new_incarnation(), i.incarnation());
    EXPECT_GE(i.restored_step(), 0);
    EXPECT_TRUE(i.scheduler_error().empty());
  }

  // Every rank of the last incarnation ended bit-identical to an
  // uninterrupted run of `steps` steps.
  static void ExpectDoneOk(Launcher& l, int nproc, int steps) {
    const std::vector<std::string> done = l.Lines("done ");
    int ok = 0;
    for (const std::string& d : done) ok += d == absl::StrCat("done ", steps, " ok");
    EXPECT_GE(ok, nproc) << l.Output();
    EXPECT_TRUE(l.Lines("snapback-demo-job: restored state differs").empty());
    for (const std::string& r : l.Lines("restored ")) {
      EXPECT_NE(r.find(" ok "), std::string::npos) << r;
    }
  }

  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::string progress_;
};

TEST_F(DetectorTest, KilledRankIsDetectedWithinOneSecondAndTheJobResumesBitExact) {
  StartServer();
  auto launcher = Launch("kill", 2, 40, 50);
  const Progress p = WaitProgress(1, 1, 12, absl::Seconds(60));
  const absl::Time killed = absl::Now();
  ASSERT_EQ(kill(p.pid, SIGKILL), 0);
  ASSERT_EQ(launcher->Wait(absl::Seconds(120)), 0) << launcher->Output();
  ExpectDoneOk(*launcher, 2, 40);

  const std::vector<v1::Incident> incidents = Incidents("kill");
  ASSERT_EQ(incidents.size(), 1u) << launcher->Output();
  const v1::Incident& i = incidents[0];
  EXPECT_EQ(i.kind(), "rank exit");
  EXPECT_EQ(i.rank(), 1);
  EXPECT_EQ(i.incarnation(), 1);
  EXPECT_EQ(i.new_incarnation(), 2);
  const int64_t mttd_ms = i.detected_unix_ms() - absl::ToUnixMillis(killed);
  std::printf(
      "SIGKILL -> detected in %lld ms, -> first new step in %lld ms\n",
      static_cast<long long>(mttd_ms),
      static_cast<long long>(i.first_new_step_unix_ms() - absl::ToUnixMillis(killed)));
  EXPECT_LE(mttd_ms, 1000) << "target: a crash is detected within 1 s";
  EXPECT_GE(mttd_ms, 0);
  ExpectConsistent(i);
  EXPECT_LE(i.restored_step(), p.step);
  EXPECT_EQ(Health("kill").state(), "FINISHED");

  // The new incarnation fences the old one: a rank of incarnation 1 that is
  // still alive can no longer save.
  const absl::Status s = testing::SaveAsIncarnation(server_->address(), "kill", 2, 1);
  EXPECT_NE(s.message().find("stale incarnation"), std::string::npos) << s;
}

TEST_F(DetectorTest, FrozenRankIsDetectedWithinThePhiThreshold) {
  StartServer();
  auto launcher = Launch("freeze", 2, 60, 50);
  const Progress p = WaitProgress(0, 1, 15, absl::Seconds(60));
  const absl::Time frozen = absl::Now();
  ASSERT_EQ(kill(p.pid, SIGSTOP), 0);
  ASSERT_EQ(launcher->Wait(absl::Seconds(120)), 0) << launcher->Output();
  ExpectDoneOk(*launcher, 2, 60);

  const std::vector<v1::Incident> incidents = Incidents("freeze");
  ASSERT_EQ(incidents.size(), 1u) << launcher->Output();
  const v1::Incident& i = incidents[0];
  EXPECT_EQ(i.kind(), "heartbeat loss");
  EXPECT_EQ(i.rank(), 0);
  const int64_t mttd_ms = i.detected_unix_ms() - absl::ToUnixMillis(frozen);
  std::printf("SIGSTOP -> detected in %lld ms (heartbeat every 1 s)\n",
              static_cast<long long>(mttd_ms));
  EXPECT_LE(mttd_ms, 10000) << "target: a frozen process is detected within 10 s";
  EXPECT_GE(mttd_ms, 1000) << "not before a heartbeat was actually missed";
  ExpectConsistent(i);
}

TEST_F(DetectorTest, RankThatBeatsButNeverAdvancesIsAHang) {
  detector::MonitorOptions m;
  m.hang_floor = absl::Seconds(3);
  StartServer(m);
  setenv("SNAPBACK_DEMO_FAULTS", "1:1:hang:12", 1);
  auto launcher = Launch("hang", 2, 40, 50);
  unsetenv("SNAPBACK_DEMO_FAULTS");
  ASSERT_EQ(launcher->Wait(absl::Seconds(120)), 0) << launcher->Output();
  ExpectDoneOk(*launcher, 2, 40);
  const std::vector<v1::Incident> incidents = Incidents("hang");
  ASSERT_EQ(incidents.size(), 1u) << launcher->Output();
  EXPECT_EQ(incidents[0].kind(), "hang");
  EXPECT_EQ(incidents[0].rank(), 1);
  EXPECT_NE(incidents[0].reason().find("Heartbeats still arrive"), std::string::npos)
      << incidents[0].reason();
  // Healthy until the step stopped advancing; detected one hang limit later.
  const int64_t stalled_ms =
      incidents[0].detected_unix_ms() - incidents[0].last_healthy_unix_ms();
  EXPECT_GE(stalled_ms, 3000);
  EXPECT_LE(stalled_ms, 12000);
  ExpectConsistent(incidents[0]);
}

TEST_F(DetectorTest, DoNotRestartExitCancelsTheJob) {
  StartServer();
  setenv("SNAPBACK_DEMO_FAULTS", "1:0:exit78:8", 1);
  auto launcher = Launch("config-error", 2, 400, 20);
  unsetenv("SNAPBACK_DEMO_FAULTS");
  EXPECT_EQ(launcher->Wait(absl::Seconds(60)), 1) << "1: cancelled by the coordinator\n"
                                                  << launcher->Output();
  const v1::JobHealth h = Health("config-error");
  EXPECT_EQ(h.state(), "GAVE_UP");
  EXPECT_NE(h.reason().find("exited with code 78"), std::string::npos) << h.reason();
  const std::vector<v1::Incident> incidents = Incidents("config-error");
  ASSERT_EQ(incidents.size(), 1u);
  EXPECT_EQ(incidents[0].new_incarnation(), 0) << "never restarted";
}

TEST_F(DetectorTest, RestartLoopGuardGivesUpWithoutCommittedProgress) {
  detector::MonitorOptions m;
  m.max_restarts_without_progress = 2;
  StartServer(m);
  // Every incarnation's rank 0 dies at its 2nd step, before any save.
  setenv("SNAPBACK_DEMO_FAULTS", "1:0:train:2,2:0:train:2,3:0:train:2,4:0:train:2", 1);
  auto launcher = Launch("crashloop", 2, 400, 20);
  unsetenv("SNAPBACK_DEMO_FAULTS");
  EXPECT_EQ(launcher->Wait(absl::Seconds(60)), 1) << launcher->Output();
  const v1::JobHealth h = Health("crashloop");
  EXPECT_EQ(h.state(), "GAVE_UP");
  EXPECT_NE(h.reason().find("gave up after 2 restarts without a newly committed step"),
            std::string::npos)
      << h.reason();
  EXPECT_EQ(Incidents("crashloop").size(), 3u);
  EXPECT_EQ(h.incarnation(), 3);
}

// 20 failures at random points — killed while training, mid-save, and while
// restoring — one after the other in one job: it still ends bit-identical to
// an uninterrupted run, and every incident is logged with a consistent
// timeline.
TEST_F(DetectorTest, TwentyInjectedFailuresEndBitExactWithEveryIncidentLogged) {
  detector::MonitorOptions m;
  m.max_restarts_without_progress = 100;  // some kills land before any commit
  StartServer(m);
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu (faults are drawn from it)\n",
              static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const char* kinds[] = {"train", "save", "restore"};
  std::vector<std::string> plan;
  for (int inc = 1; inc <= 20; ++inc) {
    // Incarnation 1 restores nothing: no restore fault there.
    const std::string what = kinds[inc == 1 ? rng() % 2 : rng() % 3];
    const int64_t n = what == "train"  ? 3 + rng() % 10
                      : what == "save" ? 1 + rng() % 2
                                       : rng() % 30;  // ms into the restore
    plan.push_back(absl::StrCat(inc, ":", rng() % 2, ":", what, ":", n));
  }
  std::printf("faults: %s\n", absl::StrJoin(plan, ",").c_str());
  setenv("SNAPBACK_DEMO_FAULTS", absl::StrJoin(plan, ",").c_str(), 1);
  // Enough steps that every incarnation reaches its fault (at most 12 steps
  // or 2 saves in).
  auto launcher = Launch("twenty", 2, 300, 10, {}, 200);
  unsetenv("SNAPBACK_DEMO_FAULTS");
  ASSERT_EQ(launcher->Wait(absl::Minutes(8)), 0) << launcher->Output();
  ExpectDoneOk(*launcher, 2, 300);

  const std::vector<v1::Incident> incidents = Incidents("twenty");
  EXPECT_EQ(incidents.size(), 20u) << launcher->Output();
  std::vector<double> mttr;
  for (size_t k = 0; k < incidents.size(); ++k) {
    const v1::Incident& i = incidents[k];
    EXPECT_EQ(i.seq(), static_cast<int64_t>(k));
    EXPECT_EQ(i.kind(), "rank exit") << i.DebugString();
    EXPECT_EQ(i.incarnation(), static_cast<int64_t>(k + 1));
    ExpectConsistent(i);
    mttr.push_back((i.first_new_step_unix_ms() - i.detected_unix_ms()) / 1000.0);
  }
  std::sort(mttr.begin(), mttr.end());
  if (!mttr.empty()) {
    std::printf(
        "MTTR (detected -> first new step) over %zu incidents: p50 %.2f s, max %.2f s\n",
        mttr.size(), mttr[mttr.size() / 2], mttr.back());
  }
}

// A healthy job saving every 5 steps for two minutes: no incident.
TEST_F(DetectorTest, NoFalsePositivesInTwoMinutesOfHealthyTrainingWithSaves) {
  StartServer();
  // 100 ms steps: 1200 steps, 240 saves per rank.
  auto launcher = Launch("healthy", 2, 1200, 100);
  const int code = launcher->Wait(absl::Minutes(5));
  EXPECT_EQ(code, 0) << launcher->Output();
  ExpectDoneOk(*launcher, 2, 1200);
  const std::vector<v1::Incident> incidents = Incidents("healthy");
  EXPECT_TRUE(incidents.empty()) << incidents[0].DebugString();
  EXPECT_EQ(Health("healthy").state(), "FINISHED");
}

}  // namespace
}  // namespace snapback
