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
//   ClusterTier      storage nodes that register with the coordinator:
//                    placement, R copies, repair (cluster_tier.h).
//
// The first two keep one copy: a chunk is durable when one node has it.
#ifndef SNAPBACK_COORDINATOR_CHUNK_TIER_H_
#define SNAPBACK_COORDINATOR_CHUNK_TIER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/hash.h"
#include "rpc/storage_client.h"
#include "snapback/v1/cluster.pb.h"
#include "storage/chunk_store.h"

namespace snapback::coordinator {

// Most copies a job may ask for.
inline constexpr int kMaxReplication = 5;

// What ChunkTier::Verify() found for one chunk.
struct ChunkCheck {
  enum Verdict {
    kGood,        // a copy verified, and no bad one was seen
    kRepaired,    // a copy verified; bad or lost copies were handed to repair
    kBad,         // no copy verified: the chunk's bytes are gone
    kUnverified,  // no copy verified, but one may sit where the tier could not look
  };
  Verdict verdict = kUnverified;
  // What was wrong, for the operator (empty for kGood).
  std::string detail;
};

// Thread-safe: every implementation may be called from many threads at once.
class ChunkTier {
 public:
  virtual ~ChunkTier() = default;

  // For each id, whether the tier holds the chunk durably on at least
  // `copies` nodes (a cluster also records where). UNAVAILABLE when a node
  // cannot be asked.
  virtual absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids,
                                                int copies) = 0;

  // Like Has(), for a commit: a chunk that has fewer than `copies` copies
  // but at least one may be copied node to node first (a cluster re-places
  // copies lost since the upload). Default: Has().
  virtual absl::StatusOr<std::vector<bool>> EnsureCopies(absl::Span<const ChunkId> ids,
                                                         int copies) {
    return Has(ids, copies);
  }

  // Deletes the chunks from every node (absent ids are ignored, so a retry
  // after a partial failure is harmless). Returns how many (node, chunk)
  // copies were deleted. On error some copies may be deleted already.
  virtual absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) = 0;

  // Reads every copy of each chunk the tier can reach and verifies it
  // (checksum, decode, SHA-256 == id); one entry per id. A bad copy is
  // quarantined by the store that holds it (so it is never served again)
  // and, in a cluster, re-copied from a good one. `deadline` bounds each
  // node's call. An error only when the tier could not be asked at all.
  // Default: UNIMPLEMENTED.
  virtual absl::StatusOr<std::vector<ChunkCheck>> Verify(absl::Span<const ChunkId> ids,
                                                         absl::Duration deadline) {
    (void)ids, (void)deadline;
    return absl::UnimplementedError("this storage tier cannot verify chunks");
  }

  // Endpoints clients write chunks to and read them from (HOST:PORT); empty
  // means "the coordinator's own address" (embedded).
  virtual std::vector<std::string> endpoints() const = 0;

  // Copies every chunk must have without a cluster (1).
  virtual int replication() const = 0;
  // True for ClusterTier (cluster_tier.h): nodes register, placement and
  // replication per checkpoint.
  virtual bool clustered() const { return false; }
  // Copies a new checkpoint gets when its job does not say.
  virtual int DefaultReplication() { return replication(); }
  // A cluster's nodes: where new chunks may go (UP, not full), and every
  // node not REMOVED (where chunks may be read); empty without a cluster.
  virtual std::vector<v1::NodeInfo> WritableNodes() { return {}; }
  virtual std::vector<v1::NodeInfo> ReadableNodes() { return {}; }
  virtual uint64_t MapVersion() { return 0; }
  // A cluster keeps each committed checkpoint's catalogue record on
  // `copies` nodes (CatalogRecord under its checkpoint key), and drops the
  // records of deleted checkpoints (queued: called under the metadata
  // lock). No-ops without a cluster.
  virtual absl::Status PublishCatalog(const std::string& key, const std::string& value,
                                      int copies) {
    (void)key, (void)value, (void)copies;
    return absl::OkStatus();
  }
  virtual void RetractCatalog(const std::vector<std::string>& keys) { (void)keys; }
};

// The ChunkStore of this process. `store` is not owned and must outlive the
// tier.
class LocalChunkTier final : public ChunkTier {
 public:
  explicit LocalChunkTier(storage::ChunkStore* store) : store_(store) {}
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids,
                                        int copies) override;
  absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) override;
  absl::StatusOr<std::vector<ChunkCheck>> Verify(absl::Span<const ChunkId> ids,
                                                 absl::Duration deadline) override;
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

  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids,
                                        int copies) override;
  absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) override;
  // Every node is asked; one good copy anywhere makes a chunk good (one
  // copy is all this tier keeps). UNAVAILABLE when a node cannot be asked.
  absl::StatusOr<std::vector<ChunkCheck>> Verify(absl::Span<const ChunkId> ids,
                                                 absl::Duration deadline) override;
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
