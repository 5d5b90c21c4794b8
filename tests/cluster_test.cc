// The distributed storage tier, multi-process on loopback: a coordinator and
// 3 or 5 storage nodes (snapback-server processes started and stopped by
// PID), a 4-rank job saving through the real client library. Node loss
// mid-save, permanent loss and repair, scrub of flipped bytes, a node that
// returns after GC, a frozen node. docs/cluster.md.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "snapback/client.h"
#include "testing/storage_cluster.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using testing::MakeBytes;
using testing::StorageCluster;
using testing::StorageClusterOptions;
using testing::TempDir;

constexpr int kRanks = 4;

// A job of kRanks ranks in this process: one Checkpointer per rank, one
// tensor "w" per rank whose bytes are different at every step.
class Job {
 public:
  Job(const std::string& endpoint, const std::string& job_id, size_t bytes_per_rank,
      uint64_t chunk_bytes = 64 << 10, int ranks = kRanks)
      : job_id_(job_id), bytes_(bytes_per_rank) {
    ClientOptions co;
    co.endpoint = endpoint;
    co.rpc_deadline = absl::Seconds(20);
    co.bulk_deadline = absl::Seconds(20);
    auto client = Client::Connect(co);
    EXPECT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    for (int r = 0; r < ranks; ++r) {
      CheckpointerOptions o;
      o.job_id = job_id;
      o.rank = r;
      o.world_size = ranks;
      o.incarnation = 1;
      o.heartbeat_interval = absl::ZeroDuration();  // no detector restarts here
      o.chunk_bytes = chunk_bytes;
      o.compress = false;
      o.staging_bytes = 64ull << 20;
      auto ck = client_->NewCheckpointer(o);
      EXPECT_TRUE(ck.ok()) << ck.status();
      ranks_.push_back(*std::move(ck));
    }
  }

  std::string Data(int rank, int64_t step) const {
    return MakeBytes(bytes_, static_cast<uint64_t>(step) * 1000 + rank + 17);
  }

  // Starts step `step` on every rank; returns the handles (Save() returns
  // once the bytes are copied).
  std::vector<SaveHandle> StartSave(int64_t step) {
    std::vector<SaveHandle> handles;
    for (int r = 0; r < static_cast<int>(ranks_.size()); ++r) {
      data_[{r, step}] = Data(r, step);
      TensorView t;
      t.name = "w";
      t.dtype = DType::kUInt8;
      t.shape = {static_cast<int64_t>(bytes_)};
      t.data = data_[{r, step}].data();
      auto h = ranks_[r]->Save(step, {t});
      EXPECT_TRUE(h.ok()) << "rank " << r << " step " << step << ": " << h.status();
      if (h.ok()) handles.push_back(*h);
    }
    return handles;
  }

  void Save(int64_t step) {
    for (SaveHandle& h : StartSave(step)) {
      absl::Status s = h.Wait();
      EXPECT_TRUE(s.ok()) << "step " << step << ": " << s;
    }
  }

  // Every rank restores `step` bit-exact.
  void ExpectRestores(int64_t step, const std::string& when) {
    for (int r = 0; r < static_cast<int>(ranks_.size()); ++r) {
      auto got = ranks_[r]->Restore(step);
      ASSERT_TRUE(got.ok()) << when << ": rank " << r << " step " << step << ": "
                            << got.status();
      ASSERT_EQ(got->tensors.size(), 1u);
      EXPECT_TRUE(got->tensors[0].bytes == Data(r, step))
          << when << ": rank " << r << " step " << step << " restored different bytes";
    }
  }

  const std::string& id() const { return job_id_; }

 private:
  const std::string job_id_;
  const size_t bytes_;
  std::unique_ptr<Client> client_;
  std::vector<std::unique_ptr<Checkpointer>> ranks_;
  std::map<std::pair<int, int64_t>, std::string> data_;
};

std::map<ChunkId, int> CopiesNodeByNode(StorageCluster& cluster,
                                        const std::set<int>& nodes) {
  std::map<ChunkId, int> copies;
  for (int i : nodes) {
    auto held = cluster.NodeChunks(i);
    EXPECT_TRUE(held.ok()) << "node " << i << ": " << held.status();
    if (!held.ok()) continue;
    for (const ChunkId& id : *held) ++copies[id];
  }
  return copies;
}

std::set<ChunkId> AllChunks(StorageCluster& cluster) {
  std::set<ChunkId> all;
  for (int i = 0; i < cluster.size(); ++i) {
    if (!cluster.node_running(i)) continue;
    auto held = cluster.NodeChunks(i);
    EXPECT_TRUE(held.ok()) << held.status();
    if (held.ok()) all.insert(held->begin(), held->end());
  }
  return all;
}

