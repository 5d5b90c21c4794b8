#include "coordinator/manifest_validation.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "snapback/tensor.h"

namespace snapback::coordinator::internal {

using v1::RankManifest;
using v1::TensorEntry;

std::string Quote(absl::string_view s) {
  std::string out = absl::CHexEscape(s.substr(0, 80));
  return absl::StrCat("'", out, s.size() > 80 ? "...'" : "'");
}

std::string Dims(const google::protobuf::RepeatedField<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

std::string Region(const google::protobuf::RepeatedField<int64_t>& off,
                   const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("offset ", Dims(off), ", shape ", Dims(shape));
}

std::string CheckpointName(absl::string_view job, int64_t step) {
  return absl::StrCat(job, "@", step);
}

std::string StateName(v1::CheckpointState state) {
  switch (state) {
    case v1::WRITING:
      return "WRITING";
    case v1::COMMITTED:
      return "COMMITTED";
    case v1::ABORTED:
      return "ABORTED";
    default:
      return "UNSPECIFIED";
  }
}

std::string ListIds(const std::vector<ChunkId>& ids) {
  std::vector<std::string> hex;
  for (size_t i = 0; i < ids.size() && i < kMaxNamedIds; ++i) {
    hex.push_back(ids[i].ToHex());
  }
  return absl::StrCat(absl::StrJoin(hex, ", "), ids.size() > kMaxNamedIds ? ", ..." : "");
}

absl::Status AbortedError(const v1::CheckpointInfo& c) {
  return absl::AbortedError(
      absl::StrCat("checkpoint ", CheckpointName(c.job_id(), c.step()), " was aborted (",
                   c.abort_reason(), "); start a new save at a later step"));
}

absl::Status ValidJobId(absl::string_view id) {
  bool ok = !id.empty() && id.size() <= kMaxJobIdLength;
  for (char c : id) {
    ok = ok && (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                c == '_' || c == '-');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "job_id ", Quote(id),
      " is invalid: use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-'"));
}

absl::Status ValidWorldSize(int32_t world_size) {
  if (world_size >= 1 && world_size <= kMaxWorldSize) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("world_size ", world_size, " is invalid: use 1..", kMaxWorldSize,
                   " (the number of ranks that save a checkpoint)"));
}

absl::Status ValidStep(int64_t step) {
  if (step >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("step ", step, " is invalid: steps are >= 0"));
}

absl::Status ValidRankRef(const v1::RankRef& ref) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(ref.job_id()));
  if (ref.rank() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", ref.rank(), " is invalid: ranks are 0..world_size-1"));
  }
  if (ref.incarnation() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "incarnation ", ref.incarnation(),
        " is invalid: use a number >= 0 that grows with every restart of the job"));
  }
  return absl::OkStatus();
}

absl::Status CheckRankInRange(const v1::RankRef& ref, const v1::JobInfo& job) {
  if (ref.rank() < job.world_size()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "rank ", ref.rank(), " is out of range: job ", job.job_id(), " has world_size ",
      job.world_size(), " (ranks 0..", job.world_size() - 1, ")"));
}

int DtypeSize(absl::string_view dtype) {
  absl::StatusOr<DType> parsed = ParseDType(dtype);
  return parsed.ok() ? static_cast<int>(DTypeSize(*parsed)) : 0;
}

absl::Status ValidName(absl::string_view name, absl::string_view where) {
  if (name.empty() || name.size() > kMaxNameBytes || absl::StrContains(name, '\0')) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": name ", Quote(name),
                     " is invalid: use 1 to 1024 bytes without NUL characters"));
  }
  return absl::OkStatus();
}

absl::Status ValidChunks(const google::protobuf::RepeatedPtrField<v1::ChunkRef>& chunks,
                         uint64_t byte_length, const CoordinatorOptions& options,
                         absl::string_view where, absl::flat_hash_set<ChunkId>* ids) {
  uint64_t sum = 0;
  for (int i = 0; i < chunks.size(); ++i) {
    const v1::ChunkRef& c = chunks[i];
    if (c.id().size() != 32) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": chunks[", i, "].id is ", c.id().size(),
                       " bytes; a chunk id is the 32-byte SHA-256 of its raw bytes"));
    }
    if (c.length() == 0 || c.length() > options.max_chunk_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": chunks[", i, "].length ", c.length(), " must be in 1..",
          options.max_chunk_bytes, " (the largest chunk the coordinator accepts)"));
    }
    sum += c.length();
    ids->insert(*ChunkId::FromBytes(c.id()));
  }
  if (sum != byte_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": the chunks' lengths add up to ", sum, " bytes but byte_length is ",
        byte_length, "; list every chunk of the entry, in order"));
  }
  return absl::OkStatus();
}

