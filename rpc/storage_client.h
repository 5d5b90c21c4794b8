// StorageClient: the internal C++ client of one storage node's
// StorageService (proto/snapback/v1/storage.proto).
//
// Moves EncodedChunks in and out with the service's framing: a chunk larger
// than one frame is split into a header frame and continuation frames, and
// reassembled on the way back. Every call carries a deadline. Reads are
// verified (decode + SHA-256 == id) unless the caller turns that off because
// it verifies itself; a chunk that fails verification is never returned.
//
// Not part of the public API (client/include/snapback/ is); the checkpoint
// client builds on it. Thread-safe: one StorageClient may serve many threads,
// each call uses its own gRPC stream over the shared channel.
#ifndef SNAPBACK_RPC_STORAGE_CLIENT_H_
#define SNAPBACK_RPC_STORAGE_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/codec.h"
#include "common/hash.h"
#include "snapback/v1/storage.grpc.pb.h"

namespace snapback::internal_client {

struct StorageClientOptions {
  // PEM file of the CA that signed the server's certificate. Set = TLS.
  // Default: "" (plaintext)
  std::string tls_root_ca_file;
  // PEM certificate chain and key presented to a server that requires client
  // certificates (mTLS). Only with tls_root_ca_file.
  // Default: ""
  std::string tls_client_cert_file;
  // Default: ""
  std::string tls_client_key_file;
  // Name to check the server certificate against instead of the endpoint's
  // host (e.g. "localhost" for a test certificate).
  // Default: "" (the endpoint's host)
  std::string tls_server_name;
  // Deadline of each RPC (one Put/Get stream, one Has, Delete or Stat call).
  // Default: 60 s
  absl::Duration deadline = absl::Seconds(60);
  // Most encoded bytes per PutChunks frame; larger chunks are split. Must not
  // exceed the server's max_frame_bytes minus its header slack.
  // Default: 4 MiB
  uint32_t max_frame_bytes = 4u << 20;
  // Most chunks per PutChunks stream and ids per GetChunks/HasChunks/
  // DeleteChunks request;
  // larger calls are split into several RPCs. Must not exceed the server's
  // max_batch_chunks.
  // Default: 4096
  int max_batch_chunks = 4096;
  // Verify every chunk Get() returns (decode + SHA-256). Turn off only when
  // the caller verifies the chunks itself.
  // Default: true
  bool verify_reads = true;
};

// Further copies a first replica makes of the chunks it receives (the
// cluster's write path: the client sends each byte once). `forward[i]` lists
// indexes into `peers` for chunk i, in order of preference; the node stores
// the chunk and forwards it to the first `copies` of them that succeed.
struct ForwardPlan {
  std::vector<std::string> peers;
  std::vector<std::vector<uint32_t>> forward;  // one per chunk
  uint32_t copies = 0;
};

// What one Put() did, summed over its streams.
struct PutSummary {
  int stored = 0;                // chunks newly written by the node
  int already_present = 0;       // chunks the node already had
  uint64_t bytes_sent = 0;       // encoded bytes sent
  uint64_t bytes_written = 0;    // bytes the node appended to its segments
  uint64_t bytes_forwarded = 0;  // encoded bytes the node sent to peers
  int forward_failovers = 0;     // forwards re-placed on the next peer
};

class StorageClient {
 public:
  // Creates a channel to `endpoint` (HOST:PORT). The connection is made
  // lazily by the first call, so an unreachable node shows up there as
  // UNAVAILABLE. INVALID_ARGUMENT for bad options; NOT_FOUND etc. when a TLS
  // file cannot be read.
  static absl::StatusOr<std::unique_ptr<StorageClient>> Connect(
      const std::string& endpoint, StorageClientOptions options = {});

  // Stores `chunks`, in streams of at most max_batch_chunks chunks. OK means
  // every chunk is durable on the node. On error, some chunks may already be
  // stored (a stream is not atomic; see storage.proto): ask Has().
  absl::StatusOr<PutSummary> Put(absl::Span<const EncodedChunk> chunks);
  // The same, and the node forwards each chunk to `plan.copies` peers (see
  // ForwardPlan); OK only when every copy is durable. plan.forward has one
  // entry per chunk.
  absl::StatusOr<PutSummary> Put(absl::Span<const EncodedChunk> chunks,
                                 const ForwardPlan& plan);

  // Reads chunks in `ids` order (duplicates allowed). NOT_FOUND naming the
  // missing ids when the node lacks any of them; DATA_LOSS when a chunk fails
  // verification.
  absl::StatusOr<std::vector<EncodedChunk>> Get(absl::Span<const ChunkId> ids);

  // Like Get(), but a missing chunk is a NOT_FOUND entry instead of failing
  // the call, so the caller can fetch just those elsewhere. Other errors
  // still fail the call.
  absl::StatusOr<std::vector<absl::StatusOr<EncodedChunk>>> GetEach(
      absl::Span<const ChunkId> ids);

  // For each id, whether the node has the chunk.
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids);

  // Deletes chunks from the node, in requests of at most max_batch_chunks
  // ids; ids the node does not have are ignored. Returns how many it had.
  // Only the coordinator's garbage collector should call this (see
  // DeleteChunks in storage.proto). On error, earlier batches are deleted.
  absl::StatusOr<int> Delete(absl::Span<const ChunkId> ids);

  // The node's store statistics.
  absl::StatusOr<snapback::v1::StatResponse> Stat();

  // Cluster calls (storage.proto): the node copies `ids` from the first of
  // `sources` that has good bytes; lists the ids it holds after
  // `start_after`; re-verifies `ids` (all when empty) within `deadline`.
  absl::StatusOr<snapback::v1::ReplicateChunksResponse> Replicate(
      absl::Span<const ChunkId> ids, const std::vector<std::string>& sources);
  absl::StatusOr<snapback::v1::ListChunksResponse> List(const std::string& start_after,
                                                        uint32_t limit);
  absl::StatusOr<snapback::v1::VerifyChunksResponse> Verify(absl::Span<const ChunkId> ids,
                                                            absl::Duration deadline);
  absl::Status PutCatalog(const std::string& key, const std::string& value);
  // Every entry whose key starts with `prefix`.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ListCatalog(
      const std::string& prefix);
  absl::Status DeleteCatalog(const std::vector<std::string>& keys);
  const std::string& endpoint() const { return endpoint_; }

  // The raw stub, for tests that need to send malformed frames.
  snapback::v1::StorageService::Stub* stub() { return stub_.get(); }
  const StorageClientOptions& options() const { return options_; }

 private:
  StorageClient(std::string endpoint, StorageClientOptions options,
                std::unique_ptr<snapback::v1::StorageService::Stub> stub)
      : endpoint_(std::move(endpoint)),
        options_(std::move(options)),
        stub_(std::move(stub)) {}

  absl::Status PutStream(absl::Span<const EncodedChunk> chunks, PutSummary* summary,
                         const ForwardPlan* plan, size_t first);
  absl::Status GetStream(absl::Span<const ChunkId> ids,
                         std::vector<absl::StatusOr<EncodedChunk>>* out);

  const std::string endpoint_;  // for error messages
  const StorageClientOptions options_;
  std::unique_ptr<snapback::v1::StorageService::Stub> stub_;
};

}  // namespace snapback::internal_client

#endif  // SNAPBACK_RPC_STORAGE_CLIENT_H_