// The state the coordinator's map gives node `id` (UNSPECIFIED when absent
// or the map cannot be read).
v1::NodeState StateOf(StorageCluster& cluster, const std::string& id) {
  auto map = cluster.Map();
  if (!map.ok()) return v1::NODE_STATE_UNSPECIFIED;
  for (const auto& n : map->nodes()) {
    if (n.node_id() == id) return n.state();
  }
  return v1::NODE_STATE_UNSPECIFIED;
}

bool Healthy(StorageCluster& cluster) {
  auto st = cluster.ReplicaState();
  return st.ok() && st->chunks() > 0 && st->under_replicated_chunks() == 0 &&
         st->lost_chunks() == 0;
}

class ClusterNodeLossTest : public ::testing::TestWithParam<int> {};

// 3 and 5 nodes, R=2: a node SIGKILLed while a save is uploading; the save
// completes, and every committed checkpoint restores bit-exact with any one
// node down.
TEST_P(ClusterNodeLossTest,
       SaveSurvivesNodeKillAndEveryCheckpointRestoresWithAnyNodeDown) {
  const int n = GetParam();
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = n;
  o.domains = {"rack-a", "rack-b", "rack-c"};
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  Job job(cluster.coordinator(), absl::StrCat("loss", n), 2 << 20);

  job.Save(1);
  job.Save(2);
  // Step 3: the victim dies while the chunks are on their way.
  std::vector<SaveHandle> handles = job.StartSave(3);
  cluster.SignalNode(1, SIGKILL);
  int done_before_kill = 0;
  for (SaveHandle& h : handles) done_before_kill += h.Done() ? 1 : 0;
  for (SaveHandle& h : handles) {
    absl::Status s = h.Wait();
    EXPECT_TRUE(s.ok()) << "the save in flight failed when a node died: " << s;
  }
  std::printf("ranks whose step-3 upload had finished before the kill: %d of %d\n",
              done_before_kill, kRanks);
  job.Save(4);  // the next save goes to the surviving nodes only
  for (int64_t step = 1; step <= 4; ++step) job.ExpectRestores(step, "node 1 dead");

  // The victim comes back (same port and data); then each node in turn is
  // down while everything is restored.
  cluster.StartNode(1);
  ASSERT_TRUE(
      StorageCluster::WaitFor([&] { return cluster.AllUp(); }, absl::Seconds(60)));
  ASSERT_TRUE(
      StorageCluster::WaitFor([&] { return Healthy(cluster); }, absl::Seconds(60)))
      << "not every committed chunk is back to 2 live copies";
  {
    std::set<int> all_nodes;
    for (int i = 0; i < n; ++i) all_nodes.insert(i);
    const std::map<ChunkId, int> copies = CopiesNodeByNode(cluster, all_nodes);
    int single = 0;
    for (const auto& [id, c] : copies) single += c < 2 ? 1 : 0;
    EXPECT_EQ(single, 0) << "chunks with one copy, counted node by node, of "
                         << copies.size();
  }
  for (int down = 0; down < n; ++down) {
    cluster.SignalNode(down, SIGKILL);
    for (int64_t step = 1; step <= 4; ++step) {
      job.ExpectRestores(step, absl::StrCat("node ", down, " down"));
    }
    cluster.StartNode(down);
    ASSERT_TRUE(
        StorageCluster::WaitFor([&] { return cluster.AllUp(); }, absl::Seconds(60)));
  }
}

INSTANTIATE_TEST_SUITE_P(Nodes, ClusterNodeLossTest, ::testing::Values(3, 5));