absl::Status ValidTensor(const TensorEntry& t, const CoordinatorOptions& options,
                         absl::string_view where, absl::flat_hash_set<ChunkId>* ids) {
  const int size = DtypeSize(t.dtype());
  if (size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unknown dtype ", Quote(t.dtype()),
                     "; use float32, bfloat16, float16, float64, int8, uint8, int16, "
                     "int32, int64 or bool"));
  }
  const int ndim = t.shape_size();
  if (t.global_shape_size() != ndim || t.global_offset_size() != ndim) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": shape ", Dims(t.shape()), ", global_shape ", Dims(t.global_shape()),
        " and global_offset ", Dims(t.global_offset()),
        " must have the same number of dims (an unsharded tensor has global_shape = "
        "shape and global_offset all 0)"));
  }
  // product(shape) * size, refusing anything that overflows 63 bits.
  unsigned __int128 bytes = static_cast<unsigned>(size);
  for (int i = 0; i < ndim; ++i) {
    const int64_t dim = t.shape(i), global = t.global_shape(i), off = t.global_offset(i);
    if (dim < 0 || global < 0 || off < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": dim ", i, " has shape ", dim, ", global_shape ", global,
                       ", global_offset ", off, "; none may be negative"));
    }
    if (dim > global || off > global - dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": the shard (offset ", Dims(t.global_offset()), ", shape ",
          Dims(t.shape()), ") does not fit in global_shape ", Dims(t.global_shape()),
          " at dim ", i, "; need global_offset + shape <= global_shape"));
    }
    bytes *= static_cast<uint64_t>(dim);
    if (bytes > (static_cast<unsigned __int128>(1) << 63)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": shape ", Dims(t.shape()), " is too large"));
    }
  }
  if (bytes != t.byte_length()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": byte_length ", t.byte_length(), " does not match shape ",
        Dims(t.shape()), " of ", t.dtype(), " (", static_cast<uint64_t>(bytes),
        " bytes = product(shape) * ", size, ")"));
  }
  return ValidChunks(t.chunks(), t.byte_length(), options, where, ids);
}

absl::Status ValidManifest(const RankManifest& m, const CoordinatorOptions& options,
                           std::vector<ChunkId>* distinct, uint64_t* logical_bytes) {
  const size_t bytes = m.ByteSizeLong();
  if (bytes > options.max_manifest_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "manifest is ", bytes, " bytes; the limit is ", options.max_manifest_bytes,
        ": use larger chunks or fewer, larger blobs"));
  }
  const int entries = m.tensors_size() + m.blobs_size();
  if (entries > options.max_manifest_entries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "manifest has ", entries, " entries (tensors + blobs); the limit is ",
        options.max_manifest_entries, ": pack small tensors into blobs"));
  }
  absl::flat_hash_set<ChunkId> ids;
  absl::flat_hash_set<absl::string_view> names;
  uint64_t total = 0;
  for (int i = 0; i < m.tensors_size(); ++i) {
    const TensorEntry& t = m.tensors(i);
    const std::string where = absl::StrCat("tensors[", i, "] ", Quote(t.name()));
    SNAPBACK_RETURN_IF_ERROR(ValidName(t.name(), where));
    if (!names.insert(t.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": duplicate tensor name; names are unique per rank"));
    }
    SNAPBACK_RETURN_IF_ERROR(ValidTensor(t, options, where, &ids));
    total += t.byte_length();
  }
  names.clear();
  for (int i = 0; i < m.blobs_size(); ++i) {
    const v1::BlobEntry& b = m.blobs(i);
    const std::string where = absl::StrCat("blobs[", i, "] ", Quote(b.name()));
    SNAPBACK_RETURN_IF_ERROR(ValidName(b.name(), where));
    if (!names.insert(b.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": duplicate blob name; names are unique per rank"));
    }
    SNAPBACK_RETURN_IF_ERROR(
        ValidChunks(b.chunks(), b.byte_length(), options, where, &ids));
    total += b.byte_length();
  }
  distinct->assign(ids.begin(), ids.end());
  std::sort(distinct->begin(), distinct->end());
  *logical_bytes = total;
  return absl::OkStatus();
}

void AddChunkIds(const RankManifest& m, absl::flat_hash_set<ChunkId>* ids) {
  for (const TensorEntry& t : m.tensors()) {
    for (const v1::ChunkRef& c : t.chunks()) ids->insert(*ChunkId::FromBytes(c.id()));
  }
  for (const v1::BlobEntry& b : m.blobs()) {
    for (const v1::ChunkRef& c : b.chunks()) ids->insert(*ChunkId::FromBytes(c.id()));
  }
}

}  // namespace snapback::coordinator::internal
