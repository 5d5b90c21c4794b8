// Unit tests of the coordinator's retention, lease expiry and chunk garbage
// collection, including the GC race (see coordinator_store.h): a claimed
// chunk is never collected, and a GC inside a commit's unlocked window is
// detected. Part of the coordinator_store_test binary; the fixture is in
// coordinator_store_test_fixture.h.
#include <functional>
#include <string>
#include <vector>

#include "coordinator/coordinator_store_test_fixture.h"
#include "gtest/gtest.h"

namespace snapback::coordinator::store_test {
namespace {

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

}  // namespace
}  // namespace snapback::coordinator::store_test
