// The slurm scheduler adapter against a real, private Slurm cluster
// (testing/slurm_cluster.h): requeue, cancel and status of real batch jobs, and
// Slurm's refusals. Skips when the cluster cannot run here (not root, Slurm
// not installed); fails when it runs but misbehaves.
#include "failure-detector/slurm_adapter.h"

#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "failure-detector/command.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/slurm_cluster.h"
#include "testing/test_util.h"

namespace snapback::detector {
namespace {

using ::snapback::testing::Slurp;

using ::testing::HasSubstr;
using testing::SlurmCluster;
using testing::TempDir;
using S = SchedulerJobState;

std::vector<std::string> Lines(const std::string& path) {
  return absl::StrSplit(Slurp(path), '\n', absl::SkipEmpty());
}

// Waits until `path` has at least `n` lines, woken by inotify on its
// directory (no polling). Returns the lines it has then.
std::vector<std::string> WaitForLines(const std::string& path, size_t n,
                                      absl::Duration timeout) {
  const int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  const std::string dir = path.substr(0, path.rfind('/'));
  inotify_add_watch(fd, dir.c_str(),
                    IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO);
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<std::string> lines = Lines(path);
  while (lines.size() < n && absl::Now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now())) + 1);
    char buf[4096];
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
    lines = Lines(path);
  }
  close(fd);
  return lines;
}

// A batch script that appends its SLURM_RESTART_COUNT (0 on the first run)
// to `runs`, then waits to be requeued or cancelled.
std::string RunRecorderScript(const std::string& dir, const std::string& runs) {
  const std::string path = dir + "/job.sh";
  std::ofstream(path) << "#!/bin/sh\n"
                      << "echo \"${SLURM_RESTART_COUNT:-0}\" >> " << runs << "\n"
                      << "exec sleep 600\n";
  chmod(path.c_str(), 0755);
  return path;
}

// Asks Status() until the job has ended: left PENDING, RUNNING and
// COMPLETING (a cancelled job shows COMPLETING until slurmd reports its
// processes gone). Slurm has no notification a client could wait on, so this
// polls, 100 ms apart.
absl::StatusOr<SchedulerStatus> WaitForEnd(SlurmAdapter& slurm, const JobBinding& job,
                                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<SchedulerStatus> st = slurm.Status(job);
    if (!st.ok() || absl::Now() > deadline ||
        (st->state != S::kRunning && st->state != S::kPending)) {
      return st;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

JobBinding Binding(const std::string& slurm_id) {
  return {.job_id = "train",
          .world_size = 1,
          .scheduler = "slurm",
          .scheduler_job_id = slurm_id};
}

class SlurmAdapterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    const absl::Time t0 = absl::Now();
    absl::StatusOr<std::unique_ptr<SlurmCluster>> c = SlurmCluster::Start(dir_->path());
    if (c.ok()) {
      cluster_ = c->release();
      std::cout << "private Slurm cluster up in " << absl::Now() - t0
                << " (slurmctld port " << cluster_->slurmctld_port() << ")\n";
    } else {
      start_error_ = new absl::Status(c.status());
    }
  }
  static void TearDownTestSuite() {
    const absl::Time t0 = absl::Now();
    delete cluster_;
    if (start_error_ == nullptr)
      std::cout << "cluster stopped in " << absl::Now() - t0 << "\n";
    delete dir_;
    delete start_error_;
    cluster_ = nullptr;
    dir_ = nullptr;
    start_error_ = nullptr;
  }
  void SetUp() override {
    if (cluster_ != nullptr) return;
    // Only "cannot run here" is a skip; a cluster that starts and misbehaves
    // is a failure.
    if (absl::IsFailedPrecondition(*start_error_)) {
      GTEST_SKIP() << "no private Slurm cluster here: " << *start_error_;
    }
    FAIL() << "the private Slurm cluster did not start: " << *start_error_;
  }

  static SlurmAdapter Adapter() {
    SlurmAdapterOptions o;
    o.env = cluster_->env();
    return SlurmAdapter(o);
  }

  static TempDir* dir_;
  static SlurmCluster* cluster_;
  static absl::Status* start_error_;
};

TempDir* SlurmAdapterTest::dir_ = nullptr;
SlurmCluster* SlurmAdapterTest::cluster_ = nullptr;
absl::Status* SlurmAdapterTest::start_error_ = nullptr;