// A node killed and its data directory deleted: repair brings every
// committed chunk back to 2 copies on the survivors, counted node by node.
TEST(ClusterTest, PermanentNodeLossIsRepairedToTwoCopies) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  Job job(cluster.coordinator(), "perm", 2 << 20);
  for (int64_t step = 1; step <= 3; ++step) job.Save(step);
  const std::set<ChunkId> all = AllChunks(cluster);
  ASSERT_FALSE(all.empty());

  const std::string lost_id = cluster.node_id(0);
  cluster.SignalNode(0, SIGKILL);
  std::filesystem::remove_all(cluster.node_dir(0));
  ASSERT_TRUE(StorageCluster::WaitFor(
      [&] { return StateOf(cluster, lost_id) == v1::NODE_DOWN; }, absl::Seconds(30)))
      << "node 0 never went DOWN";
  ASSERT_TRUE(
      StorageCluster::WaitFor([&] { return Healthy(cluster); }, absl::Seconds(60)))
      << "repair did not finish";
  const std::map<ChunkId, int> copies = CopiesNodeByNode(cluster, {1, 2});
  int short_chunks = 0;
  for (const ChunkId& id : all) {
    auto it = copies.find(id);
    if (it == copies.end() || it->second < 2) ++short_chunks;
  }
  EXPECT_EQ(short_chunks, 0) << "of " << all.size() << " committed chunks";
  auto st = cluster.ReplicaState();
  ASSERT_TRUE(st.ok());
  EXPECT_GT(st->repaired_chunks(), 0u);
  EXPECT_EQ(st->under_replicated_bytes(), 0u);
  {
    // Per chunk: every committed chunk wants 2, has 2 live copies, and the
    // lost node is not one of them.
    grpc::ClientContext ctx;
    v1::GetReplicaStateRequest req;
    for (const ChunkId& id : all) {
      if (req.chunk_ids_size() == 50) break;
      req.add_chunk_ids(std::string(id.AsBytes()));
    }
    auto channel =
        grpc::CreateChannel(cluster.coordinator(), grpc::InsecureChannelCredentials());
    v1::ReplicaState per_chunk;
    ASSERT_TRUE(v1::ClusterService::NewStub(channel)
                    ->GetReplicaState(&ctx, req, &per_chunk)
                    .ok());
    ASSERT_EQ(per_chunk.chunks_asked_size(), req.chunk_ids_size());
    for (const auto& c : per_chunk.chunks_asked()) {
      EXPECT_EQ(c.want(), 2);
      EXPECT_EQ(c.live(), 2);
      for (int k = 0; k < c.node_ids_size(); ++k) {
        if (c.node_ids(k) == lost_id) {
          EXPECT_EQ(c.node_states(k), v1::NODE_DOWN);
        }
      }
    }
  }
  std::printf("repaired %llu chunks (%llu bytes) after losing one of 3 nodes\n",
              static_cast<unsigned long long>(st->repaired_chunks()),
              static_cast<unsigned long long>(st->repaired_bytes()));
  for (int64_t step = 1; step <= 3; ++step) job.ExpectRestores(step, "after repair");
}

// Records of a segment file: (offset, encoded length), found by walking
// the 8-byte aligned record headers (docs/storage_format.md).
std::vector<std::pair<uint64_t, uint32_t>> Records(const std::string& path) {
  const std::string bytes = testing::Slurp(path);
  std::vector<std::pair<uint64_t, uint32_t>> out;
  uint64_t at = 0;
  while (at + 64 <= bytes.size()) {
    uint32_t magic = 0, enc = 0;
    std::memcpy(&magic, bytes.data() + at, 4);
    if (magic != 0x4B434253u) {
      at += 8;
      continue;
    }
    std::memcpy(&enc, bytes.data() + at + 12, 4);
    if (at + 64 + enc > bytes.size()) break;
    out.emplace_back(at, enc);
    at += (64 + enc + 7) / 8 * 8;
  }
  return out;
}

