// StorageServiceImpl: the gRPC face of a storage node's ChunkStore
// (proto/snapback/v1/storage.proto).
//
// Built on the gRPC callback API: one reactor per call, one handler per RPC.
// gRPC's callback threads only move frames; everything that blocks or burns
// CPU runs on two snapback::ThreadPools owned by the caller:
//
//   verify_pool  decode + SHA-256 of every incoming chunk (CPU bound)
//   io_pool      ChunkStore calls (Put fsyncs; Get/Has/Stats read the index)
//
// and the reactor resumes (next read, next write, Finish) when that work
// completes. A PutChunks stream is verified chunk by chunk as it arrives and
// stored in batches of max_put_buffer_bytes while the next batch is received,
// so the receive, verify and fsync stages overlap.
//
// Thread-safe. The store and the pools must outlive the service, and the
// service must outlive the grpc::Server it is registered with; WaitIdle()
// tells when the last call (and the pool work it started) is gone.
#ifndef SNAPBACK_SERVER_STORAGE_SERVICE_H_
#define SNAPBACK_SERVER_STORAGE_SERVICE_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/thread_pool.h"
#include "rpc/unary.h"
#include "server/peers.h"
#include "snapback/v1/storage.grpc.pb.h"
#include "storage/catalog.h"
#include "storage/chunk_store.h"

namespace snapback::server {

struct StorageMetrics;  // server_metrics.h

// Bytes a frame may carry beyond its data slice (header fields, protobuf
// framing). Frames are limited to data + this slack.
inline constexpr uint32_t kFrameSlackBytes = 64u << 10;

// Per-call limits. Every limit violation fails the call with
// INVALID_ARGUMENT (or RESOURCE_EXHAUSTED from gRPC for an oversized frame)
// and stores nothing of the offending chunk.
struct StorageLimits {
  // Largest serialized frame (message) the server accepts. On a storage-only
  // server this is gRPC's max receive message size, so an oversized frame is
  // refused before it is read; when the same port serves the coordinator
  // (whose manifests are larger) the service checks each frame itself.
  // GetChunks sends slices of at most max_frame_bytes - kFrameSlackBytes data
  // bytes.
  // Default: 4 MiB + 64 KiB
  uint32_t max_frame_bytes = (4u << 20) + kFrameSlackBytes;
  // Largest chunk, raw and encoded. Never above kMaxChunkRawBytes.
  // Default: 16 MiB
  uint32_t max_chunk_bytes = 16u << 20;
  // Most chunks one PutChunks stream may carry, and most ids one GetChunks or
  // HasChunks request may name.
  // Default: 4096
  int max_batch_chunks = 4096;
  // A PutChunks stream hands its chunks to the store in batches of this many
  // encoded bytes (one ChunkStore::Put, so one fsync, per batch). One batch is
  // stored while the next is received, so a stream holds at most about twice
  // this in memory before the server stops reading from it. Must be at least
  // max_chunk_bytes.
  // Default: 64 MiB
  uint64_t max_put_buffer_bytes = 64ull << 20;
};

// Checks that the limits are usable. INVALID_ARGUMENT saying which is not.
absl::Status ValidateLimits(const StorageLimits& limits);

// What a storage node needs to take part in a cluster. All optional: without
// them the node serves as a standalone store (forwarding, repair copies and
// catalogue calls are refused with a message saying why).
struct ClusterHooks {
  // The other nodes of the map (forward targets, repair sources).
  Peers* peers = nullptr;
  // Runs forwards and repair copies, which block on peers; separate from
  // io_pool so that two nodes forwarding to each other cannot deadlock.
  ThreadPool* forward_pool = nullptr;
  // The catalogue records the coordinator stores here.
  storage::CatalogStore* catalog = nullptr;
  // Bytes per second ReplicateChunks copies onto this node (0 = unlimited).
  uint64_t repair_bytes_per_sec = 0;
};

class StorageServiceImpl final : public snapback::v1::StorageService::CallbackService {
 public:
  // `store` must have verify_on_put off: this service verifies every chunk
  // itself (on verify_pool, overlapping the receive), and SHA-256 is the
  // bottleneck, so the same bytes are never verified twice. None of the
  // pointers is owned.
  StorageServiceImpl(storage::ChunkStore* store, ThreadPool* verify_pool,
                     ThreadPool* io_pool, StorageLimits limits,
                     ClusterHooks cluster = {});
  // Must not run while calls are alive (see WaitIdle).
  ~StorageServiceImpl() override;
  // Counts chunks put and read into `metrics` (not owned; must outlive the
  // service). Before the service is registered.
  // Default: nullptr (not counted)
  void SetMetrics(const StorageMetrics* metrics) { context_.metrics = metrics; }

