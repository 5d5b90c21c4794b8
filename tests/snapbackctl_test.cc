// snapbackctl as an operator runs it: the real binary against a real
// snapback-server on loopback (embedded, and a storage cluster), its
// output, its JSON and its exit codes (docs/operators.md).
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "snapback/client.h"
#include "testing/job_harness.h"
#include "testing/storage_cluster.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using testing::StorageCluster;
using testing::StorageClusterOptions;
using testing::Subprocess;
using testing::TempDir;

struct CtlRun {
  int code = -1;
  std::string out;
};

// Runs snapbackctl with `args` against `endpoint`; stdout and the exit code.
CtlRun Ctl(const std::string& endpoint, std::vector<std::string> args) {
  std::vector<std::string> argv = {Subprocess::BinPath("snapbackctl"),
                                   "--endpoint=" + endpoint, "--timeout=10s"};
  argv.insert(argv.end(), args.begin(), args.end());
  Subprocess p(argv);
  CtlRun r;
  while (auto line = p.ReadLine(absl::Seconds(30))) r.out += *line + "\n";
  r.code = p.Wait(absl::Seconds(30));
  return r;
}

// An embedded snapback-server process and a job "ops" of 2 ranks with
// committed steps 1..3.
class SnapbackctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<Subprocess>(std::vector<std::string>{
        Subprocess::BinPath("snapback-server"), "--data-dir=" + dir_.path() + "/server",
        "--listen=127.0.0.1:0", "--gc-interval=0s", "--gc-grace=0s"});
    auto line = server_->WaitForLine("snapback-server listening on", absl::Seconds(60));
    ASSERT_TRUE(line.has_value());
    const std::string key = "listening on ";
    const std::string rest = line->substr(line->find(key) + key.size());
    endpoint_ = rest.substr(0, rest.find(' '));
    ClientOptions co;
    co.endpoint = endpoint_;
    auto client = Client::Connect(co);
    ASSERT_TRUE(client.ok());
    std::vector<std::unique_ptr<Checkpointer>> ranks;
    for (int r = 0; r < 2; ++r) {
      CheckpointerOptions o;
      o.job_id = "ops";
      o.rank = r;
      o.world_size = 2;
      o.incarnation = 1;
      o.heartbeat_interval = absl::ZeroDuration();
      auto ck = (*client)->NewCheckpointer(o);
      ASSERT_TRUE(ck.ok()) << ck.status();
      ranks.push_back(*std::move(ck));
    }
    for (int64_t step = 1; step <= 3; ++step) {
      for (int r = 0; r < 2; ++r) {
        const std::string bytes = testing::MakeBytes(1 << 16, step * 10 + r);
        TensorView t;
        t.name = "layer.weight";
        t.dtype = DType::kFloat32;
        t.shape = {128, 128};
        t.data = bytes.data();
        auto h = ranks[r]->Save(step, {t});
        ASSERT_TRUE(h.ok());
        ASSERT_TRUE(h->Wait().ok());
      }
    }
    for (auto& r : ranks) ASSERT_TRUE(r->Close().ok());
  }

  TempDir dir_;
  std::unique_ptr<Subprocess> server_;
  std::string endpoint_;
};

TEST_F(SnapbackctlTest, ListsJobsCheckpointsAndShowsOne) {
  CtlRun jobs = Ctl(endpoint_, {"jobs"});
  EXPECT_EQ(jobs.code, 0);
  EXPECT_TRUE(absl::StrContains(jobs.out, "ops")) << jobs.out;

  CtlRun ckpts = Ctl(endpoint_, {"checkpoints", "ops"});
  EXPECT_EQ(ckpts.code, 0);
  int committed = 0;
  for (absl::string_view l : absl::StrSplit(ckpts.out, '\n')) {
    committed += absl::StrContains(l, "COMMITTED") ? 1 : 0;
  }
  EXPECT_EQ(committed, 3) << ckpts.out;

  CtlRun json = Ctl(endpoint_, {"--json", "checkpoints", "ops"});
  EXPECT_EQ(json.code, 0);
  EXPECT_TRUE(absl::StrContains(json.out, "\"step\": \"3\"")) << json.out;
  EXPECT_TRUE(absl::StrContains(json.out, "\"state\": \"COMMITTED\"")) << json.out;

  CtlRun show = Ctl(endpoint_, {"show", "ops", "2"});
  EXPECT_EQ(show.code, 0);
  EXPECT_TRUE(absl::StrContains(show.out, "2 rank(s)")) << show.out;
  EXPECT_TRUE(absl::StrContains(show.out, "layer.weight")) << show.out;
  EXPECT_TRUE(absl::StrContains(show.out, "[128,128]")) << show.out;
}