// 100 byte flips in one node's segments (each in a different record's
// payload): an on-demand scrub finds exactly those, and repair restores
// them from the other replicas. A restore never returns bad bytes.
TEST(ClusterTest, ScrubFindsAndRepairsHundredFlippedBytes) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  Job job(cluster.coordinator(), "scrub", 4 << 20, 16 << 10, 1);  // 256 chunks
  job.Save(1);

  std::vector<std::pair<std::string, std::pair<uint64_t, uint32_t>>> records;
  for (const auto& e :
       std::filesystem::directory_iterator(cluster.node_dir(0) + "/segments")) {
    for (const auto& r : Records(e.path())) records.push_back({e.path(), r});
  }
  ASSERT_GE(records.size(), 100u) << "node 0 holds too few records for the test";
  std::mt19937_64 rng(20261202);
  std::shuffle(records.begin(), records.end(), rng);
  records.resize(100);
  std::set<std::string> flipped;  // ids (bytes) of the damaged records
  for (const auto& [path, rec] : records) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    char id[32];
    f.seekg(static_cast<std::streamoff>(rec.first + 16));
    f.read(id, 32);
    flipped.insert(std::string(id, 32));
    const uint64_t at = rec.first + 64 + rng() % rec.second;
    char c;
    f.seekg(static_cast<std::streamoff>(at));
    f.get(c);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(at));
    f.put(c);
  }
  ASSERT_EQ(flipped.size(), 100u);

  auto scrub = cluster.Scrub(cluster.node_id(0));
  ASSERT_TRUE(scrub.ok()) << scrub.status();
  std::set<std::string> found;
  for (const auto& node : scrub->nodes())
    found.insert(node.bad_ids().begin(), node.bad_ids().end());
  EXPECT_EQ(found, flipped) << "scrub found " << found.size() << " bad copies";
  EXPECT_EQ(scrub->bad(), 100u);
  EXPECT_EQ(scrub->repaired(), 100u);
  std::printf("scrub checked %llu chunks, found %llu bad, repaired %llu\n",
              static_cast<unsigned long long>(scrub->checked()),
              static_cast<unsigned long long>(scrub->bad()),
              static_cast<unsigned long long>(scrub->repaired()));
  job.ExpectRestores(1, "after scrub");
  auto again = cluster.Scrub(cluster.node_id(0));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bad(), 0u) << "node 0 still has bad copies after repair";
  EXPECT_TRUE(Healthy(cluster));

  // Readers find rot too: 30 more flips on node 0, no scrub. The restore
  // is bit-exact (a bad copy is never returned), and the copies readers got
  // bad bytes from are reported, re-verified by the node and repaired.
  auto before = cluster.ReplicaState();
  ASSERT_TRUE(before.ok());
  records.clear();
  for (const auto& e :
       std::filesystem::directory_iterator(cluster.node_dir(0) + "/segments")) {
    for (const auto& r : Records(e.path())) records.push_back({e.path(), r});
  }
  std::shuffle(records.begin(), records.end(), rng);
  records.resize(std::min<size_t>(records.size(), 30));
  for (const auto& [path, rec] : records) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t at = rec.first + 64 + rng() % rec.second;
    char c;
    f.seekg(static_cast<std::streamoff>(at));
    f.get(c);
    c = static_cast<char>(c ^ 0x33);
    f.seekp(static_cast<std::streamoff>(at));
    f.put(c);
  }
  job.ExpectRestores(1, "with rotten copies on node 0");
  EXPECT_TRUE(StorageCluster::WaitFor(
      [&] {
        auto st = cluster.ReplicaState();
        return st.ok() && st->repaired_chunks() > before->repaired_chunks() &&
               st->under_replicated_chunks() == 0;
      },
      absl::Seconds(30)))
      << "the bad copies readers met were not repaired";
}

// A node that is DOWN while GC deletes chunks it holds drops them when it
// comes back (reconciliation), and keeps (verified) what is still wanted.
TEST(ClusterTest, ReturningNodeDropsChunksCollectedWhileItWasAway) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  o.coordinator_flags = {"--gc-grace=0s", "--gc-interval=0s"};
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  {
    v1::RegisterJobRequest req;
    req.set_job_id("gc");
    req.set_world_size(kRanks);
    req.mutable_retention()->set_keep_last(1);
    v1::RegisterJobResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(cluster.coordinator_stub()->RegisterJob(&ctx, req, &resp).ok());
  }
  Job job(cluster.coordinator(), "gc", 1 << 20);
  job.Save(1);
  auto held = cluster.NodeChunks(2);
  ASSERT_TRUE(held.ok());
  const std::set<ChunkId> step1_on_2 = *held;
  ASSERT_FALSE(step1_on_2.empty());

  cluster.SignalNode(2, SIGKILL);
  const std::string id2 = cluster.node_id(2);
  ASSERT_TRUE(StorageCluster::WaitFor(
      [&] { return StateOf(cluster, id2) == v1::NODE_DOWN; }, absl::Seconds(30)));
  job.Save(2);
  job.Save(3);
  {
    grpc::ClientContext ctx;
    v1::CollectGarbageResponse resp;
    ASSERT_TRUE(cluster.coordinator_stub()
                    ->CollectGarbage(&ctx, v1::CollectGarbageRequest(), &resp)
                    .ok());
    EXPECT_GT(resp.chunks_deleted(), 0u);
  }
  cluster.StartNode(2);
  ASSERT_TRUE(StorageCluster::WaitFor([&] { return cluster.AllUp(); }, absl::Seconds(60)))
      << "node 2 was not reconciled";
  held = cluster.NodeChunks(2);
  ASSERT_TRUE(held.ok());
  int left = 0;
  for (const ChunkId& id : step1_on_2) left += held->count(id);
  EXPECT_EQ(left, 0) << "chunks GC deleted while node 2 was away are still there";
  job.ExpectRestores(3, "after reconciliation");
  EXPECT_TRUE(
      StorageCluster::WaitFor([&] { return Healthy(cluster); }, absl::Seconds(30)));
}

