#include "coordinator/options.h"

#include "absl/strings/str_cat.h"

namespace snapback::coordinator {

absl::Status ValidateCoordinatorOptions(const CoordinatorOptions& o) {
  if (o.checkpoint_lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("checkpoint_lease must be positive");
  }
  if (o.gc_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("gc_grace must not be negative");
  }
  if (o.max_manifest_bytes < 1024 || o.max_manifest_bytes > (1ull << 30)) {
    return absl::InvalidArgumentError("max_manifest_bytes must be in 1 KiB..1 GiB");
  }
  if (o.max_manifest_entries < 1) {
    return absl::InvalidArgumentError("max_manifest_entries must be at least 1");
  }
  if (o.max_chunk_bytes == 0 || o.max_chunk_bytes > kMaxChunkRawBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_chunk_bytes must be in 1..", kMaxChunkRawBytes));
  }
  if (o.max_claim_ids < 1 || o.gc_batch_chunks < 1) {
    return absl::InvalidArgumentError(
        "max_claim_ids and gc_batch_chunks must be at least 1");
  }
  return absl::OkStatus();
}

}  // namespace snapback::coordinator
