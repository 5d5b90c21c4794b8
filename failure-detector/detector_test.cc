// The detector runtime on a FakeClock, with an in-memory job directory and a
// recording scheduler adapter: fencing before the restart order, the
// incident log, retries of a refused order, jobs without a scheduler, the
// "do not restart" exit, zombies. The real thing (gRPC, processes, Slurm) is
// tests/detector_test.cc and tests/slurm_restart_test.cc.
#include "failure-detector/detector.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace snapback::detector {
namespace {

class MemoryDirectory : public JobDirectory {
 public:
  absl::StatusOr<v1::JobInfo> DescribeJob(const std::string& id) override {
    auto it = jobs.find(id);
    if (it == jobs.end()) return absl::NotFoundError(absl::StrCat("no job ", id));
    return it->second;
  }
  absl::StatusOr<v1::JobInfo> AdvanceIncarnation(const std::string& id,
                                                 int64_t at_least) override {
    auto it = jobs.find(id);
    if (it == jobs.end()) return absl::NotFoundError(id);
    it->second.set_incarnation(std::max(it->second.incarnation() + 1, at_least));
    events.push_back(absl::StrCat("advance ", it->second.incarnation()));
    return it->second;
  }
  absl::Status PutIncident(const v1::Incident& i) override {
    incidents[i.job_id()][i.seq()] = i;
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<v1::Incident>> ListIncidents(
      const std::string& id) override {
    std::vector<v1::Incident> out;
    for (const auto& [seq, i] : incidents[id]) out.push_back(i);
    return out;
  }
  absl::Status PutJobRun(const v1::JobRun& r) override {
    runs[r.job_id()][r.run()] = r;
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<v1::JobRun>> ListJobRuns(const std::string& id) override {
    std::vector<v1::JobRun> out;
    for (const auto& [n, r] : runs[id]) out.push_back(r);
    return out;
  }

  void AddJob(const std::string& id, int world, const std::string& scheduler) {
    v1::JobInfo j;
    j.set_job_id(id);
    j.set_world_size(world);
    j.set_incarnation(1);
    j.set_latest_committed(-1);
    j.set_restore_target(-1);
    j.set_scheduler(scheduler);
    j.set_scheduler_job_id("42");
    jobs[id] = j;
  }

  std::map<std::string, v1::JobInfo> jobs;
  std::map<std::string, std::map<int64_t, v1::Incident>> incidents;
  std::map<std::string, std::map<int64_t, v1::JobRun>> runs;
  std::vector<std::string> events;  // shared with the adapter: the order of calls
};

class RecordingAdapter : public SchedulerAdapter {
 public:
  explicit RecordingAdapter(std::vector<std::string>* events) : events_(events) {}
  std::string name() const override { return "fake"; }
  absl::Status Restart(const JobBinding& job, int64_t incarnation,
                       absl::string_view) override {
    events_->push_back(absl::StrCat("restart ", job.job_id, " ", incarnation));
    return refuse ? absl::UnavailableError("scheduler down") : absl::OkStatus();
  }
  absl::Status Cancel(const JobBinding& job, absl::string_view) override {
    events_->push_back(absl::StrCat("cancel ", job.job_id));
    return absl::OkStatus();
  }
  absl::StatusOr<SchedulerStatus> Status(const JobBinding&) override {
    return SchedulerStatus{};
  }
  bool refuse = false;

 private:
  std::vector<std::string>* events_;
};

// What a launcher reports when a rank's process exits.
v1::RankExited Exit(int64_t incarnation, int rank, v1::ExitClass cls,
                    const std::string& description = "") {
  v1::RankExited e;
  e.set_incarnation(incarnation);
  e.set_rank(rank);
  e.set_exit_class(cls);
  e.set_description(description);
  return e;
}

class DetectorUnitTest : public ::testing::Test {
 protected:
  DetectorUnitTest() {
    dir_.AddJob("j", 2, "fake");
    options_.run_thread = false;
    adapter_ = std::make_shared<RecordingAdapter>(&dir_.events);
  }
  std::unique_ptr<Detector> Make() {
    auto d = std::make_unique<Detector>(options_, &clock_, &dir_);
    d->AddAdapter(adapter_);
    return d;
  }
  void BeatAll(Detector& d, int64_t inc, int64_t step, Phase phase = Phase::kTraining) {
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(d.OnHeartbeat(
                       "j", {.rank = r, .incarnation = inc, .step = step, .phase = phase})
                      .ok());
    }
    clock_.Advance(absl::Seconds(1));
  }

  FakeClock clock_;
  MemoryDirectory dir_;
  DetectorOptions options_;
  std::shared_ptr<RecordingAdapter> adapter_;
};

TEST_F(DetectorUnitTest, CrashFencesFirstThenRestartsAndLogsTheWholeTimeline) {
  auto d = Make();
  for (int s = 1; s <= 5; ++s) BeatAll(*d, 1, s);
  d->OnStreamEnded("j", 1, 1, /*done=*/false);
  d->TEST_Evaluate();
  EXPECT_TRUE(dir_.events.empty()) << "the launcher gets a grace to report the exit code";
  clock_.Advance(absl::Milliseconds(250));
  d->TEST_Evaluate();
  ASSERT_EQ(dir_.events, (std::vector<std::string>{"advance 2", "restart j 2"}));
  EXPECT_EQ(d->Health("j")->state(), "RESTARTING");

  // A zombie of incarnation 1 is told it is fenced.
  absl::Status zombie = d->OnHeartbeat("j", {.rank = 0, .incarnation = 1, .step = 6});
  EXPECT_TRUE(absl::IsFailedPrecondition(zombie)) << zombie;

  BeatAll(*d, 2, -1, Phase::kRestoring);
  BeatAll(*d, 2, 5);
  BeatAll(*d, 2, 6);
  EXPECT_EQ(d->Health("j")->state(), "RUNNING");
  const std::vector<v1::Incident> log = *d->Incidents("j");
  ASSERT_EQ(log.size(), 1u);
  const v1::Incident& i = log[0];
  EXPECT_EQ(i.kind(), "rank exit");
  EXPECT_EQ(i.new_incarnation(), 2);
  EXPECT_EQ(i.restored_step(), 5);
  EXPECT_EQ(i.last_step(), 5);
  EXPECT_LE(i.detected_unix_ms() - i.last_healthy_unix_ms(), 250);
  EXPECT_GT(i.first_new_step_unix_ms(), i.restored_unix_ms());

  // A new detector (a coordinator restart) continues the numbering.
  auto again = Make();
  for (int s = 7; s <= 9; ++s) BeatAll(*again, 2, s);
  again->OnRankExited("j", Exit(2, 0, v1::EXIT_RESTART, "rank 0 killed by SIGKILL"));
  again->TEST_Evaluate();
  const std::vector<v1::Incident> log2 = *again->Incidents("j");
  ASSERT_EQ(log2.size(), 2u);
  EXPECT_EQ(log2[1].seq(), 1);
  EXPECT_EQ(log2[1].reason(), "rank 0 killed by SIGKILL");
}

TEST_F(DetectorUnitTest, ANewJobsFirstRunIsFencedEvenBeforeItsFirstCheckpointCall) {
  // Registered at incarnation 0; its ranks run as 1 (the client's default)
  // and die before any checkpoint call recorded it.
  dir_.AddJob("fresh", 2, "fake");
  dir_.jobs["fresh"].set_incarnation(0);
  auto d = Make();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(d->OnHeartbeat("fresh", {.rank = r, .incarnation = 1, .step = 0}).ok());
  }
  d->OnStreamEnded("fresh", 0, 1, false);
  clock_.Advance(absl::Milliseconds(300));
  d->TEST_Evaluate();
  EXPECT_EQ(dir_.events, (std::vector<std::string>{"advance 2", "restart fresh 2"}));
  EXPECT_EQ(d->Health("fresh")->state(), "RESTARTING");
}

TEST_F(DetectorUnitTest, RefusedRestartIsNotedAndRetriedWithoutAdvancingAgain) {
  auto d = Make();
  BeatAll(*d, 1, 1);
  adapter_->refuse = true;
  d->OnRankExited("j", Exit(1, 0, v1::EXIT_RESTART, "rank 0 exited with code 1"));
  d->TEST_Evaluate();
  EXPECT_EQ(dir_.events, (std::vector<std::string>{"advance 2", "restart j 2"}));
  EXPECT_EQ((*d->Incidents("j"))[0].scheduler_error(), "scheduler down");
  clock_.Advance(absl::Seconds(2));
  d->TEST_Evaluate();
  EXPECT_EQ(dir_.events.size(), 2u) << "not before restart_retry";
  adapter_->refuse = false;
  clock_.Advance(absl::Seconds(3));
  d->TEST_Evaluate();
  EXPECT_EQ(dir_.events,
            (std::vector<std::string>{"advance 2", "restart j 2", "restart j 2"}));
}

TEST_F(DetectorUnitTest, JobWithoutSchedulerIsLoggedButNeitherFencedNorRestarted) {
  dir_.AddJob("manual", 2, "");
  auto d = Make();
  ASSERT_TRUE(d->OnHeartbeat("manual", {.rank = 0, .incarnation = 1, .step = 1}).ok());
  d->OnStreamEnded("manual", 0, 1, false);
  clock_.Advance(absl::Milliseconds(300));
  d->TEST_Evaluate();
  EXPECT_TRUE(dir_.events.empty());
  EXPECT_EQ(dir_.jobs["manual"].incarnation(), 1);
  const std::vector<v1::Incident> log = *d->Incidents("manual");
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].scheduler_error().find("no scheduler binding"), std::string::npos)
      << log[0].scheduler_error();
  absl::Status s = d->RequestRestart("manual", "operator");
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
}

