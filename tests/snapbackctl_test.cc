// snapbackctl as an operator runs it: the real binary against a real
// snapback-server on loopback (embedded, and a storage cluster), its
// output, its JSON and its exit codes (docs/operators.md).
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/hash.h"
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

// The gRPC address in snapback-server's "listening on HOST:PORT (...)" line.
std::string EndpointOf(const std::string& line) {
  const std::string key = "listening on ";
  const std::string rest = line.substr(line.find(key) + key.size());
  return rest.substr(0, rest.find(' '));
}

struct CtlRun {
  int code = -1;
  std::string out;
};

// Runs snapbackctl with `args` against `endpoint`; stdout (stderr instead
// with `stderr_only`) and the exit code.
CtlRun Ctl(const std::string& endpoint, std::vector<std::string> args,
           bool stderr_only = false) {
  std::vector<std::string> argv = {Subprocess::BinPath("snapbackctl"),
                                   "--endpoint=" + endpoint, "--timeout=10s"};
  if (stderr_only) {
    argv.insert(argv.begin(), {"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1 >/dev/null"});
  }
  argv.insert(argv.end(), args.begin(), args.end());
  Subprocess p(argv);
  CtlRun r;
  while (auto line = p.ReadLine(absl::Seconds(30))) r.out += *line + "\n";
  r.code = p.Wait(absl::Seconds(30));
  return r;
}

int Count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = 0; (at = text.find(needle, at)) != std::string::npos; ++at) ++n;
  return n;
}

// Flips a byte inside the stored bytes of chunk `id` in every segment file
// of the chunk store in `data_dir` (a record's id sits 16 bytes into its
// 64-byte header, the encoded bytes follow: docs/storage_format.md).
// Returns how many copies it damaged.
int CorruptChunk(const std::string& data_dir, const ChunkId& id) {
  int damaged = 0;
  for (const auto& e : std::filesystem::directory_iterator(data_dir + "/segments")) {
    if (e.path().extension() != ".seg") continue;
    const std::string bytes = testing::Slurp(e.path());
    const std::string key(id.AsBytes());
    for (size_t at = bytes.find(key); at != std::string::npos;
         at = bytes.find(key, at + 1)) {
      const size_t victim = at + 48 + 10;  // 10 bytes into the encoded bytes
      if (at < 16 || victim >= bytes.size()) continue;
      std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(victim));
      f.put(static_cast<char>(bytes[victim] ^ 0x5a));
      ++damaged;
    }
  }
  return damaged;
}

// The CheckpointInfo objects of `checkpoints --json` output, by step.
std::map<int64_t, std::string> CheckpointsByStep(const std::string& json) {
  std::map<int64_t, std::string> out;
  std::vector<std::string> parts = absl::StrSplit(json, "\"job_id\"");
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string key = "\"step\": \"";
    const size_t at = parts[i].find(key);
    int64_t step = -1;
    if (at == std::string::npos ||
        !absl::SimpleAtoi(
            parts[i].substr(at + key.size(),
                            parts[i].find('"', at + key.size()) - at - key.size()),
            &step)) {
      continue;
    }
    out[step] = parts[i];
  }
  return out;
}

// An embedded snapback-server process and a job "ops" of 2 ranks with
// committed steps 1..3.
class SnapbackctlTest : public ::testing::Test {
 protected:
  void StartServer() {
    server_ = std::make_unique<Subprocess>(std::vector<std::string>{
        Subprocess::BinPath("snapback-server"), "--data-dir=" + data_dir(),
        "--listen=127.0.0.1:0", "--gc-interval=0s", "--gc-grace=0s"});
    auto line = server_->WaitForLine("snapback-server listening on", absl::Seconds(60));
    ASSERT_TRUE(line.has_value());
    endpoint_ = EndpointOf(*line);
  }

  std::string data_dir() const { return dir_.path() + "/server"; }

  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartServer());
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
  CtlRun unknown = Ctl(endpoint_, {"verify", "no-such-job"}, /*stderr_only=*/true);
  EXPECT_EQ(unknown.code, 4);
  EXPECT_EQ(Count(unknown.out, "\n"), 1) << unknown.out;
  EXPECT_TRUE(absl::StrContains(unknown.out, "no-such-job")) << unknown.out;
  EXPECT_EQ(Ctl(endpoint_, {"verify", "ops", "99"}).code, 4);
  EXPECT_EQ(Ctl(endpoint_, {"verify"}).code, 2);
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

