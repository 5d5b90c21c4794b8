// Unit tests of the coordinator's metadata engine: registration, request
// and manifest validation through the store, the commit protocol across
// ranks, incarnation fencing, restore targets, pin/unpin/delete, and
// reopening. Retention and garbage collection: coordinator_gc_test.cc. The
// fixture (real RocksDB, real ChunkStore, FakeClock; a consistency check
// after every test) is in coordinator_store_test_fixture.h.
#include <functional>
#include <string>
#include <vector>

#include "coordinator/coordinator_store_test_fixture.h"
#include "gtest/gtest.h"

namespace snapback::coordinator::store_test {
namespace {

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
}  // namespace snapback::coordinator::store_test
