// The coordinator over real gRPC: an embedded Server (both roles, one port)
// on 127.0.0.1:0 with real RocksDB and chunk store; a split deployment
// (storage node + coordinator role); and snapback-server as a child process
// SIGKILLed in the middle of a commit workload, restarted on the same data
// dir, and checked: every checkpoint is COMMITTED with every manifest and
// chunk in place, or not committed at all.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/hash.h"
#include "coordinator/chunk_tier.h"
#include "coordinator/coordinator_store.h"
#include "gtest/gtest.h"
#include "rpc/storage_client.h"
#include "server/server.h"
#include "snapback/v1/coordinator.grpc.pb.h"
#include "storage/chunk_store.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

namespace snapback::server {
namespace {

using internal_client::StorageClient;
using v1::CoordinatorService;

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (0)

constexpr size_t kChunkBytes = 1024;  // 256 float32

// A coordinator client: the generated stub with a deadline on every call.
class Coordinator {
 public:
  explicit Coordinator(const std::string& endpoint) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);  // manifests may exceed 4 MiB
    stub_ = CoordinatorService::NewStub(
        grpc::CreateCustomChannel(endpoint, grpc::InsecureChannelCredentials(), args));
  }

  // Calls stub method `m` with `req`, returning the response or the status.
  template <typename Resp, typename Req, typename Method>
  absl::StatusOr<Resp> Call(Method m, const Req& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    Resp resp;
    grpc::Status status = (stub_.get()->*m)(&ctx, req, &resp);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    }
    return resp;
  }

  absl::StatusOr<v1::RegisterJobResponse> Register(const std::string& job, int world,
                                                   uint32_t keep_last = 3) {
    v1::RegisterJobRequest req;
    req.set_job_id(job);
    req.set_world_size(world);
    req.mutable_retention()->set_keep_last(keep_last);
    return Call<v1::RegisterJobResponse>(&CoordinatorService::Stub::RegisterJob, req);
  }
  absl::StatusOr<v1::BeginCheckpointResponse> Begin(const v1::RankRef& ref,
                                                    int64_t step) {
    v1::BeginCheckpointRequest req;
    *req.mutable_rank() = ref;
    req.set_step(step);
    return Call<v1::BeginCheckpointResponse>(&CoordinatorService::Stub::BeginCheckpoint,
                                             req);
  }
  absl::StatusOr<v1::ClaimChunksResponse> Claim(const v1::RankRef& ref, int64_t step,
                                                const std::vector<ChunkId>& ids) {
    v1::ClaimChunksRequest req;
    *req.mutable_rank() = ref;
    req.set_step(step);
    for (const ChunkId& id : ids) req.add_ids(std::string(id.AsBytes()));
    return Call<v1::ClaimChunksResponse>(&CoordinatorService::Stub::ClaimChunks, req);
  }
  absl::StatusOr<v1::CommitRankResponse> Commit(const v1::RankRef& ref, int64_t step,
                                                const v1::RankManifest& m) {
    v1::CommitRankRequest req;
    *req.mutable_rank() = ref;
    req.set_step(step);
    *req.mutable_manifest() = m;
    return Call<v1::CommitRankResponse>(&CoordinatorService::Stub::CommitRank, req);
  }
  absl::StatusOr<v1::AbortCheckpointResponse> Abort(const v1::RankRef& ref,
                                                    int64_t step) {
    v1::AbortCheckpointRequest req;
    *req.mutable_rank() = ref;
    req.set_step(step);
    req.set_reason("test");
    return Call<v1::AbortCheckpointResponse>(&CoordinatorService::Stub::AbortCheckpoint,
                                             req);
  }
  absl::StatusOr<v1::GetLatestResponse> Latest(const std::string& job) {
    v1::GetLatestRequest req;
    req.set_job_id(job);
    return Call<v1::GetLatestResponse>(&CoordinatorService::Stub::GetLatest, req);
  }
  absl::StatusOr<v1::GetManifestResponse> Manifest(const std::string& job, int64_t step,
                                                   int rank) {
    v1::GetManifestRequest req;
    req.set_job_id(job);
    req.set_step(step);
    req.set_rank(rank);
    return Call<v1::GetManifestResponse>(&CoordinatorService::Stub::GetManifest, req);
  }
  absl::StatusOr<v1::ListCheckpointsResponse> List(const std::string& job) {
    v1::ListCheckpointsRequest req;
    req.set_job_id(job);
    return Call<v1::ListCheckpointsResponse>(&CoordinatorService::Stub::ListCheckpoints,
                                             req);
  }
  absl::StatusOr<v1::DeleteCheckpointResponse> Delete(const std::string& job,
                                                      int64_t step) {
    v1::DeleteCheckpointRequest req;
    req.set_job_id(job);
    req.set_step(step);
    return Call<v1::DeleteCheckpointResponse>(&CoordinatorService::Stub::DeleteCheckpoint,
                                              req);
  }
  absl::StatusOr<v1::CollectGarbageResponse> Gc() {
    return Call<v1::CollectGarbageResponse>(&CoordinatorService::Stub::CollectGarbage,
                                            v1::CollectGarbageRequest());
  }

 private:
  std::unique_ptr<CoordinatorService::Stub> stub_;
};

