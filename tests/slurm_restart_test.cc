// The failure detector with the slurm scheduler, end to end against a real,
// private Slurm cluster (testing/slurm_cluster.h): a 2-rank snapback-demo-job
// submitted with `sbatch --requeue` loses a rank to SIGKILL; the detector
// raises the job's incarnation and requeues the batch job with `scontrol
// requeue`; the requeued ranks learn the new incarnation from the
// coordinator (nothing in their environment says it), restore the latest
// committed step and finish bit-identical to an uninterrupted run; the old
// incarnation is fenced. Skips only when Slurm cannot run here.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "failure-detector/slurm_adapter.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "snapback/client.h"
#include "testing/job_harness.h"
#include "testing/server_fixture.h"
#include "testing/slurm_cluster.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using ::snapback::testing::Slurp;

TEST(SlurmRestartTest,
     RequeuedJobResumesFromTheLatestCommittedStepAndTheOldIncarnationIsFenced) {
  // A short path: munge's socket lives under it.
  char tmpl[] = "/tmp/sbslurmXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  chmod(dir.c_str(), 0711);  // munged wants every directory above its socket searchable
  std::filesystem::create_directories(dir + "/slurm");
  auto cluster = testing::SlurmCluster::Start(dir + "/slurm");
  if (absl::IsFailedPrecondition(cluster.status())) {
    GTEST_SKIP() << "Slurm cannot run here: " << cluster.status().message();
  }
  ASSERT_TRUE(cluster.ok()) << cluster.status();

  server::ServerOptions o = testing::EmbeddedServerOptions(dir + "/node");
  detector::SlurmAdapterOptions so;
  so.env = (*cluster)->env();
  auto slurm = std::make_shared<detector::SlurmAdapter>(so);
  o.scheduler_adapters.push_back(slurm);
  auto server = server::Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();

  // The batch script: two ranks of the demo job, as the job's one task.
  const std::string out = dir + "/job.out";
  const std::string script = dir + "/job.sh";
  const std::string demo = testing::Subprocess::BinPath("snapback-demo-job");
  std::ofstream(script) << "#!/bin/sh\n"
                        << "pids=\n"
                        << "for r in 0 1; do\n"
                        << "  SNAPBACK_RANK=$r " << demo
                        << " --steps 60 --save-every 5 --mib 1 --step-ms 50 &\n"
                        << "  pids=\"$pids $!\"\n"
                        << "done\n"
                        << "rc=0\n"
                        << "for p in $pids; do wait $p || rc=1; done\n"
                        << "echo \"batch run ${SLURM_RESTART_COUNT:-0} exit $rc\"\n"
                        << "exit $rc\n";
  chmod(script.c_str(), 0755);
  // Exported to the job by sbatch (--export=ALL). No SNAPBACK_INCARNATION:
  // the ranks take the coordinator's. Incarnation 1's rank 1 dies at step 15.
  setenv("SNAPBACK_ENDPOINT", (*server)->address().c_str(), 1);
  setenv("SNAPBACK_JOB", "slurm-job", 1);
  setenv("SNAPBACK_WORLD_SIZE", "2", 1);
  unsetenv("SNAPBACK_INCARNATION");
  setenv("SNAPBACK_DEMO_FAULTS", "1:1:train:15", 1);
  absl::StatusOr<std::string> id = (*cluster)->Sbatch(
      script,
      {"--open-mode=append", absl::StrCat("--output=", out), "--job-name=snapback"});
  unsetenv("SNAPBACK_DEMO_FAULTS");
  ASSERT_TRUE(id.ok()) << id.status();
  const absl::Time submitted = absl::Now();

  // Wait for the job to end (Slurm has nothing to wait on: ask its state).
  const detector::JobBinding binding{.job_id = "slurm-job",
                                     .world_size = 2,
                                     .scheduler = "slurm",
                                     .scheduler_job_id = *id};
  detector::SchedulerJobState state = detector::SchedulerJobState::kUnknown;
  const absl::Time deadline = absl::Now() + absl::Seconds(180);
  while (absl::Now() < deadline) {
    absl::StatusOr<detector::SchedulerStatus> st = slurm->Status(binding);
    ASSERT_TRUE(st.ok()) << st.status();
    state = st->state;
    if (state == detector::SchedulerJobState::kFinished ||
        state == detector::SchedulerJobState::kFailed ||
        state == detector::SchedulerJobState::kCancelled) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  const std::string output = Slurp(out);
  ASSERT_EQ(state, detector::SchedulerJobState::kFinished) << output << "\n"
                                                           << (*cluster)->LogTail(20);
  std::printf("job %s finished %.1f s after submission\n", id->c_str(),
              absl::ToDoubleSeconds(absl::Now() - submitted));

  // The first run died, the requeued run (restart count 1) finished.
  // Slurm ended the first run (rank 0 still training) for the requeue.
  EXPECT_TRUE(absl::StrContains(output, "DUE TO JOB REQUEUE")) << output;
  EXPECT_FALSE(absl::StrContains(output, "batch run 0 exit 0")) << output;
  EXPECT_TRUE(absl::StrContains(output, "batch run 1 exit 0")) << output;
  int done_ok = 0, restored_ok = 0;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    done_ok += line == "done 60 ok";
    if (absl::StartsWith(line, "restored ")) {
      EXPECT_TRUE(absl::StrContains(line, " ok ")) << line;
      ++restored_ok;
    }
  }
  EXPECT_EQ(done_ok, 2) << output;
  EXPECT_EQ(restored_ok, 2) << "both requeued ranks resumed from a checkpoint\n"
                            << output;

  auto incidents = (*server)->TEST_coordinator_store()->ListIncidents("slurm-job");
  ASSERT_TRUE(incidents.ok()) << incidents.status();
  ASSERT_EQ(incidents->size(), 1u) << output;
  const v1::Incident& i = (*incidents)[0];
  EXPECT_EQ(i.kind(), "rank exit");
  EXPECT_EQ(i.rank(), 1);
  EXPECT_EQ(i.incarnation(), 1);
  EXPECT_EQ(i.new_incarnation(), 2);
  EXPECT_TRUE(i.scheduler_error().empty()) << i.scheduler_error();
  EXPECT_LE(i.detected_unix_ms(), i.restart_requested_unix_ms());
  EXPECT_LE(i.restart_requested_unix_ms(), i.ranks_back_unix_ms());
  EXPECT_LE(i.ranks_back_unix_ms(), i.restored_unix_ms());
  EXPECT_LE(i.restored_unix_ms(), i.first_new_step_unix_ms());
  EXPECT_GE(i.restored_step(), 5);
  std::printf("slurm: MTTD %.2f s, requeue ordered -> ranks back %.2f s, MTTR %.2f s\n",
              (i.detected_unix_ms() - i.last_healthy_unix_ms()) / 1000.0,
              (i.ranks_back_unix_ms() - i.restart_requested_unix_ms()) / 1000.0,
              (i.first_new_step_unix_ms() - i.detected_unix_ms()) / 1000.0);
  auto job = (*server)->TEST_coordinator_store()->DescribeJob("slurm-job");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->scheduler(), "slurm");
  EXPECT_EQ(job->scheduler_job_id(), *id);
  EXPECT_EQ(job->incarnation(), 2);

  // A rank of incarnation 1 still alive somewhere cannot save any more.
  const absl::Status s =
      testing::SaveAsIncarnation((*server)->address(), "slurm-job", 2, 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("stale incarnation"), std::string::npos) << s;
  (*server)->Shutdown();
  (*cluster)->Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace snapback