TEST_F(DetectorUnitTest, DoNotRestartExitCancelsAndFinishedRanksAreNotFailures) {
  auto d = Make();
  BeatAll(*d, 1, 1);
  d->OnStreamEnded("j", 1, 1, false);               // exit 0 without a goodbye...
  d->OnRankExited("j", Exit(1, 1, v1::EXIT_DONE));  // ...reported within the grace
  d->OnRankExited("j", Exit(1, 0, v1::EXIT_NO_RESTART, "rank 0 exited with code 78"));
  clock_.Advance(absl::Seconds(1));
  d->TEST_Evaluate();
  EXPECT_EQ(dir_.events, (std::vector<std::string>{"cancel j"}));
  const v1::JobHealth h = *d->Health("j");
  EXPECT_EQ(h.state(), "GAVE_UP");
  EXPECT_EQ(h.ranks(1).phase(), v1::DONE);
  EXPECT_TRUE(absl::IsFailedPrecondition(d->RequestRestart("j", "")));
  EXPECT_TRUE(absl::IsNotFound(d->Health("nope").status()));
}

TEST_F(DetectorUnitTest, RunsAreLoggedFromFirstBeatToTheEndAndAResubmissionIsANewRun) {
  auto d = Make();
  const int64_t t0 = absl::ToUnixMillis(clock_.Now());
  BeatAll(*d, 1, -1);  // both ranks up, no step yet (startup)
  BeatAll(*d, 1, 1);
  BeatAll(*d, 1, 2);
  for (int r = 0; r < 2; ++r) d->OnRankExited("j", Exit(1, r, v1::EXIT_DONE));
  ASSERT_EQ(d->Health("j")->state(), "FINISHED");
  ASSERT_EQ(dir_.runs["j"].size(), 1u);
  const v1::JobRun first = dir_.runs["j"][0];
  EXPECT_EQ(first.started_unix_ms(), t0);
  EXPECT_EQ(first.first_step_unix_ms(), t0 + 1000);
  EXPECT_EQ(first.first_step(), 1);
  EXPECT_EQ(first.ended_unix_ms(), t0 + 3000);
  EXPECT_EQ(first.end_state(), "FINISHED");

  // The same job id beats again: a second run, numbered on after a
  // coordinator restart too.
  auto again = Make();
  clock_.Advance(absl::Seconds(10));
  BeatAll(*again, 1, 3);
  ASSERT_EQ(dir_.runs["j"].size(), 2u);
  EXPECT_EQ(dir_.runs["j"][1].run(), 1);
  EXPECT_EQ(dir_.runs["j"][1].started_unix_ms(), t0 + 13000);
  EXPECT_EQ(dir_.runs["j"][1].ended_unix_ms(), 0);
  EXPECT_EQ(dir_.runs["j"][0].SerializeAsString(), first.SerializeAsString());
}

}  // namespace
}  // namespace snapback::detector