v1::RankRef Ref(const std::string& job, int rank, int64_t incarnation) {
  v1::RankRef ref;
  ref.set_job_id(job);
  ref.set_rank(rank);
  ref.set_incarnation(incarnation);
  return ref;
}

// A float32 tensor entry: `shape` elements at `offset` of `global`, one
// kChunkBytes chunk per 256 elements.
v1::TensorEntry Tensor(const std::string& name, int64_t shape, int64_t global,
                       int64_t offset, const std::vector<EncodedChunk>& chunks) {
  v1::TensorEntry t;
  t.set_name(name);
  t.set_dtype("float32");
  t.add_shape(shape);
  t.add_global_shape(global);
  t.add_global_offset(offset);
  t.set_byte_length(static_cast<uint64_t>(shape) * 4);
  for (const EncodedChunk& c : chunks) {
    v1::ChunkRef* r = t.add_chunks();
    r->set_id(std::string(c.id.AsBytes()));
    r->set_length(c.raw_length);
  }
  return t;
}

v1::BlobEntry Blob(const std::string& name, const EncodedChunk& chunk) {
  v1::BlobEntry b;
  b.set_name(name);
  b.set_byte_length(chunk.raw_length);
  v1::ChunkRef* r = b.add_chunks();
  r->set_id(std::string(chunk.id.AsBytes()));
  r->set_length(chunk.raw_length);
  return b;
}

EncodedChunk Chunk(uint64_t seed) { return testing::MakeChunk(kChunkBytes, seed); }

std::vector<ChunkId> Ids(const v1::RankManifest& m) {
  std::vector<ChunkId> ids;
  for (const auto& t : m.tensors()) {
    for (const auto& c : t.chunks()) ids.push_back(*ChunkId::FromBytes(c.id()));
  }
  for (const auto& b : m.blobs()) {
    for (const auto& c : b.chunks()) ids.push_back(*ChunkId::FromBytes(c.id()));
  }
  return ids;
}

// One rank's save: Begin, Claim, upload what the tier lacks, Commit. The
// rank's manifest: its dim-0 shard of "w" (4 x 256 of [1024]), the
// replicated "embed" (the same chunk on every rank), and its own "rng" blob.
struct RankSave {
  v1::RankManifest manifest;
  std::vector<EncodedChunk> chunks;
};

RankSave MakeRankSave(int rank, uint64_t w_seed, uint64_t embed_seed, uint64_t rng_seed) {
  RankSave s;
  s.chunks = {Chunk(w_seed), Chunk(embed_seed), Chunk(rng_seed)};
  *s.manifest.add_tensors() = Tensor("w", 256, 1024, 256 * rank, {s.chunks[0]});
  *s.manifest.add_tensors() = Tensor("embed", 256, 256, 0, {s.chunks[1]});
  *s.manifest.add_blobs() = Blob("rng", s.chunks[2]);
  return s;
}

// Runs one rank's save; returns the commit response. `uploaded` counts the
// chunks the rank had to send.
absl::StatusOr<v1::CommitRankResponse> SaveRank(Coordinator& c, StorageClient& storage,
                                                const v1::RankRef& ref, int64_t step,
                                                const RankSave& save,
                                                int* uploaded = nullptr) {
  auto begin = c.Begin(ref, step);
  if (!begin.ok()) return begin.status();
  std::vector<ChunkId> ids;
  for (const EncodedChunk& chunk : save.chunks) ids.push_back(chunk.id);
  auto claimed = c.Claim(ref, step, ids);
  if (!claimed.ok()) return claimed.status();
  std::vector<EncodedChunk> missing;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!claimed->present(static_cast<int>(i))) missing.push_back(save.chunks[i]);
  }
  if (uploaded != nullptr) *uploaded = static_cast<int>(missing.size());
  if (!missing.empty()) {
    auto put = storage.Put(missing);
    if (!put.ok()) return put.status();
  }
  return c.Commit(ref, step, save.manifest);
}

class CoordinatorServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o;
    o.data_dir = tmp_.path() + "/data";
    o.gc_interval = absl::ZeroDuration();  // GC only when a test asks
    o.coordinator.gc_grace = absl::ZeroDuration();
    auto server = Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    endpoint_ = absl::StrCat("127.0.0.1:", server_->port());
    coordinator_ = std::make_unique<Coordinator>(endpoint_);
    auto storage = StorageClient::Connect(endpoint_);
    ASSERT_TRUE(storage.ok()) << storage.status();
    storage_ = *std::move(storage);
  }

  void TearDown() override {
    if (server_ == nullptr) return;
    auto report = server_->TEST_coordinator_store()->CheckConsistency(true);
    EXPECT_TRUE(report.ok()) << report.status();
  }

  bool OnTier(const ChunkId& id) {
    auto has = storage_->Has({id});
    EXPECT_TRUE(has.ok()) << has.status();
    return has.ok() && (*has)[0];
  }

  testing::TempDir tmp_;
  std::unique_ptr<Server> server_;
  std::string endpoint_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<StorageClient> storage_;
};

TEST_F(CoordinatorServiceTest, FourRanksCommitThroughGrpc) {
  constexpr int kWorld = 4;
  ASSERT_TRUE(coordinator_->Register("llm", kWorld).ok());
  for (int64_t step : {100, 200}) {
    std::vector<RankSave> saves;
    for (int rank = 0; rank < kWorld; ++rank) {
      // "w" changes between steps on ranks 0-1 only; "embed" never does.
      saves.push_back(
          MakeRankSave(rank, rank < 2 ? step + rank : rank, 7, step * 10 + rank));
    }
    std::vector<std::thread> ranks;
    std::vector<absl::StatusOr<v1::CommitRankResponse>> results(kWorld);
    std::vector<int> uploaded(kWorld);
    for (int rank = 0; rank < kWorld; ++rank) {
      ranks.emplace_back([&, rank] {
        results[rank] = SaveRank(*coordinator_, *storage_, Ref("llm", rank, 1), step,
                                 saves[rank], &uploaded[rank]);
      });
    }
    for (auto& t : ranks) t.join();
    int completed = 0;
    for (int rank = 0; rank < kWorld; ++rank) {
      ASSERT_TRUE(results[rank].ok())
          << "rank " << rank << ": " << results[rank].status();
      completed += results[rank]->checkpoint_committed() ? 1 : 0;
    }
    EXPECT_EQ(completed, 1) << "exactly one rank's commit completes the checkpoint";
    if (step == 200) {
      // Unchanged chunks were found on the tier and not sent again.
      EXPECT_EQ(uploaded[2], 1);  // only its rng blob
      EXPECT_EQ(uploaded[3], 1);
    }

    auto latest = coordinator_->Latest("llm");
    ASSERT_TRUE(latest.ok()) << latest.status();
    EXPECT_EQ(latest->step(), step);
    for (int rank = 0; rank < kWorld; ++rank) {
      auto m = coordinator_->Manifest("llm", step, rank);
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_EQ(m->manifest().SerializeAsString(),
                saves[rank].manifest.SerializeAsString());
      EXPECT_EQ(m->world_size(), kWorld);
      EXPECT_EQ(m->storage_endpoints_size(), 0);  // embedded: the coordinator's address
      auto chunks = storage_->Get(Ids(m->manifest()));
      ASSERT_TRUE(chunks.ok()) << chunks.status();  // verified by the client
    }
  }
  auto list = coordinator_->List("llm");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->checkpoints_size(), 2);
  EXPECT_EQ(list->checkpoints(1).state(), v1::COMMITTED);
  EXPECT_EQ(list->checkpoints(1).logical_bytes(), 4u * 3 * kChunkBytes);

  // Deleting step 100 frees the chunks only it used; GC removes them.
  const RankSave old = MakeRankSave(0, 100, 7, 1000);
  ASSERT_TRUE(coordinator_->Delete("llm", 100).ok());
  auto gc = coordinator_->Gc();
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_EQ(gc->chunks_deleted(), 2u + 4u);  // two "w" shards, four rng blobs
  EXPECT_FALSE(OnTier(old.chunks[0].id));
  EXPECT_TRUE(OnTier(old.chunks[1].id));  // "embed" is still used by step 200
}

