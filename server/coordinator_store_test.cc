// Unit tests of the coordinator's metadata engine: a real RocksDB under a
// temporary directory, a real ChunkStore as the tier, and a FakeClock, so
// leases and grace periods are driven without sleeping. Every test ends with
// a full consistency check of the metadata (TearDown).
#include "server/coordinator_store.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "server/chunk_tier.h"
#include "storage/chunk_store.h"
#include "testing/test_util.h"

namespace snapback::server {
namespace {

using v1::CheckpointInfo;
using v1::RankManifest;
using v1::TensorEntry;

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (0)

absl::Status StatusOf(const absl::Status& s) { return s; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

#define EXPECT_CODE(expr, want)                                   \
  do {                                                            \
    const absl::Status status_ = StatusOf(expr);                  \
    EXPECT_EQ(status_.code(), absl::StatusCode::want) << status_; \
  } while (0)

// The tier, with a hook that runs inside Has() (i.e. while CommitRank is
// between its two critical sections), to test that window deterministically.
class HookedTier final : public ChunkTier {
 public:
  explicit HookedTier(storage::ChunkStore* store) : local_(store) {}
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids) override {
    auto result = local_.Has(ids);
    // After the answer is computed and before the caller acts on it.
    if (on_has) {
      auto hook = std::move(on_has);
      on_has = nullptr;
      hook();
    }
    return result;
  }
  absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) override {
    deletes += ids.size();
    return local_.Delete(ids);
  }
  std::vector<std::string> endpoints() const override { return {}; }
  int replication() const override { return 1; }

  std::function<void()> on_has;  // runs once, on the next Has()
  uint64_t deletes = 0;

 private:
  LocalChunkTier local_;
};

// A tensor entry of float32 elements covering `chunks` (each kChunkBytes).
constexpr size_t kChunkBytes = 1024;  // 256 float32

TensorEntry Tensor(const std::string& name, std::vector<int64_t> shape,
                   std::vector<int64_t> global_shape, std::vector<int64_t> offset,
                   const std::vector<ChunkId>& chunks,
                   const std::string& dtype = "float32") {
  TensorEntry t;
  t.set_name(name);
  t.set_dtype(dtype);
  uint64_t elements = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    elements *= static_cast<uint64_t>(d);
  }
  for (int64_t d : global_shape) t.add_global_shape(d);
  for (int64_t d : offset) t.add_global_offset(d);
  t.set_byte_length(elements * 4);
  for (const ChunkId& id : chunks) {
    v1::ChunkRef* c = t.add_chunks();
    c->set_id(std::string(id.AsBytes()));
    c->set_length(kChunkBytes);
  }
  return t;
}

// An unsharded [256 * n] float32 tensor over `chunks`.
TensorEntry Whole(const std::string& name, const std::vector<ChunkId>& chunks) {
  const int64_t n = 256 * static_cast<int64_t>(chunks.size());
  return Tensor(name, {n}, {n}, {0}, chunks);
}

RankManifest Manifest(std::vector<TensorEntry> tensors) {
  RankManifest m;
  for (TensorEntry& t : tensors) *m.add_tensors() = std::move(t);
  return m;
}

class CoordinatorStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    storage::ChunkStoreOptions chunk_options;
    chunk_options.background_compaction = false;
    auto chunks = storage::ChunkStore::Open(tmp_.path() + "/chunks", chunk_options);
    ASSERT_TRUE(chunks.ok()) << chunks.status();
    chunks_ = *std::move(chunks);
    tier_ = std::make_unique<HookedTier>(chunks_.get());
    options_.clock = &clock_;
    options_.gc_grace = absl::ZeroDuration();
    ASSERT_OK(Reopen());
  }

  void TearDown() override {
    if (store_ == nullptr) return;
    auto report = store_->CheckConsistency(/*check_tier=*/true);
    EXPECT_TRUE(report.ok()) << report.status();
  }

  absl::Status Reopen() {
    store_.reset();
    auto store = CoordinatorStore::Open(tmp_.path() + "/meta", tier_.get(), options_);
    if (!store.ok()) return store.status();
    store_ = *std::move(store);
    return absl::OkStatus();
  }

  // Stores a chunk of kChunkBytes made from `seed` and returns its id.
  ChunkId Upload(uint64_t seed) {
    EncodedChunk chunk = testing::MakeChunk(kChunkBytes, seed);
    EXPECT_TRUE(chunks_->Put({chunk}).ok());
    return chunk.id;
  }
  // A chunk id that was never uploaded.
  ChunkId NotUploaded(uint64_t seed) {
    return testing::MakeChunk(kChunkBytes, seed).id;
  }
  bool OnTier(const ChunkId& id) {
    auto has = chunks_->Has({id});
    EXPECT_TRUE(has.ok()) << has.status();
    return has.ok() && (*has)[0];
  }

  absl::Status Register(const std::string& job, int world,
                        const v1::RetentionPolicy* retention = nullptr) {
    v1::RegisterJobRequest req;
    req.set_job_id(job);
    req.set_world_size(world);
    if (retention != nullptr) *req.mutable_retention() = *retention;
    return store_->RegisterJob(req).status();
  }

  static v1::RankRef Ref(const std::string& job, int rank, int64_t incarnation) {
    v1::RankRef ref;
    ref.set_job_id(job);
    ref.set_rank(rank);
    ref.set_incarnation(incarnation);
    return ref;
  }

  absl::StatusOr<v1::BeginCheckpointResponse> Begin(const std::string& job, int rank,
                                                    int64_t step, int64_t inc = 1) {
    v1::BeginCheckpointRequest req;
    *req.mutable_rank() = Ref(job, rank, inc);
    req.set_step(step);
    return store_->BeginCheckpoint(req);
  }

  absl::StatusOr<std::vector<bool>> Claim(const std::string& job, int rank, int64_t step,
                                          const std::vector<ChunkId>& ids,
                                          int64_t inc = 1) {
    v1::ClaimChunksRequest req;
    *req.mutable_rank() = Ref(job, rank, inc);
    req.set_step(step);
    for (const ChunkId& id : ids) req.add_ids(std::string(id.AsBytes()));
    auto resp = store_->ClaimChunks(req);
    if (!resp.ok()) return resp.status();
    return std::vector<bool>(resp->present().begin(), resp->present().end());
  }

  absl::StatusOr<v1::CommitRankResponse> Commit(const std::string& job, int rank,
                                                int64_t step, const RankManifest& m,
                                                int64_t inc = 1) {
    v1::CommitRankRequest req;
    *req.mutable_rank() = Ref(job, rank, inc);
    req.set_step(step);
    *req.mutable_manifest() = m;
    return store_->CommitRank(req);
  }

  absl::Status Abort(const std::string& job, int rank, int64_t step, int64_t inc = 1) {
    v1::AbortCheckpointRequest req;
    *req.mutable_rank() = Ref(job, rank, inc);
    req.set_step(step);
    req.set_reason("test");
    return store_->AbortCheckpoint(req).status();
  }

  // Begins and commits `step` on every rank of a world_size-1 job, naming
  // `ids` (uploaded first).
  absl::Status CommitSingle(const std::string& job, int64_t step,
                            const std::vector<ChunkId>& ids, int64_t inc = 1) {
    auto begin = Begin(job, 0, step, inc);
    if (!begin.ok()) return begin.status();
    auto claim = Claim(job, 0, step, ids, inc);
    if (!claim.ok()) return claim.status();
    auto commit = Commit(job, 0, step, Manifest({Whole("w", ids)}), inc);
    if (!commit.ok()) return commit.status();
    if (!commit->checkpoint_committed()) return absl::InternalError("not committed");
    return absl::OkStatus();
  }

  absl::StatusOr<CheckpointInfo> Info(const std::string& job, int64_t step) {
    auto list = store_->ListCheckpoints(job);
    if (!list.ok()) return list.status();
    for (const CheckpointInfo& c : list->checkpoints()) {
      if (c.step() == step) return c;
    }
    return absl::NotFoundError(absl::StrCat("no step ", step));
  }

  std::vector<int64_t> Steps(const std::string& job) {
    std::vector<int64_t> steps;
    auto list = store_->ListCheckpoints(job);
    EXPECT_TRUE(list.ok()) << list.status();
    if (list.ok()) {
      for (const CheckpointInfo& c : list->checkpoints()) steps.push_back(c.step());
    }
    return steps;
  }

  testing::TempDir tmp_;
  FakeClock clock_;
  CoordinatorOptions options_;
  std::unique_ptr<storage::ChunkStore> chunks_;
  std::unique_ptr<HookedTier> tier_;
  std::unique_ptr<CoordinatorStore> store_;
};

TEST_F(CoordinatorStoreTest, RegisterDescribeList) {
  v1::RegisterJobRequest req;
  req.set_job_id("llama-7b.run_2");
  req.set_world_size(8);
  req.set_scheduler("local");
  auto created = store_->RegisterJob(req);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->created());
  EXPECT_EQ(created->job().retention().keep_last(), 3u);  // the default policy
  EXPECT_EQ(created->job().latest_committed(), -1);
  EXPECT_EQ(created->job().restore_target(), -1);

  auto again = store_->RegisterJob(req);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created());
  req.set_world_size(16);
  EXPECT_CODE(store_->RegisterJob(req), kFailedPrecondition);

  ASSERT_OK(Register("a-job", 1));
  auto described = store_->DescribeJob("llama-7b.run_2");
  ASSERT_TRUE(described.ok()) << described.status();
  EXPECT_EQ(described->world_size(), 8);
  EXPECT_EQ(described->scheduler(), "local");
  EXPECT_CODE(store_->DescribeJob("nope"), kNotFound);
  auto jobs = store_->ListJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->jobs_size(), 2);
  EXPECT_EQ(jobs->jobs(0).job_id(), "a-job");  // ordered by id

  for (const std::string& bad :
       std::vector<std::string>{"", "has space", "a/b", "ünïcode", std::string(129, 'x'),
                                std::string("nul\0x", 5)}) {
    absl::Status status = Register(bad, 1);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(status.message().find("A-Z, a-z, 0-9"), std::string::npos) << status;
  }
  ASSERT_OK(Register(std::string(128, 'x'), 1));
  for (int bad : {0, -1, 65537}) {
    absl::Status status = Register("w", bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(status.message().find("1..65536"), std::string::npos) << status;
  }
  ASSERT_OK(Register("w", 65536));
}