  grpc::ServerReadReactor<snapback::v1::PutChunksRequest>* PutChunks(
      grpc::CallbackServerContext* ctx,
      snapback::v1::PutChunksResponse* response) override;
  grpc::ServerWriteReactor<snapback::v1::GetChunksResponse>* GetChunks(
      grpc::CallbackServerContext* ctx,
      const snapback::v1::GetChunksRequest* request) override;
  grpc::ServerUnaryReactor* HasChunks(grpc::CallbackServerContext* ctx,
                                      const snapback::v1::HasChunksRequest* request,
                                      snapback::v1::HasChunksResponse* response) override;
  grpc::ServerUnaryReactor* Stat(grpc::CallbackServerContext* ctx,
                                 const snapback::v1::StatRequest* request,
                                 snapback::v1::StatResponse* response) override;
  grpc::ServerUnaryReactor* DeleteChunks(
      grpc::CallbackServerContext* ctx, const snapback::v1::DeleteChunksRequest* request,
      snapback::v1::DeleteChunksResponse* response) override;
  grpc::ServerUnaryReactor* ReplicateChunks(
      grpc::CallbackServerContext* ctx,
      const snapback::v1::ReplicateChunksRequest* request,
      snapback::v1::ReplicateChunksResponse* response) override;
  grpc::ServerUnaryReactor* ListChunks(
      grpc::CallbackServerContext* ctx, const snapback::v1::ListChunksRequest* request,
      snapback::v1::ListChunksResponse* response) override;
  grpc::ServerUnaryReactor* VerifyChunks(
      grpc::CallbackServerContext* ctx, const snapback::v1::VerifyChunksRequest* request,
      snapback::v1::VerifyChunksResponse* response) override;
  grpc::ServerUnaryReactor* PutCatalog(
      grpc::CallbackServerContext* ctx, const snapback::v1::PutCatalogRequest* request,
      snapback::v1::PutCatalogResponse* response) override;
  grpc::ServerUnaryReactor* ListCatalog(
      grpc::CallbackServerContext* ctx, const snapback::v1::ListCatalogRequest* request,
      snapback::v1::ListCatalogResponse* response) override;
  grpc::ServerUnaryReactor* DeleteCatalog(
      grpc::CallbackServerContext* ctx, const snapback::v1::DeleteCatalogRequest* request,
      snapback::v1::DeleteCatalogResponse* response) override;

  // Blocks until no call is alive (every reactor is done and no pool task of
  // a call is pending) or `deadline` passes. Returns true when idle.
  bool WaitIdle(absl::Time deadline = absl::InfiniteFuture());
  // Calls alive right now, for tests.
  int TEST_ActiveCalls();

  // Shared with the reactors (storage_service.cc); not part of the API.
  struct Context {
    storage::ChunkStore* store;
    ThreadPool* verify_pool;
    ThreadPool* io_pool;
    StorageLimits limits;
    StorageServiceImpl* service;
    ClusterHooks cluster;
    const StorageMetrics* metrics = nullptr;
  };
  // A call starts / ends (a reactor is created / destroyed).
  void CallStarted() { calls_.Started(); }
  void CallEnded() { calls_.Ended(); }

 private:
  Context context_;
  rpc::CallTracker calls_;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_STORAGE_SERVICE_H_