TEST_F(CoordinatorServiceTest, CommitNamingAMissingChunkFails) {
  ASSERT_TRUE(coordinator_->Register("job", 1).ok());
  const RankSave save = MakeRankSave(0, 1, 2, 3);
  const v1::RankRef ref = Ref("job", 0, 1);
  ASSERT_TRUE(coordinator_->Begin(ref, 5).ok());
  ASSERT_TRUE(storage_->Put({save.chunks[0], save.chunks[1]}).ok());  // not the blob
  auto r = coordinator_->Commit(ref, 5, save.manifest);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find(save.chunks[2].id.ToHex()), std::string::npos);
  EXPECT_NE(r.status().message().find("upload them first"), std::string::npos);
  EXPECT_EQ(coordinator_->Latest("job").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(storage_->Put({save.chunks[2]}).ok());
  r = coordinator_->Commit(ref, 5, save.manifest);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());
}

TEST_F(CoordinatorServiceTest, StaleIncarnationIsFenced) {
  ASSERT_TRUE(coordinator_->Register("job", 2).ok());
  const RankSave save = MakeRankSave(0, 1, 2, 3);
  ASSERT_TRUE(SaveRank(*coordinator_, *storage_, Ref("job", 0, 1), 10, save).ok());
  ASSERT_TRUE(coordinator_->Begin(Ref("job", 1, 2), 20).ok());  // the job restarted
  auto r = coordinator_->Commit(Ref("job", 1, 1), 10, MakeRankSave(1, 4, 2, 5).manifest);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.status().message(),
            "stale incarnation 1; the job is at incarnation 2: this process belongs to a "
            "previous run and must exit");
  auto list = coordinator_->List("job");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->checkpoints(0).state(), v1::ABORTED);  // step 10, superseded
}

TEST_F(CoordinatorServiceTest, BadRequestsAreInvalidArgument) {
  auto r = coordinator_->Register("no spaces please", 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("A-Z, a-z, 0-9"), std::string::npos) << r.status();
  EXPECT_EQ(coordinator_->Register("ok", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(coordinator_->Latest("../etc").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(coordinator_->Latest("unknown").status().code(), absl::StatusCode::kNotFound);
  v1::ClaimChunksRequest claim;
  *claim.mutable_rank() = Ref("ok", 0, 1);
  claim.add_ids("short");
  EXPECT_EQ(
      coordinator_
          ->Call<v1::ClaimChunksResponse>(&CoordinatorService::Stub::ClaimChunks, claim)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorServiceTest, DeleteChunksThroughTheStorageApi) {
  const EncodedChunk a = Chunk(1), b = Chunk(2);
  ASSERT_TRUE(storage_->Put({a, b}).ok());
  auto deleted = storage_->Delete({a.id, b.id, Chunk(3).id});
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 2);
  EXPECT_FALSE(OnTier(a.id));
  EXPECT_FALSE(OnTier(b.id));
  deleted = storage_->Delete({a.id});  // idempotent
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 0);

  v1::DeleteChunksRequest req;
  req.add_ids(std::string(31, 'x'));
  v1::DeleteChunksResponse resp;
  grpc::ClientContext ctx;
  grpc::Status status = storage_->stub()->DeleteChunks(&ctx, req, &resp);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("id is 31 bytes"), std::string::npos);
}

// role "storage" + role "coordinator" with --storage-endpoints: the
// coordinator checks and deletes chunks on the node over gRPC.
TEST(CoordinatorRoleTest, CoordinatorTalksToARemoteStorageNode) {
  testing::TempDir tmp;
  ServerOptions so;
  so.data_dir = tmp.path() + "/node";
  so.role = "storage";
  auto node = Server::Start(so);
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ((*node)->TEST_coordinator_store(), nullptr);
  const std::string node_endpoint = (*node)->address();

  ServerOptions co;
  co.data_dir = tmp.path() + "/coordinator";
  co.role = "coordinator";
  co.gc_interval = absl::ZeroDuration();
  co.coordinator.gc_grace = absl::ZeroDuration();
  co.rebuild_from_tier = {node_endpoint};  // only for a cluster, not a fixed list
  co.storage_endpoints = {node_endpoint};
  EXPECT_EQ(Server::Start(co).status().code(), absl::StatusCode::kInvalidArgument);
  co.rebuild_from_tier.clear();
  auto coord = Server::Start(co);
  ASSERT_TRUE(coord.ok()) << coord.status();
  EXPECT_EQ((*coord)->TEST_service(), nullptr);  // no storage service there
  ServerOptions bad = so;
  bad.role = "";
  bad.storage_endpoints = {node_endpoint};
  EXPECT_EQ(Server::Start(bad).status().code(), absl::StatusCode::kInvalidArgument);

  Coordinator c((*coord)->address());
  auto storage = StorageClient::Connect(node_endpoint);
  ASSERT_TRUE(storage.ok());
  ASSERT_TRUE(c.Register("split", 1).ok());
  auto begin = c.Begin(Ref("split", 0, 1), 1);
  ASSERT_TRUE(begin.ok()) << begin.status();
  ASSERT_EQ(begin->storage_endpoints_size(), 1);
  EXPECT_EQ(begin->storage_endpoints(0), node_endpoint);
  EXPECT_EQ(begin->replication(), 1);
  const RankSave save = MakeRankSave(0, 1, 2, 3);
  auto r = c.Commit(Ref("split", 0, 1), 1, save.manifest);  // nothing uploaded yet
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  r = SaveRank(c, **storage, Ref("split", 0, 1), 1, save);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());

  ASSERT_TRUE(c.Delete("split", 1).ok());
  auto gc = c.Gc();
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_EQ(gc->chunks_deleted(), 3u);
  auto has = (*storage)->Has({save.chunks[0].id, save.chunks[1].id, save.chunks[2].id});
  ASSERT_TRUE(has.ok());
  EXPECT_EQ(*has, std::vector<bool>({false, false, false}));  // gone via DeleteChunks
  auto report = (*coord)->TEST_coordinator_store()->CheckConsistency(true);
  EXPECT_TRUE(report.ok()) << report.status();
}