TEST_F(SnapbackctlTest, PinDeleteAndGcWithTheirRefusals) {
  EXPECT_EQ(Ctl(endpoint_, {"pin", "ops", "1"}).code, 0);
  // Refused: a pinned checkpoint, the latest one, and no reason.
  EXPECT_EQ(Ctl(endpoint_, {"delete", "ops", "1", "--reason=cleanup"}).code, 1);
  EXPECT_EQ(Ctl(endpoint_, {"delete", "ops", "3", "--reason=cleanup"}).code, 1);
  EXPECT_EQ(Ctl(endpoint_, {"delete", "ops", "2"}).code, 2);
  CtlRun still = Ctl(endpoint_, {"checkpoints", "ops"});
  EXPECT_TRUE(absl::StrContains(still.out, "yes")) << "pin not shown: " << still.out;

  EXPECT_EQ(Ctl(endpoint_, {"delete", "ops", "2", "--reason=cleanup"}).code, 0);
  EXPECT_EQ(Ctl(endpoint_, {"delete", "ops", "1", "--reason=cleanup", "--force"}).code,
            0);
  CtlRun left = Ctl(endpoint_, {"--json", "checkpoints", "ops"});
  EXPECT_FALSE(absl::StrContains(left.out, "\"step\": \"1\"")) << left.out;
  EXPECT_FALSE(absl::StrContains(left.out, "\"step\": \"2\"")) << left.out;
  EXPECT_TRUE(absl::StrContains(left.out, "\"step\": \"3\"")) << left.out;

  CtlRun gc = Ctl(endpoint_, {"--json", "gc"});
  EXPECT_EQ(gc.code, 0);
  EXPECT_TRUE(absl::StrContains(gc.out, "chunks_deleted")) << gc.out;
  EXPECT_FALSE(absl::StrContains(gc.out, "\"chunks_deleted\": \"0\"")) << gc.out;

  // Every action is in the audit log, refused ones with their error.
  CtlRun audit = Ctl(endpoint_, {"--json", "audit"});
  EXPECT_EQ(audit.code, 0);
  auto count = [&](const std::string& needle) {
    int n = 0;
    for (size_t at = 0; (at = audit.out.find(needle, at)) != std::string::npos; ++at) ++n;
    return n;
  };
  EXPECT_EQ(count("\"action\": \"pin\""), 1) << audit.out;
  EXPECT_EQ(count("\"action\": \"delete\""), 3) << audit.out;  // 1 refused, 2 done
  EXPECT_EQ(count("\"action\": \"gc\""), 1) << audit.out;
  EXPECT_EQ(count("\"reason\": \"cleanup\""), 3) << audit.out;
  EXPECT_TRUE(absl::StrContains(audit.out, "FAILED_PRECONDITION")) << audit.out;
  EXPECT_TRUE(absl::StrContains(audit.out, "\"who\": \"ipv4:127.0.0.1:")) << audit.out;
  CtlRun table = Ctl(endpoint_, {"audit"});
  EXPECT_EQ(table.code, 0);
  EXPECT_TRUE(absl::StrContains(table.out, "OUTCOME")) << table.out;
}

TEST_F(SnapbackctlTest, BadInputIsOneLineAndADocumentedExitCode) {
  EXPECT_EQ(Ctl(endpoint_, {"checkpoints", "no-such-job"}).code, 4);
  EXPECT_EQ(Ctl(endpoint_, {"show", "ops", "99"}).code, 4);
  EXPECT_EQ(Ctl(endpoint_, {"show", "ops", "minus-one"}).code, 2);
  EXPECT_EQ(Ctl(endpoint_, {"frobnicate"}).code, 2);
  EXPECT_EQ(Ctl(endpoint_, {}).code, 2);
  EXPECT_EQ(Ctl(endpoint_, {"--no-such-flag", "jobs"}).code, 2);
  EXPECT_EQ(Ctl("127.0.0.1:1", {"jobs"}).code, 3);
  // A forced restore of a job with no scheduler is refused, and leaves no
  // restore target behind.
  EXPECT_EQ(Ctl(endpoint_, {"restore", "ops", "--step=2"}).code, 2);  // no --reason
  EXPECT_EQ(Ctl(endpoint_, {"restore", "ops", "--step=2", "--reason=test"}).code, 1);
  CtlRun jobs = Ctl(endpoint_, {"--json", "jobs"});
  EXPECT_TRUE(absl::StrContains(jobs.out, "\"restore_target\": \"-1\"")) << jobs.out;
  // No storage cluster behind an embedded server: said, not an error.
  CtlRun nodes = Ctl(endpoint_, {"nodes"});
  EXPECT_EQ(nodes.code, 0);
  EXPECT_TRUE(absl::StrContains(nodes.out, "no storage cluster")) << nodes.out;
}

