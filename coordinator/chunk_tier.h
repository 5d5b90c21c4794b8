// ChunkTier: the storage tier as the coordinator sees it — "is this chunk
// durable?" and "delete these chunks" — so the coordinator's metadata engine
// (CoordinatorStore) does not care whether chunks live in the same process
// or on storage nodes across the network.
//
//   LocalChunkTier   the ChunkStore of this process (the embedded default,
//                    role ""): direct calls, no RPC.
//   RemoteChunkTier  storage nodes reached through StorageClient (role
//                    "coordinator" with --storage-endpoints).
//
// Replication is 1 for now: a chunk is durable when at least one node has
// it, and a delete goes to every node. Placement (rendezvous hashing over
// live nodes) and R > 1 replace this when node registration exists.
#ifndef SNAPBACK_COORDINATOR_CHUNK_TIER_H_
#define SNAPBACK_COORDINATOR_CHUNK_TIER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/hash.h"
#include "rpc/storage_client.h"
#include "storage/chunk_store.h"

namespace snapback::coordinator {

// Thread-safe: every implementation may be called from many threads at once.
class ChunkTier {
 public:
  virtual ~ChunkTier() = default;

  // For each id, whether the tier holds the chunk durably (on at least
  // replication() nodes). UNAVAILABLE when a node cannot be asked.
  virtual absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids) = 0;

  // Deletes the chunks from every node (absent ids are ignored, so a retry
  // after a partial failure is harmless). Returns how many (node, chunk)
  // copies were deleted. On error some copies may be deleted already.
  virtual absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) = 0;

  // Endpoints clients write chunks to and read them from (HOST:PORT); empty
  // means "the coordinator's own address" (embedded).
  virtual std::vector<std::string> endpoints() const = 0;

  // Copies every chunk must have. 1 for now.
  virtual int replication() const = 0;
};

// The ChunkStore of this process. `store` is not owned and must outlive the
// tier.
class LocalChunkTier final : public ChunkTier {
 public:
  explicit LocalChunkTier(storage::ChunkStore* store) : store_(store) {}
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids) override;
  absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) override;
  std::vector<std::string> endpoints() const override { return {}; }
  int replication() const override { return 1; }

 private:
  storage::ChunkStore* const store_;
};

// Storage nodes over gRPC.
class RemoteChunkTier final : public ChunkTier {
 public:
  // One StorageClient per endpoint (connections are made lazily, so an
  // unreachable node shows up on the first Has/Delete as UNAVAILABLE).
  // INVALID_ARGUMENT for an empty list, an empty or duplicate endpoint, or
  // bad client options; NOT_FOUND etc. for unreadable TLS files.
  static absl::StatusOr<std::unique_ptr<RemoteChunkTier>> Connect(
      const std::vector<std::string>& endpoints,
      const internal_client::StorageClientOptions& options);

  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids) override;
  absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) override;
  std::vector<std::string> endpoints() const override { return endpoints_; }
  int replication() const override { return 1; }

 private:
  RemoteChunkTier(std::vector<std::string> endpoints,
                  std::vector<std::unique_ptr<internal_client::StorageClient>> clients)
      : endpoints_(std::move(endpoints)), clients_(std::move(clients)) {}

  const std::vector<std::string> endpoints_;
  const std::vector<std::unique_ptr<internal_client::StorageClient>> clients_;
};

}  // namespace snapback::coordinator

#endif  // SNAPBACK_COORDINATOR_CHUNK_TIER_H_
