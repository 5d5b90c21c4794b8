// SavePipeline: how a Save() becomes a committed checkpoint of one rank.
//
// A save moves through stages that overlap:
//   1. Plan (caller's thread): cut tensors and blobs into chunk-sized tasks.
//   2. Snapshot (copy_threads): copy the caller's bytes, chunk by chunk,
//      into staging buffers (a bounded pool; Acquire() blocks when it is
//      empty). After it the caller may mutate its tensors.
//   3. Drive (the checkpointer's driver thread), batch by batch:
//        begin       BeginCheckpoint: which storage node takes the chunks;
//        take        a batch of staged chunks;
//        hash        xxh3-128 against the previous save's chunk at the same
//                    place (equal = unchanged, reuse its id), SHA-256 only for
//                    changed chunks (pipeline_threads);
//        claim       ClaimChunks at the coordinator (so GC keeps them; it also
//                    says what the tier already has);
//        encode      what must be sent (pipeline_threads), then release the
//                    batch's staging buffers;
//        upload      on one of upload_streams streams, within a byte budget
//                    (backpressure);
//      then wait-durable (every upload acknowledged), commit (CommitRank,
//      retried when the answer is lost), and adopt the save as the base of
//      the next incremental check.
// Memory: half of staging_bytes stages copies, the other half bounds the
// encoded bytes waiting for or in upload (see EncodedBudget()).
//
// Saves are driven one after another in step order (the checkpointer has one
// driver thread), so the "previous save" of the incremental check is well
// defined.
//
// Internal to the client library. Thread-safety: Plan(), Snapshot() and
// SnapshotInBackground() may run on the caller's thread while the driver
// thread runs Drive() on an earlier job; Drive(), Abort() and DrainStaged()
// are called from one thread at a time; ResetBase() only when no save is in
// flight.
#ifndef SNAPBACK_CLIENT_SAVE_PIPELINE_H_
#define SNAPBACK_CLIENT_SAVE_PIPELINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "client/connection.h"
#include "client/placed_writer.h"
#include "client/save_job.h"
#include "client/staging_pool.h"
#include "common/codec.h"
#include "common/thread_pool.h"
#include "snapback/client.h"
#include "snapback/v1/coordinator.grpc.pb.h"

namespace snapback::internal_client {

// Chunks per driver batch: at most 16, and at most half the staging pool (a
// quarter of staging_bytes) so the copy can keep going while a batch is
// processed. At least 1.
int BatchChunks(const CheckpointerOptions& o);

// Encoded bytes allowed in flight: the other half of staging_bytes, less
// what gRPC holds per stream (the request's copy of a frame and its
// serialised form, about 3 frames of at most 4 MiB) and less the batch being
// encoded (counted only once it is queued). At least one chunk.
uint64_t EncodedBudget(const CheckpointerOptions& o);

class SavePipeline {
 public:
  // `options` must be resolved (ResolveCheckpointerOptions).
  SavePipeline(std::shared_ptr<Connection> connection, CheckpointerOptions options);
  SavePipeline(const SavePipeline&) = delete;
  SavePipeline& operator=(const SavePipeline&) = delete;

  // Stage 1: a job for `step` (PlanSaveJob), each item's codec choice taken
  // from earlier saves. INVALID_ARGUMENT for bad views; nothing is copied.
  absl::StatusOr<std::shared_ptr<SaveJob>> Plan(int64_t step,
                                                absl::Span<const TensorView> tensors,
                                                absl::Span<const BlobView> blobs);

  // Stage 2: copies every task of `job` into staging on copy_threads,
  // handing each staged chunk to the driver as it is done; blocks until all
  // are staged (waiting on the staging pool when it is empty). Then records
  // the copy time, finishes the handle's snapshot and sets
  // job->copy_finished. Holds the job (shared with the driver) until its
  // last touch.
  void Snapshot(std::shared_ptr<SaveJob> job);
  // Snapshot(job) on a background thread (overlap mode); returns at once.
  void SnapshotInBackground(std::shared_ptr<SaveJob> job);

  // Stage 3: uploads and commits `job` (see the file comment), filling in
  // its handle's stats. Consumes job->staged as the snapshot fills it. The
  // first failure (RPC, storage or encoding), after every upload it started
  // has ended; job->commit_outcome_unknown says whether the commit may have
  // happened anyway.
  absl::Status Drive(SaveJob* job);

  // Best effort: AbortCheckpoint at the coordinator, so it releases the
  // claims of `job`'s checkpoint. `why` is the reason it records.
  void Abort(const SaveJob& job, const absl::Status& why);
  // After a failed Drive(): drops what the snapshot still stages until the
  // copy finishes, so its buffers return to the pool and a copy blocked on a
  // full pool can finish. Waits on the snapshot.
  void DrainStaged(SaveJob* job);

  // Replaces the base of the next incremental check (after a restore: the
  // restored chunks).
  void ResetBase(ChunkBase base);

 private:
  // Chunks taken from job->staged: (task index, staging buffer).
  using StagedBatch = std::vector<std::pair<size_t, StagingPool::Buffer>>;
  // What Drive() counts into the save's stats.
  struct DriveCounts {
    uint64_t unchanged = 0;
    uint64_t present = 0;
    uint64_t new_bytes = 0;
    uint64_t sent_bytes = 0;
  };

  ::snapback::v1::RankRef RankRef() const;

  // Drive stages, in order (see the file comment).
  // Where a checkpoint's chunks go: a cluster (placement per chunk) or one
  // storage node.
  struct Destination {
    ClusterView cluster;  // empty without a cluster
    StorageClient* storage = nullptr;
  };
  absl::StatusOr<Destination> BeginCheckpoint(const SaveJob& job);
  absl::StatusOr<StagedBatch> TakeStagedBatch(SaveJob* job, size_t processed);
  uint64_t HashBatch(SaveJob* job, const StagedBatch& batch);
  absl::StatusOr<::snapback::v1::ClaimChunksResponse> ClaimBatch(
      const SaveJob& job, const StagedBatch& batch);
  absl::StatusOr<std::shared_ptr<std::vector<EncodedChunk>>> EncodeBatch(
      SaveJob* job, const StagedBatch& batch,
      const ::snapback::v1::ClaimChunksResponse& claimed,
      absl::flat_hash_set<ChunkId>* sent, DriveCounts* counts);
  absl::Status Commit(SaveJob* job, bool* committed);
  void AdoptAsBase(const SaveJob& job);

  const std::shared_ptr<Connection> client_;
  const CheckpointerOptions options_;
  EncodeOptions encode_options_;
  // Half the cap stages snapshot copies; the other half bounds the encoded
  // chunks (encoded_budget_), so all of it stays within staging_bytes.
  StagingPool staging_;
  const uint64_t encoded_budget_;
  const int batch_chunks_;
  ThreadPool copy_pool_;
  ThreadPool hash_pool_;
  ThreadPool upload_pool_;
  // Runs overlap-mode snapshots (which themselves wait on copy_pool_).
  // Declared after the pools: destroyed (joined) before them.
  ThreadPool snapshot_runner_{1};

  absl::Mutex prev_mu_;
  // The last committed save's chunks, for the incremental check. Written by
  // the driver thread after a commit and by ResetBase().
  ChunkBase prev_ ABSL_GUARDED_BY(prev_mu_);
  // Whether each tensor's chunks are worth compressing (a CodecChoice),
  // decided on its first chunk and kept for later saves.
  absl::flat_hash_map<std::string, int> codec_choice_ ABSL_GUARDED_BY(prev_mu_);
};

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_SAVE_PIPELINE_H_
