// The coordinator's checks of requests that need no stored state: job ids,
// steps, rank references, world sizes, and a rank's manifest on its own
// (names, dtypes, shapes, offsets, chunk lists, size limits). Cross-rank
// checks (shards of one tensor across ranks) need the store and live in
// commit.cc. Also the helpers that name things in error messages, so every
// message quotes untrusted text the same way.
//
// Each check returns OK or INVALID_ARGUMENT whose message says what is wrong
// and what to use instead. Internal to coordinator/.
//
// Thread-safety: pure functions over values; thread-safe.
#ifndef SNAPBACK_COORDINATOR_MANIFEST_VALIDATION_H_
#define SNAPBACK_COORDINATOR_MANIFEST_VALIDATION_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/hash.h"
#include "coordinator/options.h"
#include "snapback/v1/coordinator.pb.h"

namespace snapback::coordinator::internal {

// Longest job id.
inline constexpr size_t kMaxJobIdLength = 128;
// Largest world size a job may register with.
inline constexpr int32_t kMaxWorldSize = 65536;
// Longest tensor or blob name, in bytes.
inline constexpr size_t kMaxNameBytes = 1024;
// Longest abort reason kept in a CheckpointInfo (longer ones are cut).
inline constexpr size_t kMaxReasonBytes = 1024;
// Most chunk ids ListIds() names in one error message.
inline constexpr int kMaxNamedIds = 4;

// ---------------------------------------------------------------------------
// Naming things in error messages.

// Untrusted text, C-escaped, quoted and cut to 80 bytes ("...'" when cut).
std::string Quote(absl::string_view s);
// "[1, 2, 3]".
std::string Dims(const google::protobuf::RepeatedField<int64_t>& dims);
// "offset [..], shape [..]".
std::string Region(const google::protobuf::RepeatedField<int64_t>& off,
                   const google::protobuf::RepeatedField<int64_t>& shape);
// "<job>@<step>".
std::string CheckpointName(absl::string_view job, int64_t step);
// "WRITING", "COMMITTED", "ABORTED" or "UNSPECIFIED".
std::string StateName(v1::CheckpointState state);
// The first kMaxNamedIds ids in hex, ", ..." when there are more.
std::string ListIds(const std::vector<ChunkId>& ids);
// ABORTED for a call on aborted checkpoint `c`, with its abort reason.
absl::Status AbortedError(const v1::CheckpointInfo& c);

// ---------------------------------------------------------------------------
// Requests.

// 1 to kMaxJobIdLength characters from A-Z, a-z, 0-9, '.', '_' and '-'.
absl::Status ValidJobId(absl::string_view id);
// 1..kMaxWorldSize.
absl::Status ValidWorldSize(int32_t world_size);
// >= 0.
absl::Status ValidStep(int64_t step);
// A valid job id, rank >= 0 and incarnation >= 0. (Whether the rank is below
// the job's world size is CheckRankInRange's question.)
absl::Status ValidRankRef(const v1::RankRef& ref);
// ref.rank() < job.world_size().
absl::Status CheckRankInRange(const v1::RankRef& ref, const v1::JobInfo& job);

// ---------------------------------------------------------------------------
// A rank's manifest on its own.

// Bytes per element, or 0 for an unknown dtype.
int DtypeSize(absl::string_view dtype);

// 1 to kMaxNameBytes bytes without NUL. `where` leads the message.
absl::Status ValidName(absl::string_view name, absl::string_view where);

// Checks the chunk list of one entry: 32-byte ids, lengths in
// 1..options.max_chunk_bytes adding up to `byte_length`. Adds the ids to
// `ids`.
absl::Status ValidChunks(const google::protobuf::RepeatedPtrField<v1::ChunkRef>& chunks,
                         uint64_t byte_length, const CoordinatorOptions& options,
                         absl::string_view where, absl::flat_hash_set<ChunkId>* ids);

// Checks one tensor entry: a known dtype; shape, global_shape and
// global_offset of one rank, none negative, the shard inside the global
// shape; byte_length = product(shape) * dtype size without overflowing 63
// bits; then its chunks (ValidChunks).
absl::Status ValidTensor(const v1::TensorEntry& t, const CoordinatorOptions& options,
                         absl::string_view where, absl::flat_hash_set<ChunkId>* ids);

// Checks one rank's manifest on its own: size and entry limits, valid and
// unique names (tensors and blobs each), every tensor and blob entry. On
// success sets *distinct to its distinct chunk ids, sorted, and
// *logical_bytes to the sum of its entries' byte_length.
absl::Status ValidManifest(const v1::RankManifest& m, const CoordinatorOptions& options,
                           std::vector<ChunkId>* distinct, uint64_t* logical_bytes);

// Adds the id of every chunk the manifest names (tensors and blobs) to
// `ids`. For stored manifests, which were validated when they were
// committed: a malformed id is a programming error.
void AddChunkIds(const v1::RankManifest& m, absl::flat_hash_set<ChunkId>* ids);

}  // namespace snapback::coordinator::internal

#endif  // SNAPBACK_COORDINATOR_MANIFEST_VALIDATION_H_