TEST_F(CoordinatorStoreTest, InvalidManifestsAreRejectedWithExactCodes) {
  ASSERT_OK(Register("job", 2));
  ASSERT_TRUE(Begin("job", 0, 1).ok());
  const ChunkId a = Upload(1), b = Upload(2);

  struct Case {
    std::string what;
    std::function<void(RankManifest*)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"unknown dtype", [](RankManifest* m) { m->mutable_tensors(0)->set_dtype("f32"); },
       "unknown dtype"},
      {"byte_length", [](RankManifest* m) { m->mutable_tensors(0)->set_byte_length(1); },
       "does not match shape"},
      {"negative dim",
       [](RankManifest* m) {
         m->mutable_tensors(0)->set_shape(0, -256);
         m->mutable_tensors(0)->set_global_offset(0, 0);
       },
       "negative"},
      {"global rank", [](RankManifest* m) { m->mutable_tensors(0)->add_global_shape(1); },
       "same number of dims"},
      {"missing global shape",
       [](RankManifest* m) { m->mutable_tensors(0)->clear_global_shape(); },
       "same number of dims"},
      {"outside global",
       [](RankManifest* m) { m->mutable_tensors(0)->set_global_offset(0, 1); },
       "does not fit in global_shape"},
      {"negative offset",
       [](RankManifest* m) { m->mutable_tensors(0)->set_global_offset(0, -1); },
       "negative"},
      {"zero-length chunk",
       [](RankManifest* m) { m->mutable_tensors(0)->mutable_chunks(0)->set_length(0); },
       "must be in 1.."},
      {"chunk over 16 MiB",
       [](RankManifest* m) {
         m->mutable_tensors(0)->mutable_chunks(0)->set_length((16u << 20) + 1);
       },
       "must be in 1.."},
      {"chunks do not add up",
       [](RankManifest* m) { m->mutable_tensors(0)->mutable_chunks()->RemoveLast(); },
       "add up to"},
      {"short id",
       [](RankManifest* m) { m->mutable_tensors(0)->mutable_chunks(0)->set_id("abc"); },
       "32-byte"},
      {"duplicate tensor", [](RankManifest* m) { *m->add_tensors() = m->tensors(0); },
       "duplicate tensor name"},
      {"duplicate blob",
       [](RankManifest* m) {
         for (int i = 0; i < 2; ++i) {
           v1::BlobEntry* blob = m->add_blobs();
           blob->set_name("rng");
         }
       },
       "duplicate blob name"},
      {"empty name", [](RankManifest* m) { m->mutable_tensors(0)->set_name(""); },
       "is invalid"},
      {"blob chunks",
       [](RankManifest* m) {
         v1::BlobEntry* blob = m->add_blobs();
         blob->set_name("rng");
         blob->set_byte_length(5);
       },
       "add up to"},
  };
  for (const Case& c : cases) {
    RankManifest m = Manifest({Whole("w", {a, b})});
    c.mutate(&m);
    auto result = Commit("job", 0, 1, m);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << c.what << ": " << result.status();
    EXPECT_NE(result.status().message().find(c.message), std::string::npos)
        << c.what << ": " << result.status();
  }

  // Limits.
  options_.max_manifest_entries = 2;
  options_.max_manifest_bytes = 1024;
  ASSERT_OK(Reopen());
  EXPECT_CODE(
      Commit("job", 0, 1, Manifest({Whole("x", {a}), Whole("y", {a}), Whole("z", {a})})),
      kInvalidArgument);
  TensorEntry big = Whole("w", {a});
  big.set_name(std::string(1000, 'n'));
  EXPECT_CODE(Commit("job", 0, 1, Manifest({big, Whole("y", {a})})), kInvalidArgument);

  // Rank out of range, step and incarnation out of range.
  EXPECT_CODE(Commit("job", 2, 1, Manifest({Whole("w", {a})})), kInvalidArgument);
  EXPECT_CODE(Commit("job", -1, 1, Manifest({Whole("w", {a})})), kInvalidArgument);
  EXPECT_CODE(Commit("job", 0, -5, Manifest({Whole("w", {a})})), kInvalidArgument);
  EXPECT_CODE(Commit("job", 0, 1, Manifest({Whole("w", {a})}), -1), kInvalidArgument);

  // Nothing was recorded by any of them.
  auto info = Info("job", 1);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->ranks_committed(), 0);
  EXPECT_EQ(store_->TEST_Claims(a), 0);
}