TEST(SnapbackctlClusterTest, NodesShowsTheMapAndReplicaState) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  o.domains = {"rack-a", "rack-b", "rack-c"};
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  CtlRun nodes = Ctl(cluster.coordinator(), {"nodes"});
  EXPECT_EQ(nodes.code, 0);
  int up = 0;
  for (absl::string_view l : absl::StrSplit(nodes.out, '\n')) {
    up += absl::StrContains(l, "NODE_UP") ? 1 : 0;
  }
  EXPECT_EQ(up, 3) << nodes.out;
  EXPECT_TRUE(absl::StrContains(nodes.out, "rack-b")) << nodes.out;
  EXPECT_TRUE(absl::StrContains(nodes.out, "under-replicated")) << nodes.out;
  cluster.SignalNode(1, SIGKILL);
  ASSERT_TRUE(StorageCluster::WaitFor(
      [&] {
        return absl::StrContains(Ctl(cluster.coordinator(), {"nodes"}).out, "NODE_DOWN");
      },
      absl::Seconds(30)));
  CtlRun json = Ctl(cluster.coordinator(), {"--json", "nodes"});
  EXPECT_EQ(json.code, 0);
  EXPECT_TRUE(absl::StrContains(json.out, "\"state\": \"NODE_DOWN\"")) << json.out;
}

// The forced restore end to end: a 2-rank job runs under snapback-launch;
// the operator restores an older step; the job restarts there (through the
// local scheduler), its ranks restore exactly that step, the target is
// cleared, and the job continues and finishes bit-identical to an
// uninterrupted run.
TEST(SnapbackctlRestoreTest, ForcedRestoreRestartsTheJobAtTheChosenStep) {
  TempDir dir;
  Subprocess server({Subprocess::BinPath("snapback-server"),
                     "--data-dir=" + dir.path() + "/s", "--listen=127.0.0.1:0"});
  auto line = server.WaitForLine("snapback-server listening on", absl::Seconds(60));
  ASSERT_TRUE(line.has_value());
  const std::string rest = line->substr(line->find("listening on ") + 13);
  const std::string endpoint = rest.substr(0, rest.find(' '));
  const std::string progress = dir.path() + "/progress";
  std::filesystem::create_directories(progress);
  testing::Launcher job({Subprocess::BinPath("snapback-launch"),
                         "--job",
                         "forced",
                         "--nproc",
                         "2",
                         "--endpoint",
                         endpoint,
                         "--stop-grace",
                         "2s",
                         "--",
                         Subprocess::BinPath("snapback-demo-job"),
                         "--steps",
                         "60",
                         "--save-every",
                         "5",
                         "--mib",
                         "1",
                         "--step-ms",
                         "40",
                         "--progress-dir",
                         progress});
  ASSERT_TRUE(testing::WaitProgress(progress, 0, 1, 23, absl::Seconds(120)).has_value());
  CtlRun restore = Ctl(endpoint, {"restore", "forced", "--step=10",
                                  "--reason=bad data after 10", "--timeout=60s"});
  EXPECT_EQ(restore.code, 0) << restore.out;
  EXPECT_TRUE(absl::StrContains(restore.out, "restore target cleared")) << restore.out;
  EXPECT_EQ(job.Wait(absl::Seconds(180)), 0) << job.Output();
  // Both ranks of the new incarnation restored step 10, verified exact.
  int restored_10 = 0;
  for (const std::string& r : job.Lines("restored ")) {
    restored_10 += absl::StartsWith(r, "restored 10 ok") ? 1 : 0;
  }
  EXPECT_EQ(restored_10, 2) << job.Output();
  int done_ok = 0;
  for (const std::string& d : job.Lines("done ")) done_ok += d == "done 60 ok" ? 1 : 0;
  EXPECT_GE(done_ok, 2) << job.Output();
  CtlRun incidents = Ctl(endpoint, {"--json", "incidents", "forced"});
  EXPECT_TRUE(absl::StrContains(incidents.out, "\"restored_step\": \"10\""))
      << incidents.out;
  CtlRun jobs = Ctl(endpoint, {"--json", "jobs"});
  EXPECT_TRUE(absl::StrContains(jobs.out, "\"restore_target\": \"-1\"")) << jobs.out;
  CtlRun audit = Ctl(endpoint, {"audit"});
  for (const char* action : {"set-restore-target", "restart", "clear-restore-target"}) {
    EXPECT_TRUE(absl::StrContains(audit.out, action)) << audit.out;
  }
  EXPECT_TRUE(absl::StrContains(audit.out, "bad data after 10")) << audit.out;
}

}  // namespace
}  // namespace snapback
