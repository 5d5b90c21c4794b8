// CoordinatorStore: the coordinator's metadata engine — jobs, checkpoints,
// rank manifests, chunk references and claims — with no gRPC inside. The
// CoordinatorService (coordinator_service.h) is a thin gRPC face over it; the
// request and response types are the wire messages of
// proto/snapback/v1/coordinator.proto, whose comments define the semantics
// and error codes of each call.
//
// Durability. Metadata lives in its own RocksDB under DATA_DIR/meta. Every
// state change is one WriteBatch written with a synced WAL before the call
// returns, so a crash (even SIGKILL mid-call) leaves each change either
// fully applied or not at all: a checkpoint is never COMMITTED with a
// manifest or a chunk reference missing. The WAL is replayed with
// kAbsoluteConsistency, as in the chunk store and for the same reason: the
// default recovery mode silently drops every record after a damaged one,
// which here would forget acknowledged commits.
//
// The GC race. A rank skips uploading chunks the tier already has, so such a
// chunk must not be collected before the manifest naming it commits:
//   * ClaimChunks durably records a claim (chunk -> checkpoint) for every id
//     before it asks the tier which ids are present;
//   * CommitRank claims every chunk of the manifest in the batch that stores
//     it (so chunks of committed-but-not-yet-complete ranks are protected);
//   * GC deletes only chunks with refcount 0, no claim, and zero for at
//     least gc_grace, and it decides and deletes (tier first, metadata
//     second) while holding the writer lock that ClaimChunks takes, in
//     bounded batches. A claim either lands before GC's decision (the chunk
//     is skipped) or after the deletion (the tier reports it absent and the
//     rank uploads it);
//   * CommitRank checks the tier without the lock; a GC generation counter,
//     bumped by every GC deletion, tells it to check again if GC deleted
//     anything in between.
// When the checkpoint commits, its claims turn into references (refcount +1
// per distinct chunk per checkpoint) in the commit batch; when it aborts, the
// claims are dropped and chunks nobody references start their grace period.
//
// Refcounts count COMMITTED checkpoints: a chunk's refcount is the number of
// COMMITTED checkpoints whose manifests (any rank, any number of times) name
// it. A chunk shared by several ranks of one checkpoint counts once.
//
// Thread-safety: thread-safe. Mutations are serialized by one writer lock;
// reads take it shared. Tier calls (ClaimChunks' and CommitRank's presence
// checks) run without the lock, except GC deletions, which must hold it.
//
// Where the code is. The store is one class whose methods are defined by
// responsibility across coordinator/ (as RocksDB's DBImpl is):
//   coordinator_store.cc  Open, recovery of the in-memory claims, loaders
//   jobs.cc               jobs, incidents, incarnation fencing
//   commit.cc             the write path: Begin, Claim, CommitRank, Abort
//   checkpoints.cc        the read path and operator calls; abort/delete
//   gc.cc                 retention, lease expiry, chunk deletion
//   consistency.cc        CheckConsistency
//   txn.{h,cc}            Txn: one synced WriteBatch + in-memory changes
//   keys.{h,cc}           the key layout and value encodings
//   manifest_validation.{h,cc}  request checks that need no stored state
//   options.{h,cc}        CoordinatorOptions
//   chunk_tier.{h,cc}     the storage tier as the coordinator sees it
//   verify.{h,cc}         CheckpointVerifier: VerifyCheckpoint batch by batch
//                         (VerifyTargets and RecordVerification are in
//                         checkpoints.cc)
// The distributed tier adds its parts beside these: the node map (storage
// nodes, their liveness and capacity) in node_map.{h,cc}, chunk placement
// (rendezvous hashing over live nodes, R > 1) in placement.{h,cc} behind
// ChunkTier, and repair planning (re-replicating chunks of lost nodes) in
// repair.{h,cc}, driven from the GC loop's schedule.
#ifndef SNAPBACK_COORDINATOR_COORDINATOR_STORE_H_
#define SNAPBACK_COORDINATOR_COORDINATOR_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/hash.h"
#include "coordinator/chunk_tier.h"
#include "coordinator/cluster_tier.h"
#include "coordinator/options.h"
#include "snapback/v1/coordinator.pb.h"
#include "snapback/v1/detector.pb.h"
#include "storage/chunk_store.h"

