// CoordinatorOptions: the knobs of the coordinator's metadata engine
// (CoordinatorStore, coordinator_store.h). Their own header so that code
// which only checks requests against the limits (manifest_validation.h)
// does not depend on the store.
#ifndef SNAPBACK_COORDINATOR_OPTIONS_H_
#define SNAPBACK_COORDINATOR_OPTIONS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "storage/chunk_store.h"

namespace snapback::coordinator {

struct CoordinatorOptions {
  // Source of "now" for leases, grace periods and timestamps. Not owned;
  // must outlive the store. nullptr = RealClock().
  // Default: nullptr
  Clock* clock = nullptr;
  // A WRITING checkpoint with no BeginCheckpoint/ClaimChunks/CommitRank for
  // this long is aborted by CollectGarbage (its claims are released). Also:
  // how long an ABORTED checkpoint is remembered before GC forgets it.
  // Default: 30 min
  absl::Duration checkpoint_lease = absl::Minutes(30);
  // A chunk is deleted from the tier only after it has had no reference and
  // no claim for this long.
  // Default: 10 min
  absl::Duration gc_grace = absl::Minutes(10);
  // keep_last for jobs registered without a retention policy.
  // Default: 3
  uint32_t default_keep_last = 3;
  // Largest serialized rank manifest CommitRank accepts. The server raises
  // gRPC's max receive message size to fit it.
  // Default: 64 MiB
  uint64_t max_manifest_bytes = 64ull << 20;
  // Most entries (tensors + blobs) in one rank manifest.
  // Default: 100000
  int max_manifest_entries = 100000;
  // Largest chunk a manifest may name (raw bytes); never above
  // kMaxChunkRawBytes.
  // Default: 16 MiB
  uint32_t max_chunk_bytes = 16u << 20;
  // Most ids in one ClaimChunks call.
  // Default: 100000
  int max_claim_ids = 100000;
  // Chunks GC deletes per batch (one tier delete + one metadata write while
  // holding the writer lock); bounds how long GC blocks other calls.
  // Default: 1024
  int gc_batch_chunks = 1024;
  // WAL recovery of the metadata database; see storage::IndexRecovery. Only
  // after a power cut may an operator choose kDropTornTail, for one restart.
  // Default: kStrict
  storage::IndexRecovery recovery = storage::IndexRecovery::kStrict;
};

// Checks that the options are usable. INVALID_ARGUMENT saying which is not.
absl::Status ValidateCoordinatorOptions(const CoordinatorOptions& options);

}  // namespace snapback::coordinator

#endif  // SNAPBACK_COORDINATOR_OPTIONS_H_
