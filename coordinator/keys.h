// The coordinator's key layout in its RocksDB, and the encodings of the
// values that are not protos. Internal to coordinator/; docs/coordinator.md
// has the table.
//
// Every key is one byte of kind, '/', then the fields; a job id never
// contains '\0' (see ValidJobId), so "<job>\0" ends it unambiguously and a
// prefix scan of one job never runs into another whose id it prefixes.
// Steps, ranks and offsets are fixed-width big-endian so that byte order is
// numeric order.
//
// Thread-safety: pure functions over values; thread-safe.
#ifndef SNAPBACK_COORDINATOR_KEYS_H_
#define SNAPBACK_COORDINATOR_KEYS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/hash.h"

namespace snapback::coordinator::internal {

// "meta/format" -> kFormatVersion. A database holding another version is
// refused at open.
inline constexpr absl::string_view kFormatKey = "meta/format";
inline constexpr absl::string_view kFormatVersion = "1";
// Prefixes of the tables scanned as a whole: claims, reference records and
// GC's queue.
inline constexpr absl::string_view kClaimPrefix = "k/";
inline constexpr absl::string_view kRefPrefix = "r/";
inline constexpr absl::string_view kZeroPrefix = "z/";
// Claim values: "" = claimed by ClaimChunks only; "1" = named by a committed
// rank manifest of the checkpoint (becomes a reference when it commits).
inline constexpr absl::string_view kClaimNamed = "1";

// Appends the low `bytes` bytes of `v`, big-endian.
void PutBE(std::string* out, uint64_t v, int bytes);
// Reads `bytes` big-endian bytes from the front of `in` (which must hold
// at least that many).
uint64_t GetBE(absl::string_view in, int bytes);

// "j/<job>" -> JobInfo.
std::string JobKey(absl::string_view job);
// "<kind>/<job>\0<step:8>": the prefix of every per-step key. Kinds: "c"
// checkpoint, "m" manifest, "k" claim, "s" shard region, "t" tensor.
std::string StepPrefix(absl::string_view kind, absl::string_view job, int64_t step);
// Incidents of the failure detector: "i/<job>\0" + <seq:8>.
std::string IncidentPrefix(absl::string_view job);
// Runs of a job as the detector watched them: "r/<job>\0" + <run:8>.
std::string JobRunPrefix(absl::string_view job);
// "c/<job>\0": every checkpoint of one job.
std::string JobCheckpointPrefix(absl::string_view job);
// "c/<job>\0<step:8>" -> CheckpointInfo.
std::string CheckpointKey(absl::string_view job, int64_t step);
// "m/<job>\0<step:8><rank:4>" -> RankManifest.
std::string ManifestKey(absl::string_view job, int64_t step, int32_t rank);
// "k/<job>\0<step:8><id:32>" -> "" or kClaimNamed.
std::string ClaimKey(absl::string_view job, int64_t step, const ChunkId& id);
// "r/<id:32>" -> EncodeRef(RefRecord).
std::string RefKey(const ChunkId& id);
// "z/<zero_since_ms:8><id:32>" -> "": GC's queue, ordered by time.
std::string ZeroKey(int64_t zero_since_ms, const ChunkId& id);
// "t/<job>\0<step:8><name>" -> EncodeTensorInfo(TensorInfo).
std::string TensorInfoKey(absl::string_view job, int64_t step, absl::string_view name);
// "s/<job>\0<step:8><name>\0": followed by <offset:8 x ndim><shape:8 x ndim>
// -> the rank (4) that stored the region.
std::string RegionPrefix(absl::string_view job, int64_t step, absl::string_view name);

// Splits "<kind>/<job>\0<step:8><rest>" into job, step and rest. False when
// the key is too short or has no NUL.
bool ParseStepKey(absl::string_view key, std::string* job, int64_t* step,
                  absl::string_view* rest);

// A chunk's reference record: "r/<id>" -> BE8 count, BE8 zero_since_ms.
// zero_since_ms is when the count last became 0 (or the chunk's last claim
// was released with no reference): the start of its grace period. A record
// with count 0 is mirrored by "z/<zero_since><id>", GC's queue.
struct RefRecord {
  bool exists = false;
  uint64_t count = 0;
  int64_t zero_since_ms = 0;
  friend bool operator==(const RefRecord&, const RefRecord&) = default;
};

std::string EncodeRef(const RefRecord& r);
// False (and *r unspecified) unless `in` is exactly 16 bytes.
bool DecodeRef(absl::string_view in, RefRecord* r);

// What the shards of one tensor name committed so far agree on:
// "t/<job>\0<step><name>" -> BE4 first rank, BE8 largest dim-0 extent of
// a stored region, BE1 dtype length, dtype, BE4 ndim, BE8 x ndim
// global_shape.
struct TensorInfo {
  int32_t first_rank = 0;
  int64_t max_extent0 = 0;
  std::string dtype;
  std::vector<int64_t> global_shape;
};

std::string EncodeTensorInfo(const TensorInfo& t);
// False when `in` is truncated or has trailing bytes.
bool DecodeTensorInfo(absl::string_view in, TensorInfo* t);

}  // namespace snapback::coordinator::internal

#endif  // SNAPBACK_COORDINATOR_KEYS_H_