TEST_F(SlurmAdapterTest, RestartRequeuesTheJobAndCancelStopsIt) {
  TempDir work;
  const std::string runs = work.path() + "/runs";
  auto id = cluster_->Sbatch(RunRecorderScript(work.path(), runs));
  ASSERT_TRUE(id.ok()) << id.status();
  SlurmAdapter slurm = Adapter();
  EXPECT_EQ(slurm.name(), "slurm");
  const JobBinding job = Binding(*id);

  ASSERT_EQ(WaitForLines(runs, 1, absl::Seconds(60)), std::vector<std::string>{"0"})
      << cluster_->LogTail();
  auto st = slurm.Status(job);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->state, S::kRunning) << st->detail;
  EXPECT_THAT(st->detail, HasSubstr("JobState=RUNNING"));
  EXPECT_THAT(st->detail, HasSubstr("Restarts=0"));

  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(slurm.Restart(job, 2, "rank 0 died").ok());
  // A second order while the first is under way (a retry after a timeout)
  // is harmless: the job is already on its way back.
  absl::Status again = slurm.Restart(job, 2, "rank 0 died");
  EXPECT_TRUE(again.ok()) << again;
  st = slurm.Status(job);
  ASSERT_TRUE(st.ok()) << st.status();
  std::cout << "right after the requeue: " << SchedulerJobStateName(st->state) << " ("
            << st->detail << ")\n";

  const std::vector<std::string> lines = WaitForLines(runs, 2, absl::Seconds(120));
  const absl::Duration took = absl::Now() - t0;
  ASSERT_EQ(lines, (std::vector<std::string>{"0", "1"})) << cluster_->LogTail();
  std::cout << "scontrol requeue -> batch script running again (SLURM_RESTART_COUNT=1): "
            << took << "\n";
  st = slurm.Status(job);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->state, S::kRunning) << st->detail;
  EXPECT_THAT(st->detail, HasSubstr("Restarts=1"));

  ASSERT_TRUE(slurm.Cancel(job, "operator gave up").ok());
  st = WaitForEnd(slurm, job, absl::Seconds(60));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->state, S::kCancelled) << st->detail;
  EXPECT_THAT(st->detail, HasSubstr("JobState=CANCELLED"));
  // Cancelling what is already cancelled is fine.
  EXPECT_TRUE(slurm.Cancel(job, "again").ok());
}

TEST_F(SlurmAdapterTest, EndedJobsReportFinishedOrFailed) {
  TempDir work;
  SlurmAdapter slurm = Adapter();
  std::vector<std::pair<std::string, S>> jobs;
  for (const auto& [code, want] :
       {std::pair{0, S::kFinished}, std::pair{3, S::kFailed}}) {
    const std::string script = absl::StrCat(work.path(), "/exit", code, ".sh");
    std::ofstream(script) << "#!/bin/sh\nexit " << code << "\n";
    chmod(script.c_str(), 0755);
    auto id = cluster_->Sbatch(script);
    ASSERT_TRUE(id.ok()) << id.status();
    jobs.emplace_back(*id, want);
  }
  for (const auto& [id, want] : jobs) {
    auto st = WaitForEnd(slurm, Binding(id), absl::Seconds(60));
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->state, want) << st->detail;
  }
}

TEST_F(SlurmAdapterTest, SlurmsRefusalsAreFailedPreconditionInItsOwnWords) {
  TempDir work;
  const std::string runs = work.path() + "/runs";
  auto id = cluster_->Sbatch(RunRecorderScript(work.path(), runs), {"--no-requeue"});
  ASSERT_TRUE(id.ok()) << id.status();
  SlurmAdapter slurm = Adapter();
  ASSERT_EQ(WaitForLines(runs, 1, absl::Seconds(60)).size(), 1u) << cluster_->LogTail();

  absl::Status s = slurm.Restart(Binding(*id), 2, "r");
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("Requested operation is presently disabled"));
  EXPECT_THAT(s.message(), HasSubstr("sbatch --requeue"));
  std::cout << "job without --requeue: " << s << "\n";

  s = slurm.Restart(Binding("999999"), 2, "r");
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("Invalid job id specified"));
  std::cout << "unknown job: " << s << "\n";

  auto st = slurm.Status(Binding("999999"));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->state, S::kUnknown);
  EXPECT_THAT(st->detail, HasSubstr("Invalid job id specified"));

  ASSERT_TRUE(slurm.Cancel(Binding(*id), "done").ok());
}