// ---------------------------------------------------------------------------
// snapback-server as a process, SIGKILLed at a random point of a commit
// workload and restarted on the same data dir, several times.

// The server process: started with --ready-file; the "listening" line on its
// stdout is printed only after the file is written.
struct ServerProcess {
  std::unique_ptr<testing::Subprocess> process;
  int port = 0;
};

std::optional<ServerProcess> StartServerProcess(const std::string& data_dir,
                                                const std::string& ready_file) {
  std::remove(ready_file.c_str());
  ServerProcess p;
  p.process = std::make_unique<testing::Subprocess>(std::vector<std::string>{
      testing::Subprocess::BinPath("snapback-server"), "--data-dir", data_dir, "--listen",
      "127.0.0.1:0", "--ready-file", ready_file, "--gc-interval", "0", "--gc-grace",
      "0s"});
  if (!p.process->WaitForLine("snapback-server listening", absl::Seconds(120))) {
    return std::nullopt;
  }
  std::ifstream in(ready_file);
  if (!(in >> p.port) || p.port <= 0) return std::nullopt;
  return p;
}

// Drives 4-rank checkpoints against the server until a call fails, counting
// calls so the test can kill the server at a chosen one.
class Workload {
 public:
  static constexpr int kWorld = 4;
  static constexpr char kJob[] = "crashy";

  Workload(int port, int64_t incarnation, int64_t first_step)
      : coordinator_(absl::StrCat("127.0.0.1:", port)),
        incarnation_(incarnation),
        first_step_(first_step) {
    internal_client::StorageClientOptions o;
    o.deadline = absl::Seconds(30);
    storage_ = *StorageClient::Connect(absl::StrCat("127.0.0.1:", port), o);
  }

  // Runs on its own thread until the server goes away.
  void Run() {
    for (int64_t step = first_step_;; ++step) {
      if (!SaveStep(step)) break;
    }
    absl::MutexLock lock(&mu_);
    done_ = true;
  }

