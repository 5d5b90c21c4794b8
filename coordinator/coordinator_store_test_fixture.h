// The fixture of the CoordinatorStore unit tests (coordinator_store_test.cc,
// coordinator_gc_test.cc): a real RocksDB under a temporary directory, a
// real ChunkStore as the tier, and a FakeClock, so leases and grace periods
// are driven without sleeping. Every test ends with a full consistency check
// of the metadata (TearDown).
#ifndef SNAPBACK_COORDINATOR_COORDINATOR_STORE_TEST_FIXTURE_H_
#define SNAPBACK_COORDINATOR_COORDINATOR_STORE_TEST_FIXTURE_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "coordinator/chunk_tier.h"
#include "coordinator/coordinator_store.h"
#include "gtest/gtest.h"
#include "storage/chunk_store.h"
#include "testing/test_util.h"

namespace snapback::coordinator::store_test {

using v1::CheckpointInfo;
using v1::RankManifest;
using v1::TensorEntry;

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (0)

inline absl::Status StatusOf(const absl::Status& s) { return s; }
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
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids,
                                        int copies) override {
    auto result = local_.Has(ids, copies);
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
inline constexpr size_t kChunkBytes = 1024;  // 256 float32

inline TensorEntry Tensor(const std::string& name, std::vector<int64_t> shape,
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
inline TensorEntry Whole(const std::string& name, const std::vector<ChunkId>& chunks) {
  const int64_t n = 256 * static_cast<int64_t>(chunks.size());
  return Tensor(name, {n}, {n}, {0}, chunks);
}

inline RankManifest Manifest(std::vector<TensorEntry> tensors) {
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
  ChunkId NotUploaded(uint64_t seed) { return testing::MakeChunk(kChunkBytes, seed).id; }
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

}  // namespace snapback::coordinator::store_test

#endif  // SNAPBACK_COORDINATOR_COORDINATOR_STORE_TEST_FIXTURE_H_
