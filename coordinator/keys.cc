#include "coordinator/keys.h"

#include "absl/strings/str_cat.h"

namespace snapback::coordinator::internal {

void PutBE(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>(v >> (8 * i)));
}

uint64_t GetBE(absl::string_view in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

std::string JobKey(absl::string_view job) { return absl::StrCat("j/", job); }

std::string StepPrefix(absl::string_view kind, absl::string_view job, int64_t step) {
  std::string key = absl::StrCat(kind, "/", job, absl::string_view("\0", 1));
  PutBE(&key, static_cast<uint64_t>(step), 8);
  return key;
}

std::string IncidentPrefix(absl::string_view job) {
  return absl::StrCat("i/", job, absl::string_view("\0", 1));
}

std::string JobRunPrefix(absl::string_view job) {
  return absl::StrCat("r/", job, absl::string_view("\0", 1));
}

std::string JobCheckpointPrefix(absl::string_view job) {
  return absl::StrCat("c/", job, absl::string_view("\0", 1));
}

std::string CheckpointKey(absl::string_view job, int64_t step) {
  return StepPrefix("c", job, step);
}

std::string ManifestKey(absl::string_view job, int64_t step, int32_t rank) {
  std::string key = StepPrefix("m", job, step);
  PutBE(&key, static_cast<uint32_t>(rank), 4);
  return key;
}

std::string ClaimKey(absl::string_view job, int64_t step, const ChunkId& id) {
  return absl::StrCat(StepPrefix("k", job, step), id.AsBytes());
}

std::string RefKey(const ChunkId& id) { return absl::StrCat(kRefPrefix, id.AsBytes()); }

std::string ZeroKey(int64_t zero_since_ms, const ChunkId& id) {
  std::string key(kZeroPrefix);
  PutBE(&key, static_cast<uint64_t>(zero_since_ms), 8);
  key.append(id.AsBytes().data(), id.AsBytes().size());
  return key;
}

std::string TensorInfoKey(absl::string_view job, int64_t step, absl::string_view name) {
  return absl::StrCat(StepPrefix("t", job, step), name);
}

std::string RegionPrefix(absl::string_view job, int64_t step, absl::string_view name) {
  return absl::StrCat(StepPrefix("s", job, step), name, absl::string_view("\0", 1));
}

bool ParseStepKey(absl::string_view key, std::string* job, int64_t* step,
                  absl::string_view* rest) {
  if (key.size() < 2) return false;
  key.remove_prefix(2);
  const size_t nul = key.find('\0');
  if (nul == absl::string_view::npos || key.size() < nul + 1 + 8) return false;
  *job = std::string(key.substr(0, nul));
  *step = static_cast<int64_t>(GetBE(key.substr(nul + 1), 8));
  *rest = key.substr(nul + 1 + 8);
  return true;
}

std::string EncodeRef(const RefRecord& r) {
  std::string out;
  PutBE(&out, r.count, 8);
  PutBE(&out, static_cast<uint64_t>(r.zero_since_ms), 8);
  return out;
}

bool DecodeRef(absl::string_view in, RefRecord* r) {
  if (in.size() != 16) return false;
  r->exists = true;
  r->count = GetBE(in, 8);
  r->zero_since_ms = static_cast<int64_t>(GetBE(in.substr(8), 8));
  return true;
}

std::string EncodeTensorInfo(const TensorInfo& t) {
  std::string out;
  PutBE(&out, static_cast<uint32_t>(t.first_rank), 4);
  PutBE(&out, static_cast<uint64_t>(t.max_extent0), 8);
  PutBE(&out, t.dtype.size(), 1);
  out.append(t.dtype);
  PutBE(&out, t.global_shape.size(), 4);
  for (int64_t d : t.global_shape) PutBE(&out, static_cast<uint64_t>(d), 8);
  return out;
}

bool DecodeTensorInfo(absl::string_view in, TensorInfo* t) {
  if (in.size() < 13) return false;
  t->first_rank = static_cast<int32_t>(GetBE(in, 4));
  t->max_extent0 = static_cast<int64_t>(GetBE(in.substr(4), 8));
  const size_t dlen = GetBE(in.substr(12), 1);
  in.remove_prefix(13);
  if (in.size() < dlen + 4) return false;
  t->dtype = std::string(in.substr(0, dlen));
  in.remove_prefix(dlen);
  const size_t ndim = GetBE(in, 4);
  in.remove_prefix(4);
  if (in.size() != ndim * 8) return false;
  t->global_shape.clear();
  for (size_t i = 0; i < ndim; ++i) {
    t->global_shape.push_back(static_cast<int64_t>(GetBE(in.substr(8 * i), 8)));
  }
  return true;
}

}  // namespace snapback::coordinator::internal