// A node frozen past the grace goes DOWN (the map version moves forward),
// its chunks are re-replicated; after SIGCONT it rejoins, nothing is lost.
TEST(ClusterTest, FrozenNodeGoesDownAndRejoins) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  Job job(cluster.coordinator(), "frozen", 1 << 20);
  job.Save(1);
  job.Save(2);
  auto before = cluster.Map();
  ASSERT_TRUE(before.ok());
  const auto st_before = cluster.ReplicaState();
  ASSERT_TRUE(st_before.ok());

  cluster.SignalNode(0, SIGSTOP);
  const std::string id0 = cluster.node_id(0);
  ASSERT_TRUE(StorageCluster::WaitFor(
      [&] { return StateOf(cluster, id0) == v1::NODE_DOWN; }, absl::Seconds(30)));
  ASSERT_TRUE(
      StorageCluster::WaitFor([&] { return Healthy(cluster); }, absl::Seconds(60)))
      << "the frozen node's chunks were not re-replicated";
  job.Save(3);  // saves go on without it
  cluster.SignalNode(0, SIGCONT);
  ASSERT_TRUE(StorageCluster::WaitFor([&] { return cluster.AllUp(); }, absl::Seconds(60)))
      << "the node did not rejoin";
  auto after = cluster.Map();
  ASSERT_TRUE(after.ok());
  EXPECT_GT(after->version(), before->version());
  auto st = cluster.ReplicaState();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->lost_chunks(), 0u);
  EXPECT_EQ(st->under_replicated_chunks(), 0u);
  EXPECT_GT(st->chunks(), st_before->chunks());  // step 3's chunks, nothing twice
  for (int64_t step = 1; step <= 3; ++step) job.ExpectRestores(step, "after rejoin");
}

// A node above its high watermark says so in its heartbeats; placement
// skips it and saves go to the others.
TEST(ClusterTest, PlacementSkipsAFullNode) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  o.flags_of_node[2] = {"--min-free-mb=100000000"};  // "full" from the start
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  auto map = cluster.Map();
  ASSERT_TRUE(map.ok());
  int full = 0;
  for (const auto& n : map->nodes()) full += n.full() ? 1 : 0;
  EXPECT_EQ(full, 1);
  Job job(cluster.coordinator(), "full", 1 << 20);
  job.Save(1);
  job.Save(2);
  auto held = cluster.NodeChunks(2);
  ASSERT_TRUE(held.ok());
  EXPECT_TRUE(held->empty()) << "the full node got " << held->size() << " chunks";
  EXPECT_TRUE(Healthy(cluster));
  job.ExpectRestores(2, "with a full node");
}

// The coordinator's metadata directory is lost: a new coordinator rebuilds
// the catalogue (jobs, committed checkpoints, chunk locations) from the
// storage nodes, and every committed checkpoint restores bit-exact.
TEST(ClusterTest, LostCoordinatorMetadataIsRebuiltFromTheNodes) {
  TempDir dir;
  StorageClusterOptions o;
  o.nodes = 3;
  StorageCluster cluster(dir.path(), o);
  ASSERT_TRUE(cluster.Start());
  Job job(cluster.coordinator(), "rebuild", 1 << 20);
  for (int64_t step = 1; step <= 3; ++step) job.Save(step);

  cluster.StopCoordinator(SIGKILL);
  std::filesystem::remove_all(cluster.coordinator_dir());
  std::string nodes;
  for (int i = 0; i < cluster.size(); ++i) {
    nodes += (i > 0 ? "," : "") + cluster.node_address(i);
  }
  cluster.StartCoordinator({"--rebuild-from-tier=" + nodes});
  ASSERT_TRUE(StorageCluster::WaitFor([&] { return cluster.AllUp(); }, absl::Seconds(60)))
      << "the nodes did not register with the rebuilt coordinator";
  ASSERT_TRUE(
      StorageCluster::WaitFor([&] { return Healthy(cluster); }, absl::Seconds(60)))
      << "chunk locations were not rebuilt";
  v1::ListCheckpointsRequest req;
  req.set_job_id("rebuild");
  v1::ListCheckpointsResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(cluster.coordinator_stub()->ListCheckpoints(&ctx, req, &resp).ok());
  std::set<int64_t> committed;
  for (const auto& c : resp.checkpoints()) {
    if (c.state() == v1::COMMITTED) committed.insert(c.step());
  }
  EXPECT_EQ(committed, (std::set<int64_t>{1, 2, 3}));
  for (int64_t step = 1; step <= 3; ++step) job.ExpectRestores(step, "after the rebuild");
  // The job goes on from the rebuilt catalogue.
  job.Save(4);
  job.ExpectRestores(4, "a save after the rebuild");
}

}  // namespace
}  // namespace snapback