TEST_F(CoordinatorStoreTest, CommitPreconditions) {
  ASSERT_OK(Register("job", 2));
  const ChunkId a = Upload(1);
  const ChunkId missing = NotUploaded(99);
  // Not begun.
  auto r = Commit("job", 0, 7, Manifest({Whole("w", {a})}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("BeginCheckpoint"), std::string::npos);
  EXPECT_CODE(Begin("nojob", 0, 7), kNotFound);

  // A chunk that is not on the tier.
  ASSERT_TRUE(Begin("job", 0, 7).ok());
  r = Commit("job", 0, 7, Manifest({Whole("w", {a, missing})}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find(missing.ToHex()), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("upload them first"), std::string::npos);

  // Idempotent re-commit; a different manifest for the same rank is refused.
  const RankManifest m0 = Manifest({Whole("w", {a})});
  r = Commit("job", 0, 7, m0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->checkpoint_committed());
  EXPECT_EQ(r->ranks_committed(), 1);
  r = Commit("job", 0, 7, m0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ranks_committed(), 1);
  EXPECT_CODE(Commit("job", 0, 7, Manifest({Whole("v", {a})})), kFailedPrecondition);

  r = Commit("job", 1, 7, Manifest({Whole("w", {a})}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());
  // Replays after the commit still succeed and say so; Begin says it exists.
  r = Commit("job", 0, 7, m0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());
  EXPECT_CODE(Begin("job", 0, 7), kAlreadyExists);
  EXPECT_CODE(Claim("job", 0, 7, {a}), kFailedPrecondition);
  EXPECT_CODE(Abort("job", 0, 7), kFailedPrecondition);
}

TEST_F(CoordinatorStoreTest, ShardsAcrossRanksMustBeReplicasOrDisjoint) {
  ASSERT_OK(Register("job", 4));
  ASSERT_TRUE(Begin("job", 0, 1).ok());
  const ChunkId a = Upload(1), b = Upload(2);
  // [8, 64] float32 split by rows: rank 0 rows 0..3, rank 1 rows 4..7;
  // rank 2 is a replica of rank 0 (data parallel); "e" is unsharded on all.
  auto shard = [&](int64_t row, const ChunkId& id) {
    return Tensor("w", {4, 64}, {8, 64}, {row, 0}, {id});
  };
  ASSERT_TRUE(Commit("job", 0, 1, Manifest({shard(0, a), Whole("e", {b})})).ok());
  ASSERT_TRUE(Commit("job", 1, 1, Manifest({shard(4, b), Whole("e", {b})})).ok());
  ASSERT_TRUE(Commit("job", 2, 1, Manifest({shard(0, a), Whole("e", {b})})).ok());

  // Rank 3: rows 2..5 overlap both shards partially.
  auto r = Commit("job", 3, 1, Manifest({shard(2, a), Whole("e", {b})}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("'w'"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("rank 3"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("partially overlaps rank"), std::string::npos);
  // A different global shape or dtype for the same name.
  r = Commit("job", 3, 1,
             Manifest({Tensor("w", {4, 64}, {12, 64}, {8, 0}, {a}), Whole("e", {b})}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("must agree"), std::string::npos) << r.status();
  r = Commit("job", 3, 1,
             Manifest({shard(4, b), Tensor("e", {256}, {256}, {0}, {b}, "int32")}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  // The rejected commits changed nothing; a valid one completes it.
  r = Commit("job", 3, 1, Manifest({shard(4, b), Whole("e", {b})}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());
  EXPECT_EQ(store_->TEST_Refcount(a), 1);
  EXPECT_EQ(store_->TEST_Refcount(b), 1);  // named by every rank: one reference

  // Column split (dim 1) with many shards, and an overlap on dim 1 only.
  ASSERT_OK(Register("cols", 3));
  ASSERT_TRUE(Begin("cols", 0, 1).ok());
  auto col = [&](int64_t c0, int64_t width) {
    return Tensor("w", {1, width}, {1, 768}, {0, c0}, {a});
  };
  ASSERT_TRUE(Commit("cols", 0, 1, Manifest({col(0, 256)})).ok());
  ASSERT_TRUE(Commit("cols", 1, 1, Manifest({col(512, 256)})).ok());
  EXPECT_CODE(Commit("cols", 2, 1, Manifest({col(300, 256)})), kInvalidArgument);
  ASSERT_TRUE(Commit("cols", 2, 1, Manifest({col(256, 256)})).ok());
}

TEST_F(CoordinatorStoreTest, CommitsOnlyWhenEveryRankCommitted) {
  ASSERT_OK(Register("job", 4));
  std::vector<ChunkId> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(Upload(10 + i));
  for (int rank = 0; rank < 4; ++rank) ASSERT_TRUE(Begin("job", rank, 100).ok());
  auto shard = [&](int rank) {
    return Manifest({Tensor("w", {256}, {1024}, {256 * rank}, {ids[rank]})});
  };
  for (int rank = 0; rank < 3; ++rank) {
    auto r = Commit("job", rank, 100, shard(rank));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->checkpoint_committed());
    EXPECT_EQ(r->ranks_committed(), rank + 1);
    EXPECT_EQ(Info("job", 100)->state(), v1::WRITING);
    EXPECT_CODE(store_->GetLatest("job"), kNotFound);
    v1::GetManifestRequest get;
    get.set_job_id("job");
    get.set_step(100);
    get.set_rank(0);
    auto manifest = store_->GetManifest(get);
    EXPECT_EQ(manifest.status().code(), absl::StatusCode::kNotFound);
    EXPECT_NE(manifest.status().message().find("WRITING"), std::string::npos);
    EXPECT_EQ(store_->TEST_Refcount(ids[rank]), -1);  // claimed, not referenced
    EXPECT_EQ(store_->TEST_Claims(ids[rank]), 1);
  }
  auto r = Commit("job", 3, 100, shard(3));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());
  EXPECT_EQ(r->ranks_committed(), 4);
  auto info = Info("job", 100);
  EXPECT_EQ(info->state(), v1::COMMITTED);
  EXPECT_EQ(info->logical_bytes(), 4 * kChunkBytes);
  EXPECT_GT(info->committed_unix_ms(), 0);
  auto latest = store_->GetLatest("job");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->step(), 100);
  EXPECT_FALSE(latest->is_restore_target());
  for (int rank = 0; rank < 4; ++rank) {
    EXPECT_EQ(store_->TEST_Refcount(ids[rank]), 1);
    EXPECT_EQ(store_->TEST_Claims(ids[rank]), 0);
    v1::GetManifestRequest get;
    get.set_job_id("job");
    get.set_step(100);
    get.set_rank(rank);
    auto manifest = store_->GetManifest(get);
    ASSERT_TRUE(manifest.ok()) << manifest.status();
    EXPECT_EQ(manifest->manifest().SerializeAsString(), shard(rank).SerializeAsString());
    EXPECT_EQ(manifest->world_size(), 4);
  }

  // A later step that is still being written never becomes latest.
  ASSERT_TRUE(Begin("job", 0, 200).ok());
  ASSERT_TRUE(Commit("job", 0, 200, shard(0)).ok());
  EXPECT_EQ(store_->GetLatest("job")->step(), 100);
  EXPECT_EQ(store_->DescribeJob("job")->latest_committed(), 100);
}

TEST_F(CoordinatorStoreTest, IncarnationFencing) {
  ASSERT_OK(Register("job", 2));
  const ChunkId a = Upload(1), b = Upload(2);
  ASSERT_TRUE(Begin("job", 0, 10, /*inc=*/5).ok());
  ASSERT_TRUE(Claim("job", 0, 10, {a}, 5).ok());
  ASSERT_TRUE(
      Commit("job", 0, 10, Manifest({Tensor("w", {256}, {512}, {0}, {a})}), 5).ok());
  EXPECT_EQ(store_->TEST_Claims(a), 1);

  // A newer incarnation (the job restarted) aborts incarnation 5's WRITING
  // checkpoint and releases its claims, in the same write.
  ASSERT_TRUE(Begin("job", 1, 20, /*inc=*/6).ok());
  auto old = Info("job", 10);
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->state(), v1::ABORTED);
  EXPECT_NE(old->abort_reason().find("superseded by incarnation 6"), std::string::npos);
  EXPECT_EQ(store_->TEST_Claims(a), 0);
  EXPECT_EQ(store_->DescribeJob("job")->incarnation(), 6);

  // The zombie rank of incarnation 5 is refused everywhere.
  auto r = Commit("job", 1, 10, Manifest({Tensor("w", {256}, {512}, {256}, {b})}), 5);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.status().message(),
            "stale incarnation 5; the job is at incarnation 6: this process belongs to a "
            "previous run and must exit");
  EXPECT_CODE(Begin("job", 0, 30, 5), kFailedPrecondition);
  EXPECT_CODE(Claim("job", 0, 20, {a}, 5), kFailedPrecondition);
  EXPECT_CODE(Abort("job", 0, 20, 5), kFailedPrecondition);

  // The new run may save step 10 again: the aborted attempt is replaced.
  ASSERT_TRUE(Begin("job", 0, 10, 6).ok());
  EXPECT_EQ(Info("job", 10)->state(), v1::WRITING);
  EXPECT_EQ(Info("job", 10)->incarnation(), 6);
  // But within one incarnation an aborted step stays aborted.
  ASSERT_OK(Abort("job", 0, 10, 6));
  EXPECT_CODE(Begin("job", 1, 10, 6), kAborted);
  EXPECT_CODE(Commit("job", 1, 10, Manifest({Whole("w", {a})}), 6), kAborted);
  ASSERT_OK(Abort("job", 1, 10, 6));  // idempotent
}

TEST_F(CoordinatorStoreTest, RestoreTarget) {
  ASSERT_OK(Register("job", 1));
  const ChunkId a = Upload(1);
  ASSERT_OK(CommitSingle("job", 10, {a}));
  ASSERT_OK(CommitSingle("job", 20, {a}));
  ASSERT_TRUE(Begin("job", 0, 30).ok());

  EXPECT_CODE(store_->SetRestoreTarget("job", 30), kFailedPrecondition);  // WRITING
  EXPECT_CODE(store_->SetRestoreTarget("job", 40), kNotFound);
  auto job = store_->SetRestoreTarget("job", 10);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->restore_target(), 10);
  auto latest = store_->GetLatest("job");
  EXPECT_EQ(latest->step(), 10);
  EXPECT_TRUE(latest->is_restore_target());

  auto del = store_->DeleteCheckpoint("job", 10);
  EXPECT_EQ(del.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(del.status().message().find("clear the restore target first"),
            std::string::npos);
  // Retention keeps the target even when no rule would.
  ASSERT_OK(CommitSingle("job", 40, {a}));
  ASSERT_OK(CommitSingle("job", 50, {a}));
  ASSERT_OK(CommitSingle("job", 60, {a}));
  ASSERT_TRUE(store_->CollectGarbage().ok());
  EXPECT_EQ(Steps("job"), (std::vector<int64_t>{10, 30, 40, 50, 60}));

  ASSERT_TRUE(store_->ClearRestoreTarget("job").ok());
  EXPECT_EQ(store_->GetLatest("job")->step(), 60);
  EXPECT_FALSE(store_->GetLatest("job")->is_restore_target());
}

TEST_F(CoordinatorStoreTest, PinUnpinDelete) {
  ASSERT_OK(Register("job", 1));
  const ChunkId a = Upload(1), b = Upload(2);
  ASSERT_OK(CommitSingle("job", 1, {a}));
  ASSERT_OK(CommitSingle("job", 2, {a, b}));
  ASSERT_TRUE(Begin("job", 0, 3).ok());
  EXPECT_CODE(store_->PinCheckpoint("job", 3, true), kFailedPrecondition);
  EXPECT_CODE(store_->PinCheckpoint("job", 9, true), kNotFound);

  auto pinned = store_->PinCheckpoint("job", 2, true);
  ASSERT_TRUE(pinned.ok());
  EXPECT_TRUE(pinned->pinned());
  auto del = store_->DeleteCheckpoint("job", 2);
  EXPECT_EQ(del.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(del.status().message().find("unpin first"), std::string::npos);
  ASSERT_FALSE(store_->PinCheckpoint("job", 2, false)->pinned());
  ASSERT_FALSE(store_->PinCheckpoint("job", 2, false)->pinned());  // idempotent

  EXPECT_EQ(store_->TEST_Refcount(a), 2);
  ASSERT_TRUE(store_->DeleteCheckpoint("job", 2).ok());
  EXPECT_EQ(store_->TEST_Refcount(a), 1);
  EXPECT_EQ(store_->TEST_Refcount(b), 0);
  EXPECT_EQ(store_->GetLatest("job")->step(), 1);  // latest moved back

  ASSERT_TRUE(store_->DeleteCheckpoint("job", 3).ok());  // WRITING: aborted
  EXPECT_EQ(Info("job", 3)->state(), v1::ABORTED);
  ASSERT_TRUE(store_->DeleteCheckpoint("job", 3).ok());  // ABORTED: forgotten
  EXPECT_CODE(Info("job", 3), kNotFound);
  EXPECT_CODE(store_->DeleteCheckpoint("job", 3), kNotFound);

  ASSERT_TRUE(store_->DeleteCheckpoint("job", 1).ok());
  EXPECT_CODE(store_->GetLatest("job"), kNotFound);
  EXPECT_EQ(store_->DescribeJob("job")->latest_committed(), -1);
}

TEST_F(CoordinatorStoreTest, Retention) {
  v1::RetentionPolicy policy;
  policy.set_keep_last(2);
  policy.set_keep_every_n_steps(10);
  ASSERT_OK(Register("job", 1, &policy));
  ASSERT_OK(Register("all", 1, nullptr));
  const ChunkId a = Upload(1);
  for (int64_t step : {5, 10, 15, 20, 25, 30, 35, 40, 45}) {
    ASSERT_OK(CommitSingle("job", step, {a}));
    ASSERT_OK(CommitSingle("all", step, {a}));
  }
  ASSERT_TRUE(store_->PinCheckpoint("job", 15, true).ok());
  ASSERT_TRUE(Begin("job", 0, 50).ok());  // WRITING: not retention's business
  auto gc = store_->CollectGarbage();
  ASSERT_TRUE(gc.ok()) << gc.status();
  // job: every 10th, pinned 15, the newest two (40, 45), and the WRITING 50.
  EXPECT_EQ(Steps("job"), (std::vector<int64_t>{10, 15, 20, 30, 40, 45, 50}));
  // all: the default policy, keep_last 3.
  EXPECT_EQ(Steps("all"), (std::vector<int64_t>{35, 40, 45}));
  EXPECT_EQ(gc->checkpoints_deleted(), 3u + 6u);
  EXPECT_EQ(store_->TEST_Refcount(a), 18 - 9);
  EXPECT_EQ(store_->GetLatest("job")->step(), 45);
  EXPECT_EQ(gc->chunks_deleted(), 0u);
  EXPECT_TRUE(OnTier(a));
}

TEST_F(CoordinatorStoreTest, LeaseExpiryAbortsAndReleasesClaims) {
  ASSERT_OK(Register("job", 2));
  const ChunkId a = Upload(1), fresh = Upload(2);
  ASSERT_TRUE(Begin("job", 0, 1).ok());
  ASSERT_TRUE(Claim("job", 0, 1, {a, fresh}).ok());
  clock_.Advance(absl::Minutes(29));
  auto gc = store_->CollectGarbage();
  ASSERT_TRUE(gc.ok());
  EXPECT_EQ(gc->checkpoints_aborted(), 0u);
  ASSERT_TRUE(Claim("job", 1, 1, {a}).ok());  // activity renews the lease
  clock_.Advance(absl::Minutes(29));
  EXPECT_EQ(store_->CollectGarbage()->checkpoints_aborted(), 0u);
  EXPECT_TRUE(OnTier(a));
  clock_.Advance(absl::Minutes(2));
  gc = store_->CollectGarbage();
  ASSERT_TRUE(gc.ok());
  EXPECT_EQ(gc->checkpoints_aborted(), 1u);
  auto info = Info("job", 1);
  EXPECT_EQ(info->state(), v1::ABORTED);
  EXPECT_NE(info->abort_reason().find("lease expired"), std::string::npos);
  // Its chunks were only claimed, never referenced: now they are garbage.
  EXPECT_EQ(gc->chunks_deleted(), 2u);
  EXPECT_FALSE(OnTier(a));
  EXPECT_FALSE(OnTier(fresh));
  // The aborted record is forgotten one lease later.
  clock_.Advance(absl::Minutes(31));
  ASSERT_TRUE(store_->CollectGarbage().ok());
  EXPECT_CODE(Info("job", 1), kNotFound);
}

TEST_F(CoordinatorStoreTest, RefcountsAcrossSharedCheckpoints) {
  ASSERT_OK(Register("job", 2));
  const ChunkId x = Upload(1), y = Upload(2), z = Upload(3);
  // Step 1: rank 0 names x and y, rank 1 names y (twice) — y counts once.
  ASSERT_TRUE(Begin("job", 0, 1).ok());
  ASSERT_TRUE(Commit("job", 0, 1,
                     Manifest({Tensor("w", {256}, {512}, {0}, {x}), Whole("e", {y})}))
                  .ok());
  ASSERT_TRUE(Commit("job", 1, 1,
                     Manifest({Tensor("w", {256}, {512}, {256}, {y}), Whole("e", {y})}))
                  .ok());
  EXPECT_EQ(store_->TEST_Refcount(x), 1);
  EXPECT_EQ(store_->TEST_Refcount(y), 1);
  // Step 2 shares y and adds z.
  ASSERT_TRUE(Begin("job", 0, 2).ok());
  ASSERT_TRUE(Commit("job", 0, 2, Manifest({Whole("e", {y, z})})).ok());
  ASSERT_TRUE(Commit("job", 1, 2, Manifest({Whole("e", {y, z})})).ok());
  EXPECT_EQ(store_->TEST_Refcount(y), 2);
  EXPECT_EQ(store_->TEST_Refcount(z), 1);

  ASSERT_TRUE(store_->DeleteCheckpoint("job", 1).ok());
  EXPECT_EQ(store_->TEST_Refcount(x), 0);
  EXPECT_EQ(store_->TEST_Refcount(y), 1);
  auto gc = store_->CollectGarbage();
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_EQ(gc->chunks_deleted(), 1u);
  EXPECT_FALSE(OnTier(x));
  EXPECT_EQ(store_->TEST_Refcount(x), -1);  // metadata gone too
  EXPECT_TRUE(OnTier(y));
  EXPECT_TRUE(OnTier(z));
  v1::GetManifestRequest get;
  get.set_job_id("job");
  get.set_step(2);
  get.set_rank(1);
  ASSERT_TRUE(store_->GetManifest(get).ok());
}

TEST_F(CoordinatorStoreTest, GracePeriodDelaysDeletion) {
  options_.gc_grace = absl::Minutes(10);
  ASSERT_OK(Reopen());
  ASSERT_OK(Register("job", 1));
  const ChunkId a = Upload(1);
  ASSERT_OK(CommitSingle("job", 1, {a}));
  ASSERT_TRUE(store_->DeleteCheckpoint("job", 1).ok());
  clock_.Advance(absl::Minutes(9));
  EXPECT_EQ(store_->CollectGarbage()->chunks_deleted(), 0u);
  EXPECT_TRUE(OnTier(a));
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(store_->CollectGarbage()->chunks_deleted(), 1u);
  EXPECT_FALSE(OnTier(a));
}

// THE GC race: a rank finds chunk X already stored (refcount 0, left over
// from a deleted checkpoint), so it does not upload it. GC runs before the
// rank commits. X must survive, and the commit must reference it.
TEST_F(CoordinatorStoreTest, GcRaceClaimedChunkIsNeverCollected) {
  ASSERT_OK(Register("job", 1));
  const ChunkId x = Upload(1);
  ASSERT_OK(CommitSingle("job", 1, {x}));
  ASSERT_TRUE(store_->DeleteCheckpoint("job", 1).ok());
  ASSERT_EQ(store_->TEST_Refcount(x), 0);  // collectable (grace 0)

  ASSERT_TRUE(Begin("job", 0, 2).ok());
  auto present = Claim("job", 0, 2, {x});
  ASSERT_TRUE(present.ok()) << present.status();
  ASSERT_TRUE((*present)[0]);  // so the rank skips the upload

  auto gc = store_->CollectGarbage();
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_EQ(gc->chunks_deleted(), 0u);
  EXPECT_EQ(tier_->deletes, 0u);
  EXPECT_TRUE(OnTier(x));

  auto r = Commit("job", 0, 2, Manifest({Whole("w", {x})}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());
  EXPECT_EQ(store_->TEST_Refcount(x), 1);
  EXPECT_EQ(store_->CollectGarbage()->chunks_deleted(), 0u);
  EXPECT_TRUE(OnTier(x));
}

// The same race, but the checkpoint aborts: the claim goes, and X is
// collected.
TEST_F(CoordinatorStoreTest, GcRaceAbortedClaimLetsChunkGo) {
  ASSERT_OK(Register("job", 1));
  const ChunkId x = Upload(1);
  ASSERT_OK(CommitSingle("job", 1, {x}));
  ASSERT_TRUE(store_->DeleteCheckpoint("job", 1).ok());
  ASSERT_TRUE(Begin("job", 0, 2).ok());
  ASSERT_TRUE((*Claim("job", 0, 2, {x}))[0]);
  EXPECT_EQ(store_->CollectGarbage()->chunks_deleted(), 0u);
  EXPECT_TRUE(OnTier(x));

  ASSERT_OK(Abort("job", 0, 2));
  EXPECT_EQ(store_->TEST_Claims(x), 0);
  EXPECT_EQ(store_->CollectGarbage()->chunks_deleted(), 1u);
  EXPECT_FALSE(OnTier(x));
  EXPECT_EQ(store_->TEST_Refcount(x), -1);
}

// A committed rank's chunks are protected while the other ranks are still
// writing, even when the rank never called ClaimChunks for them.
TEST_F(CoordinatorStoreTest, CommittedRankChunksAreProtectedUntilTheGlobalCommit) {
  ASSERT_OK(Register("job", 2));
  ASSERT_OK(Register("other", 1));
  const ChunkId x = Upload(1), y = Upload(2);
  // x is refcount 0, left over from a deleted checkpoint of another job.
  ASSERT_OK(CommitSingle("other", 1, {x}));
  ASSERT_TRUE(store_->DeleteCheckpoint("other", 1).ok());
  ASSERT_EQ(store_->TEST_Refcount(x), 0);
  ASSERT_TRUE(Begin("job", 0, 1).ok());
  ASSERT_TRUE(Commit("job", 0, 1, Manifest({Tensor("w", {256}, {512}, {0}, {x})})).ok());
  EXPECT_EQ(store_->TEST_Claims(x), 1);
  EXPECT_EQ(store_->CollectGarbage()->chunks_deleted(), 0u);
  EXPECT_TRUE(OnTier(x));
  ASSERT_TRUE(
      Commit("job", 1, 1, Manifest({Tensor("w", {256}, {512}, {256}, {y})})).ok());
  EXPECT_EQ(store_->TEST_Refcount(x), 1);
  EXPECT_EQ(store_->TEST_Refcount(y), 1);
}

// GC runs while CommitRank is between its tier check and its write (the
// hook runs after the tier's Has has answered "present"). The rank did not
// claim the chunk (a protocol violation), so GC may delete it — and then the
// commit must notice, ask again, and refuse: never reference a deleted chunk.
TEST_F(CoordinatorStoreTest, GcDuringCommitIsDetected) {
  ASSERT_OK(Register("job", 1));
  const ChunkId x = Upload(1);
  ASSERT_OK(CommitSingle("job", 1, {x}));
  ASSERT_TRUE(store_->DeleteCheckpoint("job", 1).ok());
  ASSERT_TRUE(Begin("job", 0, 2).ok());
  uint64_t deleted = 0;
  tier_->on_has = [&] { deleted = store_->CollectGarbage()->chunks_deleted(); };
  auto r = Commit("job", 0, 2, Manifest({Whole("w", {x})}));
  EXPECT_EQ(deleted, 1u);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("upload them first"), std::string::npos);
  EXPECT_EQ(Info("job", 2)->ranks_committed(), 0);
  // Uploaded again, the commit goes through.
  Upload(1);
  ASSERT_TRUE(Commit("job", 0, 2, Manifest({Whole("w", {x})})).ok());
  EXPECT_EQ(store_->TEST_Refcount(x), 1);
}

TEST_F(CoordinatorStoreTest, ReopenKeepsEverything) {
  ASSERT_OK(Register("job", 2));
  const ChunkId a = Upload(1), b = Upload(2), c = Upload(3);
  ASSERT_TRUE(Begin("job", 0, 1).ok());
  ASSERT_TRUE(Commit("job", 0, 1, Manifest({Whole("e", {a})})).ok());
  ASSERT_TRUE(Commit("job", 1, 1, Manifest({Whole("e", {a})})).ok());
  ASSERT_TRUE(store_->PinCheckpoint("job", 1, true).ok());
  ASSERT_TRUE(store_->SetRestoreTarget("job", 1).ok());
  ASSERT_TRUE(Begin("job", 0, 2, 3).ok());
  ASSERT_TRUE(Claim("job", 0, 2, {b, c}, 3).ok());
  ASSERT_TRUE(
      Commit("job", 0, 2, Manifest({Tensor("w", {256}, {512}, {0}, {b})}), 3).ok());
  const std::string before = store_->ListCheckpoints("job")->SerializeAsString();

  ASSERT_OK(Reopen());
  EXPECT_EQ(store_->ListCheckpoints("job")->SerializeAsString(), before);
  auto job = store_->DescribeJob("job");
  EXPECT_EQ(job->incarnation(), 3);
  EXPECT_EQ(job->restore_target(), 1);
  EXPECT_EQ(store_->TEST_Refcount(a), 1);
  EXPECT_EQ(store_->TEST_Claims(b), 1);
  EXPECT_EQ(store_->TEST_Claims(c), 1);
  EXPECT_CODE(Commit("job", 1, 2, Manifest({Whole("w", {c})}), 2), kFailedPrecondition);
  // The shard index survived too: an overlapping shard is still refused.
  EXPECT_CODE(Commit("job", 1, 2, Manifest({Tensor("w", {256}, {512}, {128}, {c})}), 3),
              kInvalidArgument);
  auto r = Commit("job", 1, 2, Manifest({Tensor("w", {256}, {512}, {256}, {c})}), 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->checkpoint_committed());
  ASSERT_OK(Reopen());
  EXPECT_EQ(store_->GetLatest("job")->step(), 1);  // the restore target wins
  ASSERT_TRUE(store_->ClearRestoreTarget("job").ok());
  EXPECT_EQ(store_->GetLatest("job")->step(), 2);
  EXPECT_EQ(store_->TEST_Claims(b), 0);
  EXPECT_EQ(store_->TEST_Refcount(b), 1);
  EXPECT_EQ(store_->TEST_Refcount(c), 1);
}

}  // namespace
}  // namespace snapback::server
