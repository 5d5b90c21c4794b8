// CheckpointVerifier: one VerifyCheckpoint call (coordinator.proto) as a
// sequence of small steps, so that the caller (the gRPC service) can run
// each step as its own task on the coordinator's pool, interleaved with
// other calls, stream progress between them, and stop when its client goes
// away.
//
// Plan() loads the checkpoints and the distinct chunks their manifests name
// (CoordinatorStore::VerifyTargets). Each Step() verifies one batch of
// chunks through the storage tier (ChunkTier::Verify: every copy the tier
// can reach is read and checked, bad copies are quarantined and, in a
// cluster, repaired) and, once every chunk of a checkpoint has a verdict,
// records the checkpoint's outcome durably (CoordinatorStore::
// RecordVerification). A chunk named by several checkpoints (or several
// times by one) is verified once per call; its verdict counts for every
// checkpoint that names it.
//
// Outcome of a checkpoint: DAMAGED when a chunk has no good copy (recorded
// with a reason naming the rank, tensor or blob and chunk, and what to do);
// else INCOMPLETE when a chunk could not be checked (nothing recorded);
// else REPAIRED when bad or lost copies were handed to repair; else OK.
// REPAIRED and OK clear `damaged` and set verified_unix_ms.
//
// Thread-compatible: one Step() at a time (the service runs them in
// sequence); the store and tier are thread-safe and must outlive it.
#ifndef SNAPBACK_COORDINATOR_VERIFY_H_
#define SNAPBACK_COORDINATOR_VERIFY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/hash.h"
#include "coordinator/chunk_tier.h"
#include "coordinator/coordinator_store.h"
#include "snapback/v1/coordinator.pb.h"

namespace snapback::coordinator {

struct VerifyOptions {
  // Most chunks, and raw bytes, one Step() verifies: the granularity of
  // progress messages and of stopping for a client that went away.
  // Default: 256
  size_t batch_chunks = 256;
  // Default: 32 MiB
  uint64_t batch_bytes = 32ull << 20;
  // Deadline of each storage node's VerifyChunks call (one batch).
  // Default: 10 min
  absl::Duration node_deadline = absl::Minutes(10);
  // Bad chunks listed in VerifyProgress.bad_chunks (all are counted).
  // Default: 100
  int max_listed_bad = 100;
};

class CheckpointVerifier {
 public:
  // Loads what `req` names. NOT_FOUND for an unknown job or step (or a job
  // with no COMMITTED checkpoint when req.step is -1); FAILED_PRECONDITION
  // for a step that is not COMMITTED; INVALID_ARGUMENT for a malformed job
  // id or a step below -1. `store` is not owned.
  static absl::StatusOr<std::unique_ptr<CheckpointVerifier>> Plan(
      CoordinatorStore* store, const v1::VerifyCheckpointRequest& req,
      VerifyOptions options = {});

  // Verifies the next batch, and records each checkpoint whose chunks all
  // have a verdict now. True when every checkpoint is done (progress() is
  // then the final message). An error (the tier could not be asked at all,
  // the metadata could not be written) ends the verification; checkpoints
  // recorded before it stay recorded.
  absl::StatusOr<bool> Step();

  // The progress so far; with `final` and every outcome once Step() has
  // returned true.
  const v1::VerifyProgress& progress() const { return progress_; }

  // Outcomes of the checkpoints finished since the last call, in order.
  std::vector<v1::CheckpointVerification> TakeFinished();

 private:
  CheckpointVerifier(CoordinatorStore* store, std::vector<VerifyTarget> targets,
                     VerifyOptions options);
  // Decides, records and reports targets_[current_].
  absl::Status FinishCheckpoint();
  // "rank 0 tensor "w" chunk 3 (id 1a2b...)".
  static std::string Where(const VerifyTarget& t, const ChunkUse& c);

  CoordinatorStore* const store_;
  const VerifyOptions options_;
  std::vector<VerifyTarget> targets_;  // newest first
  size_t current_ = 0;                 // target being verified
  size_t next_chunk_ = 0;              // its next chunk to look at
  absl::flat_hash_map<ChunkId, ChunkCheck> checked_;
  v1::VerifyProgress progress_;
  std::vector<v1::CheckpointVerification> results_;
  size_t taken_ = 0;  // results_ handed out by TakeFinished()
};

}  // namespace snapback::coordinator

#endif  // SNAPBACK_COORDINATOR_VERIFY_H_