  // Blocks until the workload is about to make call number `n` (or has
  // stopped early, which it reports as unexpected).
  void WaitForCall(int64_t n) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return calls_ >= n || done_;
    };
    mu_.Await(absl::Condition(&reached));
  }
  // From now on failures are expected (the server is being killed).
  void ServerKilled() { killed_.store(true); }

  std::vector<int64_t> acknowledged() {
    absl::MutexLock lock(&mu_);
    return acknowledged_;
  }
  std::vector<std::string> unexpected() {
    absl::MutexLock lock(&mu_);
    return unexpected_;
  }

 private:
  // Before every call: lets WaitForCall() return at a chosen call.
  void Tick() {
    absl::MutexLock lock(&mu_);
    ++calls_;
  }
  // Returns false (stop) on any failure; records it when unexpected.
  bool Check(const absl::Status& status, absl::string_view what) {
    if (status.ok()) return true;
    if (!killed_.load()) {
      absl::MutexLock lock(&mu_);
      unexpected_.push_back(absl::StrCat(what, ": ", status.ToString()));
    }
    return false;
  }

  bool SaveStep(int64_t step) {
    std::vector<RankSave> saves;
    for (int rank = 0; rank < kWorld; ++rank) {
      // Shards change every 3 steps, embed every 5: later steps find many of
      // their chunks present (claimed, not uploaded), and GC (keep_last 2,
      // grace 0) deletes the rest as checkpoints age out.
      saves.push_back(MakeRankSave(rank, 1000 * (step / 3) + rank, 7 + 1000 * (step / 5),
                                   step * 100 + rank + 1000000 * incarnation_));
    }
    for (int rank = 0; rank < kWorld; ++rank) {
      const v1::RankRef ref = Ref(kJob, rank, incarnation_);
      Tick();
      if (!Check(coordinator_.Begin(ref, step).status(), "begin")) return false;
      std::vector<ChunkId> ids;
      for (const EncodedChunk& c : saves[rank].chunks) ids.push_back(c.id);
      Tick();
      auto claimed = coordinator_.Claim(ref, step, ids);
      if (!Check(claimed.status(), "claim")) return false;
      std::vector<EncodedChunk> missing;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (!claimed->present(static_cast<int>(i)))
          missing.push_back(saves[rank].chunks[i]);
      }
      if (!missing.empty()) {
        Tick();
        if (!Check(storage_->Put(missing).status(), "put")) return false;
      }
    }
    for (int rank = 0; rank < kWorld; ++rank) {
      const v1::RankRef ref = Ref(kJob, rank, incarnation_);
      if (step % 7 == 3 && rank == 2) {  // sometimes a rank gives up instead
        Tick();
        return Check(coordinator_.Abort(ref, step).status(), "abort");
      }
      Tick();
      auto r = coordinator_.Commit(ref, step, saves[rank].manifest);
      if (!Check(r.status(), "commit")) return false;
      if (r->checkpoint_committed()) {
        absl::MutexLock lock(&mu_);
        acknowledged_.push_back(step);
      }
    }
    if (step % 3 == 0) {
      Tick();
      if (!Check(coordinator_.Gc().status(), "gc")) return false;
    }
    return true;
  }

  Coordinator coordinator_;
  std::unique_ptr<StorageClient> storage_;
  const int64_t incarnation_;
  const int64_t first_step_;
  std::atomic<bool> killed_{false};
  absl::Mutex mu_;
  int64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int64_t> acknowledged_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> unexpected_ ABSL_GUARDED_BY(mu_);
};

// Opens the dead server's data dir in this process and checks every
// invariant of the metadata, including that each referenced chunk is in the
// chunk store.
void CheckDataDirOffline(const std::string& data_dir) {
  storage::ChunkStoreOptions so;
  so.background_compaction = false;
  auto chunks = storage::ChunkStore::Open(data_dir, so);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  coordinator::LocalChunkTier tier(chunks->get());
  auto store = coordinator::CoordinatorStore::Open(data_dir + "/meta", &tier);
  ASSERT_TRUE(store.ok()) << store.status();
  auto report = (*store)->CheckConsistency(/*check_tier=*/true);
  ASSERT_TRUE(report.ok()) << report.status();
  std::printf(
      "  offline check: %llu checkpoints (%llu committed), %llu manifests, "
      "%llu referenced chunks, %llu claims\n",
      static_cast<unsigned long long>(report->checkpoints),
      static_cast<unsigned long long>(report->committed),
      static_cast<unsigned long long>(report->manifests),
      static_cast<unsigned long long>(report->referenced_chunks),
      static_cast<unsigned long long>(report->claims));
}