TEST_F(SnapbackctlTest, VerifyFindsMarksAndKeepsADamagedCheckpoint) {
  // Healthy: every chunk of the three checkpoints (2 ranks x 1 chunk).
  CtlRun ok = Ctl(endpoint_, {"--json", "verify", "ops", "--reason=weekly check"});
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_TRUE(absl::StrContains(ok.out, "\"chunks_verified\": \"6\"")) << ok.out;
  EXPECT_TRUE(absl::StrContains(ok.out, "\"chunks_total\": \"6\"")) << ok.out;
  EXPECT_EQ(Count(ok.out, "VERIFY_OK"), 3) << ok.out;
  // The progress goes to stderr, a plain line per ~10% when not a terminal.
  CtlRun progress = Ctl(endpoint_, {"verify", "ops", "3"}, /*stderr_only=*/true);
  EXPECT_EQ(progress.code, 0) << progress.out;
  EXPECT_TRUE(absl::StrContains(progress.out, "100%")) << progress.out;
  EXPECT_TRUE(absl::StrContains(progress.out, "MB/s")) << progress.out;
  EXPECT_FALSE(absl::StrContains(progress.out, "\r")) << progress.out;

  // Damage rank 0's chunk of step 2 on disk.
  ASSERT_EQ(CorruptChunk(data_dir(), Sha256(testing::MakeBytes(1 << 16, 20))), 1);
  CtlRun bad = Ctl(endpoint_, {"verify", "ops"});
  EXPECT_EQ(bad.code, 5) << bad.out;
  // Rows: STEP CHUNKS SIZE ("0.1 MB") VERDICT REASON.
  std::map<std::string, std::string> verdicts;
  for (absl::string_view l : absl::StrSplit(bad.out, '\n')) {
    std::vector<std::string> cols = absl::StrSplit(l, ' ', absl::SkipEmpty());
    if (cols.size() >= 5 && cols[3] == "MB") verdicts[cols[0]] = cols[4];
  }
  EXPECT_EQ(verdicts, (std::map<std::string, std::string>{
                          {"1", "ok"}, {"2", "DAMAGED"}, {"3", "ok"}}))
      << bad.out;
  EXPECT_TRUE(absl::StrContains(bad.out, "rank 0 tensor \"layer.weight\" chunk 0"))
      << bad.out;
  EXPECT_TRUE(absl::StrContains(bad.out, "failed verification")) << bad.out;
  CtlRun said = Ctl(endpoint_, {"verify", "ops", "2"}, /*stderr_only=*/true);
  EXPECT_EQ(said.code, 5);
  EXPECT_TRUE(absl::StrContains(said.out, "damaged checkpoint(s) at step 2")) << said.out;

  // Marked durably: only step 2, and still after a restart.
  auto expect_marks = [&](const std::string& when) {
    CtlRun json = Ctl(endpoint_, {"--json", "checkpoints", "ops"});
    std::map<int64_t, std::string> by_step = CheckpointsByStep(json.out);
    ASSERT_EQ(by_step.size(), 3u) << when << json.out;
    for (const auto& [step, info] : by_step) {
      EXPECT_EQ(absl::StrContains(info, "\"damaged\": true"), step == 2)
          << when << ": step " << step << ": " << info;
      EXPECT_EQ(absl::StrContains(info, "\"verified_unix_ms\": \"0\""), step == 2)
          << when << ": step " << step << ": " << info;
    }
    EXPECT_TRUE(absl::StrContains(by_step[2], "rank 0 tensor")) << by_step[2];
  };
  expect_marks("after verify");
  server_->Kill(SIGTERM);
  ASSERT_EQ(server_->Wait(absl::Seconds(60)), 0);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  expect_marks("after a restart");
  EXPECT_TRUE(
      absl::StrContains(Ctl(endpoint_, {"show", "ops", "2"}).out, "DAMAGED: rank 0"));
  EXPECT_TRUE(absl::StrContains(Ctl(endpoint_, {"checkpoints", "ops"}).out, "DAMAGED"));
  // The quarantined chunk stays bad; the audit log has every verdict.
  EXPECT_EQ(Ctl(endpoint_, {"verify", "ops", "2"}).code, 5);
  CtlRun audit = Ctl(endpoint_, {"--json", "audit"});
  EXPECT_EQ(Count(audit.out, "\"action\": \"verify\""), 3 + 1 + 3 + 1 + 1) << audit.out;
  EXPECT_TRUE(absl::StrContains(audit.out, "\"reason\": \"weekly check\"")) << audit.out;
  EXPECT_TRUE(absl::StrContains(audit.out, "DAMAGED: rank 0")) << audit.out;
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

// One copy of a chunk bad on one node, a good one on another: verify
// reports the checkpoint repaired (exit 0), and repair makes the second
// copy again.
TEST(SnapbackctlClusterTest, VerifyRepairsABadReplica) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  ClientOptions co;
  co.endpoint = cluster.coordinator();
  auto client = Client::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status();
  CheckpointerOptions ko;
  ko.job_id = "rep";
  ko.world_size = 1;
  ko.incarnation = 1;
  ko.heartbeat_interval = absl::ZeroDuration();
  ko.compress = false;
  auto ck = (*client)->NewCheckpointer(ko);
  ASSERT_TRUE(ck.ok()) << ck.status();
  const std::string bytes = testing::MakeBytes(1 << 16, 7);
  TensorView t;
  t.name = "w";
  t.dtype = DType::kUInt8;
  t.shape = {1 << 16};
  t.data = bytes.data();
  auto h = (*ck)->Save(1, {t});
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(h->Wait().ok());
  const ChunkId id = Sha256(bytes);
  std::vector<int> holders;
  for (int i = 0; i < cluster.size(); ++i) {
    auto held = cluster.NodeChunks(i);
    ASSERT_TRUE(held.ok()) << held.status();
    if (held->contains(id)) holders.push_back(i);
  }
  ASSERT_EQ(holders.size(), 2u);
  ASSERT_EQ(CorruptChunk(cluster.node_dir(holders[0]), id), 1);

  CtlRun v = Ctl(cluster.coordinator(), {"verify", "rep", "1"});
  EXPECT_EQ(v.code, 0) << v.out;
  EXPECT_TRUE(absl::StrContains(v.out, "repaired")) << v.out;
  EXPECT_TRUE(absl::StrContains(v.out, cluster.node_id(holders[0]))) << v.out;
  EXPECT_TRUE(StorageCluster::WaitFor(
      [&] {
        auto st = cluster.ReplicaState();
        return st.ok() && st->chunks() == 1 && st->under_replicated_chunks() == 0;
      },
      absl::Seconds(30)))
      << "repair did not make the second copy again";
  CtlRun again = Ctl(cluster.coordinator(), {"--json", "verify", "rep"});
  EXPECT_EQ(again.code, 0) << again.out;
  EXPECT_TRUE(absl::StrContains(again.out, "VERIFY_OK")) << again.out;
  CtlRun json = Ctl(cluster.coordinator(), {"--json", "checkpoints", "rep"});
  EXPECT_TRUE(absl::StrContains(json.out, "\"damaged\": false")) << json.out;
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
  const std::string endpoint = EndpointOf(*line);
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
  // The operator's restore was the only incident: the new run's saves of
  // steps 15, 20, ... did not collide with the abandoned timeline's.
  EXPECT_EQ(Count(incidents.out, "\"seq\":"), 1) << incidents.out;
  // Its later checkpoints continue from step 10: every step after 10 is the
  // new incarnation's (2), none the old timeline's.
  CtlRun ckpts = Ctl(endpoint, {"--json", "checkpoints", "forced"});
  ASSERT_EQ(ckpts.code, 0);
  EXPECT_EQ(Count(ckpts.out, "\"incarnation\": \"1\""),
            Count(ckpts.out, "\"step\": \"5\"") + Count(ckpts.out, "\"step\": \"10\""))
      << ckpts.out;
  EXPECT_TRUE(absl::StrContains(ckpts.out, "\"step\": \"60\"")) << ckpts.out;
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