namespace rocksdb {
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace snapback::coordinator {

// CoordinatorOptions and ValidateCoordinatorOptions() are in options.h.

// What CheckConsistency() found.
struct ConsistencyReport {
  uint64_t jobs = 0;
  uint64_t checkpoints = 0;
  uint64_t committed = 0;
  uint64_t manifests = 0;
  uint64_t referenced_chunks = 0;  // chunks with refcount > 0
  uint64_t claims = 0;
};

// A chunk a checkpoint names, where it is named first (for messages):
// rank, entry (an index into VerifyTarget::entries) and index in the
// entry's chunk list.
struct ChunkUse {
  ChunkId id;
  uint32_t length = 0;
  int32_t rank = 0;
  int32_t entry = 0;
  int32_t index = 0;
};

// A COMMITTED checkpoint to verify: its record, the names of its tensors
// and blobs (blob names prefixed with "blob:"), and every distinct chunk its
// manifests name.
struct VerifyTarget {
  v1::CheckpointInfo checkpoint;
  std::vector<std::string> entries;
  std::vector<ChunkUse> chunks;
};

class CoordinatorStore final : public CatalogView {
 public:
  // Opens (creating if needed) the metadata database in `dir` (the server
  // uses DATA_DIR/meta). `tier` is not owned and must outlive the store.
  // FAILED_PRECONDITION when the database is corrupt or was written by an
  // unknown format version (the message says what to do); UNAVAILABLE/
  // INTERNAL for I/O errors; INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<CoordinatorStore>> Open(
      const std::string& dir, ChunkTier* tier, CoordinatorOptions options = {});
  // Closes the database. No call may be running.
  ~CoordinatorStore();
  CoordinatorStore(const CoordinatorStore&) = delete;
  CoordinatorStore& operator=(const CoordinatorStore&) = delete;

  // Jobs. See coordinator.proto for the semantics and error codes.
  absl::StatusOr<v1::RegisterJobResponse> RegisterJob(const v1::RegisterJobRequest& req);
  absl::StatusOr<v1::JobInfo> DescribeJob(absl::string_view job_id);
  absl::StatusOr<v1::ListJobsResponse> ListJobs();

  // The write path of one rank: Begin -> Claim* -> (upload) -> CommitRank.
  absl::StatusOr<v1::BeginCheckpointResponse> BeginCheckpoint(
      const v1::BeginCheckpointRequest& req);
  absl::StatusOr<v1::ClaimChunksResponse> ClaimChunks(const v1::ClaimChunksRequest& req);
  absl::StatusOr<v1::CommitRankResponse> CommitRank(const v1::CommitRankRequest& req);
  absl::StatusOr<v1::AbortCheckpointResponse> AbortCheckpoint(
      const v1::AbortCheckpointRequest& req);

  // The read path and operator calls.
  absl::StatusOr<v1::GetLatestResponse> GetLatest(absl::string_view job_id);
  absl::StatusOr<v1::GetManifestResponse> GetManifest(const v1::GetManifestRequest& req);
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(absl::string_view job_id);
  absl::StatusOr<v1::CheckpointInfo> PinCheckpoint(absl::string_view job_id, int64_t step,
                                                   bool pinned);
  absl::StatusOr<v1::DeleteCheckpointResponse> DeleteCheckpoint(absl::string_view job_id,
                                                                int64_t step);
  absl::StatusOr<v1::JobInfo> SetRestoreTarget(absl::string_view job_id, int64_t step);
  absl::StatusOr<v1::JobInfo> ClearRestoreTarget(absl::string_view job_id);

  // Verification (VerifyCheckpoint; driven by CheckpointVerifier in
  // verify.h). VerifyTargets loads COMMITTED checkpoint (job_id, step), or
  // every COMMITTED checkpoint of the job newest first for step -1, with the
  // distinct chunks their manifests name: NOT_FOUND for an unknown job or
  // step (or a job with no COMMITTED checkpoint), FAILED_PRECONDITION for a
  // step that is not COMMITTED. RecordVerification writes the outcome on
  // checkpoint `verified` (damaged + damage_reason, or damaged cleared and
  // verified_unix_ms set), synced, only if it is still the same COMMITTED
  // checkpoint (same incarnation and commit time): ABORTED when it was
  // replaced, NOT_FOUND when it was deleted meanwhile. Returns the record.
  absl::StatusOr<std::vector<VerifyTarget>> VerifyTargets(absl::string_view job_id,
                                                          int64_t step);
  absl::StatusOr<v1::CheckpointInfo> RecordVerification(
      const v1::CheckpointInfo& verified, bool damaged, absl::string_view reason);
  // The storage tier the store checks chunks with (not owned).
  ChunkTier* tier() const { return tier_; }

  // The failure detector's calls. AdvanceIncarnation raises the job's
  // incarnation by one and aborts the WRITING checkpoints of older ones
  // (fencing every rank of the old run) in one synced write; returns the
  // updated job. PutIncident writes (creates or replaces) incident
  // (job_id, seq), synced; ListIncidents returns a job's, oldest first.
  // `at_least`: the new incarnation is max(current + 1, at_least).
  absl::StatusOr<v1::JobInfo> AdvanceIncarnation(absl::string_view job_id,
                                                 int64_t at_least = 0);
  absl::Status PutIncident(const v1::Incident& incident);
  // The operator audit log ("a/<seq:8>"): appends `entry` with the next
  // sequence number (synced); lists the last `limit` (0 = 1000), oldest
  // first.
  absl::Status AppendAudit(v1::AuditEntry entry);
  absl::StatusOr<std::vector<v1::AuditEntry>> ListAudit(int limit);
  absl::StatusOr<std::vector<v1::Incident>> ListIncidents(absl::string_view job_id);
  // The runs of a job as the detector watched them (JobRun): PutJobRun
  // writes (creates or replaces) run (job_id, run), synced; ListJobRuns
  // returns a job's, oldest first.
  absl::Status PutJobRun(const v1::JobRun& run);
  absl::StatusOr<std::vector<v1::JobRun>> ListJobRuns(absl::string_view job_id);

  // Retention, lease expiry, and chunk deletion (see the header comment).
  // On a tier error, chunks already deleted in earlier batches stay deleted
  // and their metadata is gone; the failing batch keeps its metadata and is
  // retried by the next call.
  absl::StatusOr<v1::CollectGarbageResponse> CollectGarbage();

  // CatalogView (catalog.cc), for the cluster tier's repair and
  // reconciliation.
  absl::Status ForEachCommittedChunk(
      const std::function<bool(const ChunkId&, uint32_t, int)>& fn) override;
  absl::StatusOr<std::vector<bool>> Wanted(absl::Span<const ChunkId> ids) override;

  // The catalogue on the tier (catalog.cc). PublishCommitted stores the
  // CatalogRecord of a COMMITTED checkpoint on the tier; ImportCommitted
  // writes one back into this (rebuilt) metadata: job (created if missing),
  // checkpoint, manifests and chunk references, in one synced batch. False
  // when the checkpoint already exists.
  absl::Status PublishCommitted(const std::string& job_id, int64_t step);
  absl::StatusOr<bool> ImportCommitted(const v1::CatalogRecord& record);

  // Full scan of the metadata, checking every invariant: each COMMITTED
  // checkpoint has all world_size manifests and no claims; each WRITING one
  // has exactly ranks_committed manifests; ABORTED ones have none; every
  // refcount equals the number of COMMITTED checkpoints naming the chunk;
  // the zero-refcount queue matches; claims in memory match the database;
  // latest_committed and restore targets point at COMMITTED checkpoints.
  // With `check_tier`, also that every referenced chunk is on the tier.
  // INTERNAL listing the first problems found. Expensive: for tests and
  // operator verification, not for the request path.
  absl::StatusOr<ConsistencyReport> CheckConsistency(bool check_tier = false);

  // Test hooks: a chunk's refcount (-1 when it has no refcount record) and
  // the number of checkpoints claiming it.
  int64_t TEST_Refcount(const ChunkId& id);
  int TEST_Claims(const ChunkId& id);

 private:
  class Txn;

  CoordinatorStore(std::string dir, ChunkTier* tier, CoordinatorOptions options);
  absl::Status Init();

  // Reads; return NOT_FOUND with a message saying what to do.
  absl::StatusOr<v1::JobInfo> LoadJob(absl::string_view job_id)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::CheckpointInfo> LoadCheckpoint(absl::string_view job_id,
                                                    int64_t step)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<v1::CheckpointInfo>> LoadCheckpoints(
      absl::string_view job_id) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<v1::JobInfo>> LoadJobs() ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Incarnation fencing for a call of `ref`: FAILED_PRECONDITION for a stale
  // incarnation; for a newer one, raises the job's incarnation and aborts
  // its older WRITING checkpoints in one synced batch. Updates *job.
  absl::Status Fence(const v1::RankRef& ref, v1::JobInfo* job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job of a rank's call, checked the way every rank call starts: the
  // job exists (NOT_FOUND), the rank is in range (INVALID_ARGUMENT), and the
  // incarnation is fenced (Fence).
  // Copies a new checkpoint of `job` gets (the job's, or the tier's
  // default); an error when the tier cannot hold that many.
  absl::StatusOr<int> ReplicationFor(const v1::JobInfo& job);
  absl::StatusOr<v1::JobInfo> LoadFencedJob(const v1::RankRef& ref)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Adds to `txn` what aborting WRITING checkpoint `ckpt` takes: state,
  // reason, manifests and shard index dropped, claims released.
  absl::Status AbortInTxn(Txn* txn, v1::CheckpointInfo ckpt, absl::string_view reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds to `txn` the removal of COMMITTED checkpoint `ckpt`: manifests and
  // record deleted, a reference dropped from each of its chunks, the job's
  // latest_committed recomputed (the caller writes *job).
  absl::Status DeleteCommittedInTxn(Txn* txn, const v1::CheckpointInfo& ckpt,
                                    v1::JobInfo* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases every claim of (job, step) into `txn`.
  absl::Status ReleaseClaimsInTxn(Txn* txn, absl::string_view job_id, int64_t step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // CommitRank's checks of the checkpoint state, done in every critical
  // section of the commit (the tier is checked between them, unlocked).
  // When the rank already committed this exact manifest (a retry after a
  // lost response), sets *replay to the response to return.
  absl::Status PrepareCommit(const v1::CommitRankRequest& req,
                             const std::string& manifest_bytes, v1::JobInfo* job,
                             v1::CheckpointInfo* ckpt,
                             std::optional<v1::CommitRankResponse>* replay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Validates the shards against the other ranks' and writes the commit
  // (the global commit when it is the last rank). `ids` are the manifest's
  // distinct chunk ids, all durable on the tier.
  absl::StatusOr<v1::CommitRankResponse> FinishCommit(
      const v1::CommitRankRequest& req, const std::string& manifest_bytes,
      const std::vector<ChunkId>& ids, uint64_t logical_bytes, v1::JobInfo job,
      v1::CheckpointInfo ckpt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // One GC phase each.
  absl::Status ApplyRetention(v1::CollectGarbageResponse* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DeleteUnreferencedChunks(v1::CollectGarbageResponse* out)
      ABSL_LOCKS_EXCLUDED(mu_);

  int64_t NowMs();

  const std::string dir_;
  ChunkTier* const tier_;
  const CoordinatorOptions options_;
  Clock* const clock_;

  std::unique_ptr<rocksdb::DB> db_;
  absl::Mutex mu_;
  // Checkpoints claiming each chunk, mirrored from the claim keys (rebuilt
  // by Open) so GC can ask "is it claimed?" without a reverse index.
  absl::flat_hash_map<ChunkId, int> claims_ ABSL_GUARDED_BY(mu_);
  // Bumped by every GC deletion from the tier; see the header comment.
  uint64_t gc_generation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace snapback::coordinator

#endif  // SNAPBACK_COORDINATOR_COORDINATOR_STORE_H_