TEST(CoordinatorProcessTest, SigkillMidCommitNeverLeavesAHalfCommittedCheckpoint) {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("SNAPBACK_CRASH_SEED"))
    seed = std::strtoull(s, nullptr, 10);
  std::printf("seed %llu (replay with SNAPBACK_CRASH_SEED=%llu)\n",
              static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  testing::TempDir tmp;
  const std::string data_dir = tmp.path() + "/data";
  const std::string ready = tmp.path() + "/ready";
  constexpr int kCycles = 8;

  auto server = StartServerProcess(data_dir, ready);
  ASSERT_TRUE(server.has_value()) << "snapback-server did not start; see its stderr";
  {
    Coordinator c(absl::StrCat("127.0.0.1:", server->port));
    ASSERT_TRUE(c.Register(Workload::kJob, Workload::kWorld, /*keep_last=*/2).ok());
  }
  int64_t next_step = 1;
  int64_t last_acknowledged = -1;
  for (int cycle = 1; cycle <= kCycles; ++cycle) {
    // Each cycle is a new run of the job (a restart after a crash), starting
    // right after the latest committed step, so it collides with the step
    // the previous run left WRITING.
    Workload workload(server->port, /*incarnation=*/cycle, next_step);
    std::thread thread([&] { workload.Run(); });
    const int64_t kill_at = std::uniform_int_distribution<int64_t>(5, 200)(rng);
    workload.WaitForCall(kill_at);
    workload.ServerKilled();
    server->process->Kill(SIGKILL);
    EXPECT_EQ(server->process->Wait(absl::Seconds(60)), 128 + SIGKILL);
    thread.join();
    for (const std::string& e : workload.unexpected()) ADD_FAILURE() << e;
    const std::vector<int64_t> acked = workload.acknowledged();
    if (!acked.empty()) last_acknowledged = acked.back();
    std::printf(
        "cycle %d: killed at call %lld; %zu commits acknowledged (last step %lld)\n",
        cycle, static_cast<long long>(kill_at), acked.size(),
        static_cast<long long>(last_acknowledged));

    CheckDataDirOffline(data_dir);
    if (::testing::Test::HasFatalFailure()) return;

    server = StartServerProcess(data_dir, ready);
    ASSERT_TRUE(server.has_value()) << "snapback-server did not restart on " << data_dir;
    Coordinator c(absl::StrCat("127.0.0.1:", server->port));
    auto storage = StorageClient::Connect(absl::StrCat("127.0.0.1:", server->port));
    ASSERT_TRUE(storage.ok());
    auto list = c.List(Workload::kJob);
    ASSERT_TRUE(list.ok()) << list.status();
    int64_t highest_committed = -1;
    for (const v1::CheckpointInfo& ckpt : list->checkpoints()) {
      if (ckpt.state() != v1::COMMITTED) {
        // Not committed: nothing of it may be readable.
        EXPECT_EQ(c.Manifest(Workload::kJob, ckpt.step(), 0).status().code(),
                  absl::StatusCode::kNotFound)
            << "step " << ckpt.step();
        continue;
      }
      highest_committed = std::max(highest_committed, ckpt.step());
      EXPECT_EQ(ckpt.ranks_committed(), Workload::kWorld);
      for (int rank = 0; rank < Workload::kWorld; ++rank) {
        auto m = c.Manifest(Workload::kJob, ckpt.step(), rank);
        ASSERT_TRUE(m.ok()) << "COMMITTED step " << ckpt.step() << " rank " << rank
                            << ": " << m.status();
        // Every chunk is there and verifies (StorageClient checks SHA-256).
        auto chunks = (*storage)->Get(Ids(m->manifest()));
        EXPECT_TRUE(chunks.ok()) << "step " << ckpt.step() << ": " << chunks.status();
      }
    }
    // An acknowledged commit survives the crash (retention keeps the newest
    // two, so the last acknowledged one is always kept).
    if (last_acknowledged >= 0) {
      EXPECT_GE(highest_committed, last_acknowledged);
      auto latest = c.Latest(Workload::kJob);
      ASSERT_TRUE(latest.ok()) << latest.status();
      EXPECT_EQ(latest->step(), highest_committed);
    }
    next_step = highest_committed + 1;
  }
  server->process->Kill(SIGTERM);
  EXPECT_EQ(server->process->Wait(absl::Seconds(60)), 0) << "clean shutdown";
  CheckDataDirOffline(data_dir);
}

}  // namespace
}  // namespace snapback::server