TEST_F(SlurmAdapterTest, UnreachableSlurmIsUnavailable) {
  TempDir work;
  // The same cluster with slurmctld's port pointing where nothing listens;
  // MessageTimeout=1 so that scontrol gives up fast.
  std::string conf;
  for (const std::string& line : Lines(cluster_->conf_path())) {
    if (line.rfind("SlurmctldPort=", 0) == 0) {
      conf += "SlurmctldPort=1\nMessageTimeout=1\n";
    } else {
      conf += line + "\n";
    }
  }
  const std::string dead_conf = work.path() + "/dead.conf";
  std::ofstream(dead_conf) << conf;
  SlurmAdapterOptions o;
  o.env = {{"SLURM_CONF", dead_conf}};
  SlurmAdapter down(o);
  const JobBinding job = Binding("1");
  absl::Status s = down.Restart(job, 2, "r");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("could not reach slurmctld"));
  s = down.Cancel(job, "r");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  auto st = down.Status(job);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kUnavailable) << st.status();
  EXPECT_THAT(st.status().message(), HasSubstr("Unable to contact slurm controller"));
}

TEST(SlurmAdapter, MissingCommandsAreUnavailable) {
  SlurmAdapterOptions o;
  o.scontrol = "/nonexistent/scontrol";
  o.scancel = "snapback-no-such-scancel";
  SlurmAdapter slurm(o);
  absl::Status s = slurm.Restart(Binding("12"), 2, "r");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/scontrol"));
  s = slurm.Cancel(Binding("12"), "r");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("snapback-no-such-scancel"));
  EXPECT_EQ(slurm.Status(Binding("12")).status().code(), absl::StatusCode::kUnavailable);
}

TEST(SlurmAdapter, AJobIdThatIsNotSlurmsIsInvalidArgument) {
  // Refused before any command runs: the commands do not exist here.
  SlurmAdapterOptions o;
  o.scontrol = o.scancel = "/nonexistent";
  SlurmAdapter slurm(o);
  for (const std::string bad :
       {"", "abc", "-1", "12;id", "1 2", "12,13", "12_", "_3", "12_3_4", "--help"}) {
    EXPECT_EQ(slurm.Restart(Binding(bad), 1, "r").code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
    EXPECT_EQ(slurm.Cancel(Binding(bad), "r").code(), absl::StatusCode::kInvalidArgument)
        << bad;
    auto st = slurm.Status(Binding(bad));
    EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // Plain and array-task ids get through to the (missing) command.
  EXPECT_EQ(slurm.Status(Binding("12")).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(slurm.Status(Binding("12_3")).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(SlurmAdapter, ParsesScontrolShowJob) {
  // Captured from Slurm 22.05.8 (trimmed after Restarts=).
  const std::string line =
      "JobId=1 JobName=job sh UserId=root(0) GroupId=root(0) MCS_label=N/A "
      "Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=REQUEUE_HOLD "
      "Reason=JobHeldAdmin Dependency=(null) Requeue=1 Restarts=2 BatchFlag=1\n";
  SchedulerStatus st = SlurmAdapter::ParseShowJob(line);
  EXPECT_EQ(st.state, S::kPending);
  EXPECT_EQ(st.detail, "JobState=REQUEUE_HOLD Reason=JobHeldAdmin Restarts=2");

  // A job name that imitates a JobState does not fool it.
  st = SlurmAdapter::ParseShowJob(
      "JobId=2 JobName=x JobState=COMPLETED UserId=root(0) JobState=RUNNING "
      "Reason=None Dependency=(null) Requeue=1 Restarts=0");
  EXPECT_EQ(st.state, S::kRunning);

  st = SlurmAdapter::ParseShowJob("No jobs in the system\n");
  EXPECT_EQ(st.state, S::kUnknown);
  EXPECT_THAT(st.detail, HasSubstr("No jobs in the system"));

  for (const char* s : {"PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"}) {
    EXPECT_EQ(SlurmAdapter::StateFromSlurm(s), S::kPending) << s;
  }
  for (const char* s : {"RUNNING", "COMPLETING"}) {
    EXPECT_EQ(SlurmAdapter::StateFromSlurm(s), S::kRunning) << s;
  }
  EXPECT_EQ(SlurmAdapter::StateFromSlurm("COMPLETED"), S::kFinished);
  for (const char* s : {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}) {
    EXPECT_EQ(SlurmAdapter::StateFromSlurm(s), S::kFailed) << s;
  }
  EXPECT_EQ(SlurmAdapter::StateFromSlurm("CANCELLED"), S::kCancelled);
  EXPECT_EQ(SlurmAdapter::StateFromSlurm("SOMETHING_NEW"), S::kUnknown);
}

}  // namespace
}  // namespace snapback::detector
