#include "server/coordinator_store.h"

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace snapback::server {
namespace {

using v1::CheckpointInfo;
using v1::JobInfo;
using v1::RankManifest;
using v1::TensorEntry;

// ---------------------------------------------------------------------------
// Keys. One byte of kind, '/', then the fields; a job id never contains
// '\0' (see ValidJobId), so "<job>\0" ends it unambiguously and a prefix scan
// of one job never runs into another whose id it prefixes. Steps, ranks and
// offsets are fixed-width big-endian so that byte order is numeric order.
// See docs/coordinator.md for the table.
constexpr absl::string_view kFormatKey = "meta/format";
constexpr absl::string_view kFormatVersion = "1";
constexpr absl::string_view kClaimPrefix = "k/";
constexpr absl::string_view kRefPrefix = "r/";
constexpr absl::string_view kZeroPrefix = "z/";
// Claim values: "" = claimed by ClaimChunks only; "1" = named by a committed
// rank manifest of the checkpoint (becomes a reference when it commits).
constexpr absl::string_view kClaimNamed = "1";

void PutBE(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetBE(absl::string_view in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

std::string JobKey(absl::string_view job) { return absl::StrCat("j/", job); }
// kind "c" checkpoint, "m" manifest, "k" claim, "s" shard region, "t" tensor.
std::string StepPrefix(absl::string_view kind, absl::string_view job, int64_t step) {
  std::string key = absl::StrCat(kind, "/", job, absl::string_view("\0", 1));
  PutBE(&key, static_cast<uint64_t>(step), 8);
  return key;
}
// Incidents of the failure detector: "i/<job>\0<seq, 8 bytes big-endian>".
std::string IncidentPrefix(absl::string_view job) {
  return absl::StrCat("i/", job, absl::string_view("\0", 1));
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

// Splits "<kind>/<job>\0<step>..." into job and step.
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

absl::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }
// Distro abseil's string_view is not std::string_view, so Slice needs help.
rocksdb::Slice Sl(absl::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat("coordinator metadata ", what, ": ", s.ToString());
  if (s.IsCorruption()) {
    return absl::DataLossError(absl::StrCat(
        msg, "; the metadata database is corrupt: restore DATA_DIR/meta from a backup"));
  }
  if (s.IsNoSpace()) {
    return absl::ResourceExhaustedError(
        absl::StrCat(msg, "; free space on the data volume"));
  }
  if (s.IsIOError()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

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

// ---------------------------------------------------------------------------
// Validation.

constexpr size_t kMaxJobIdLength = 128;
constexpr int32_t kMaxWorldSize = 65536;
constexpr size_t kMaxNameBytes = 1024;
constexpr size_t kMaxReasonBytes = 1024;
constexpr int kMaxNamedIds = 4;  // ids listed in an error message
constexpr int kCommitAttempts = 3;

// Untrusted text, quoted and shortened for an error message.
std::string Quote(absl::string_view s) {
  std::string out = absl::CHexEscape(s.substr(0, 80));
  return absl::StrCat("'", out, s.size() > 80 ? "...'" : "'");
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

absl::Status CheckRankInRange(const v1::RankRef& ref, const JobInfo& job) {
  if (ref.rank() < job.world_size()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "rank ", ref.rank(), " is out of range: job ", job.job_id(), " has world_size ",
      job.world_size(), " (ranks 0..", job.world_size() - 1, ")"));
}

// Bytes per element, or 0 for an unknown dtype.
int DtypeSize(absl::string_view dtype) {
  static constexpr std::pair<absl::string_view, int> kDtypes[] = {
      {"float32", 4}, {"bfloat16", 2}, {"float16", 2}, {"float64", 8}, {"int8", 1},
      {"uint8", 1},   {"int16", 2},    {"int32", 4},   {"int64", 8},   {"bool", 1}};
  for (const auto& [name, size] : kDtypes) {
    if (name == dtype) return size;
  }
  return 0;
}

absl::Status ValidName(absl::string_view name, absl::string_view where) {
  if (name.empty() || name.size() > kMaxNameBytes || absl::StrContains(name, '\0')) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": name ", Quote(name),
                     " is invalid: use 1 to 1024 bytes without NUL characters"));
  }
  return absl::OkStatus();
}

std::string Dims(const google::protobuf::RepeatedField<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

// Checks the chunk list of one entry; adds its ids to `ids`.
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

// Checks one rank's manifest on its own (cross-rank checks need the store).
// Collects its distinct chunk ids and logical bytes.
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

absl::Status AbortedError(const CheckpointInfo& c) {
  return absl::AbortedError(
      absl::StrCat("checkpoint ", CheckpointName(c.job_id(), c.step()), " was aborted (",
                   c.abort_reason(), "); start a new save at a later step"));
}

std::string ListIds(const std::vector<ChunkId>& ids) {
  std::vector<std::string> hex;
  for (size_t i = 0; i < ids.size() && i < kMaxNamedIds; ++i) {
    hex.push_back(ids[i].ToHex());
  }
  return absl::StrCat(absl::StrJoin(hex, ", "), ids.size() > kMaxNamedIds ? ", ..." : "");
}

std::string Region(const google::protobuf::RepeatedField<int64_t>& off,
                   const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("offset ", Dims(off), ", shape ", Dims(shape));
}

}  // namespace

// ---------------------------------------------------------------------------
// Txn: one synced WriteBatch plus the in-memory changes that go with it.
// Tracks chunk reference records and claim counts changed so far in the
// batch, so that code adding to the batch reads its own writes. Used only
// while holding the store's writer lock (asserted where it matters; the
// thread-safety analysis cannot name the lock through store_).
class CoordinatorStore::Txn {
 public:
  explicit Txn(CoordinatorStore* store) : store_(store) {}

  rocksdb::WriteBatch batch;
  // Checkpoint keys deleted in this batch (for latest_committed).
  absl::flat_hash_set<std::string> deleted_checkpoints;

  // The chunk's reference record as of this batch; changes through the
  // returned pointer are written by Write().
  absl::StatusOr<RefRecord*> Ref(const ChunkId& id) {
    auto it = refs_.find(id);
    if (it != refs_.end()) return &it->second.now;
    std::string value;
    rocksdb::Status s = store_->db_->Get(rocksdb::ReadOptions(), RefKey(id), &value);
    RefRecord r;
    if (s.ok()) {
      if (!DecodeRef(value, &r)) {
        return absl::DataLossError(
            absl::StrCat("malformed reference record for chunk ", id.ToHex()));
      }
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "read");
    }
    return &refs_.emplace(id, Entry{r, r}).first->second.now;
  }

  // Checkpoints claiming `id` as of this batch.
  int Claims(const ChunkId& id) {
    store_->mu_.AssertHeld();
    auto it = store_->claims_.find(id);
    int n = it == store_->claims_.end() ? 0 : it->second;
    auto d = claim_deltas_.find(id);
    return n + (d == claim_deltas_.end() ? 0 : d->second);
  }
  void AddClaim(const ChunkId& id, int delta) { claim_deltas_[id] += delta; }

  // A claim of the checkpoint was dropped: when nothing else protects the
  // chunk, its grace period starts now. (A chunk nobody ever referenced has
  // no record yet; creating one is what lets GC find it.)
  absl::Status ClaimReleased(const ChunkId& id, int64_t now_ms) {
    if (Claims(id) > 0) return absl::OkStatus();
    SNAPBACK_ASSIGN_OR_RETURN(RefRecord * r, Ref(id));
    // Unreferenced and now unclaimed too: the grace period restarts, even
    // for a chunk that was unreferenced before the claim was taken.
    if (!r->exists || r->count == 0) *r = RefRecord{true, 0, now_ms};
    return absl::OkStatus();
  }

  bool empty() const { return batch.Count() == 0 && refs_.empty(); }

  // Adds the reference changes to the batch, writes it with a synced WAL,
  // and only then applies the claim changes in memory.
  absl::Status Write() {
    store_->mu_.AssertHeld();
    for (auto& [id, e] : refs_) {
      const RefRecord& was = e.was;
      const RefRecord& now = e.now;
      if (was == now) continue;
      const bool was_zero = was.exists && was.count == 0;
      const bool now_zero = now.exists && now.count == 0;
      if (was_zero && (!now_zero || now.zero_since_ms != was.zero_since_ms)) {
        batch.Delete(ZeroKey(was.zero_since_ms, id));
      }
      if (now_zero && (!was_zero || now.zero_since_ms != was.zero_since_ms)) {
        batch.Put(ZeroKey(now.zero_since_ms, id), "");
      }
      if (now.exists) {
        RefRecord stored = now;
        if (stored.count > 0) stored.zero_since_ms = 0;
        batch.Put(RefKey(id), EncodeRef(stored));
      } else if (was.exists) {
        batch.Delete(RefKey(id));
      }
    }
    if (batch.Count() > 0) {
      rocksdb::WriteOptions write_options;
      write_options.sync = true;
      SNAPBACK_RETURN_IF_ERROR(
          FromRocks(store_->db_->Write(write_options, &batch), "write"));
    }
    for (const auto& [id, delta] : claim_deltas_) {
      int& n = store_->claims_[id];
      n += delta;
      if (n <= 0) store_->claims_.erase(id);
    }
    return absl::OkStatus();
  }

 private:
  struct Entry {
    RefRecord was;
    RefRecord now;
  };
  CoordinatorStore* const store_;
  absl::flat_hash_map<ChunkId, Entry> refs_;
  absl::flat_hash_map<ChunkId, int> claim_deltas_;
};

// ---------------------------------------------------------------------------

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

CoordinatorStore::CoordinatorStore(std::string dir, ChunkTier* tier,
                                   CoordinatorOptions options)
    : dir_(std::move(dir)),
      tier_(tier),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : RealClock()) {}

CoordinatorStore::~CoordinatorStore() {
  if (db_) (void)db_->Close();
}

absl::StatusOr<std::unique_ptr<CoordinatorStore>> CoordinatorStore::Open(
    const std::string& dir, ChunkTier* tier, CoordinatorOptions options) {
  if (tier == nullptr) return absl::InvalidArgumentError("no chunk tier");
  SNAPBACK_RETURN_IF_ERROR(ValidateCoordinatorOptions(options));
  std::unique_ptr<CoordinatorStore> store(
      new CoordinatorStore(dir, tier, std::move(options)));
  SNAPBACK_RETURN_IF_ERROR(store->Init());
  return store;
}

absl::Status CoordinatorStore::Init() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", dir_, ": ", ec.message()));
  }
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.paranoid_checks = true;
  // Same reasoning as the chunk index (storage/chunk_store.cc): the default
  // mode silently drops everything after a damaged WAL record, which here
  // would forget acknowledged commits and reference counts.
  db_options.wal_recovery_mode =
      options_.recovery == storage::IndexRecovery::kDropTornTail
          ? rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords
          : rocksdb::WALRecoveryMode::kAbsoluteConsistency;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir_, &db);
  if (!s.ok()) {
    if (s.IsCorruption()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "coordinator metadata in ", dir_, " is corrupt (", s.ToString(),
          "); refusing to open rather than forget committed checkpoints. Restore it "
          "from a backup; only if this machine lost power, restart once with "
          "--index-recovery=drop-torn-tail to drop an incomplete last WAL record"));
    }
    return FromRocks(s, "open");
  }
  db_.reset(db);

  std::string format;
  s = db_->Get(rocksdb::ReadOptions(), Sl(kFormatKey), &format);
  if (s.IsNotFound()) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    it->SeekToFirst();
    if (it->Valid()) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir_,
          " holds data without a snapback metadata format marker; it is not a "
          "coordinator metadata directory"));
    }
    rocksdb::WriteOptions write_options;
    write_options.sync = true;
    SNAPBACK_RETURN_IF_ERROR(
        FromRocks(db_->Put(write_options, Sl(kFormatKey), Sl(kFormatVersion)), "write"));
  } else if (!s.ok()) {
    return FromRocks(s, "read");
  } else if (format != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("coordinator metadata in ", dir_, " has format ", Quote(format),
                     "; this build reads format ", kFormatVersion,
                     ": run the snapback version that wrote it"));
  }

  // Claims are kept by checkpoint on disk; GC asks by chunk, so mirror them.
  absl::MutexLock lock(&mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(Sl(kClaimPrefix)); it->Valid() && it->key().starts_with(Sl(kClaimPrefix));
       it->Next()) {
    absl::string_view key = View(it->key());
    if (key.size() < 32) return absl::DataLossError("malformed claim key");
    ++claims_[*ChunkId::FromBytes(key.substr(key.size() - 32))];
  }
  return FromRocks(it->status(), "scan");
}

int64_t CoordinatorStore::NowMs() { return absl::ToUnixMillis(clock_->Now()); }

// ---------------------------------------------------------------------------
// Reads.

absl::StatusOr<JobInfo> CoordinatorStore::LoadJob(absl::string_view job_id) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), JobKey(job_id), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("job ", job_id, " is not registered; call RegisterJob first"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
  JobInfo job;
  if (!job.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("malformed job record for ", job_id));
  }
  return job;
}

absl::StatusOr<CheckpointInfo> CoordinatorStore::LoadCheckpoint(absl::string_view job_id,
                                                                int64_t step) {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), CheckpointKey(job_id, step), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", CheckpointName(job_id, step), " does not exist"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
  CheckpointInfo ckpt;
  if (!ckpt.ParseFromString(value)) {
    return absl::DataLossError(
        absl::StrCat("malformed checkpoint record for ", CheckpointName(job_id, step)));
  }
  return ckpt;
}

absl::StatusOr<std::vector<CheckpointInfo>> CoordinatorStore::LoadCheckpoints(
    absl::string_view job_id) {
  std::vector<CheckpointInfo> out;
  const std::string prefix = JobCheckpointPrefix(job_id);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    CheckpointInfo& ckpt = out.emplace_back();
    if (!ckpt.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(
          absl::StrCat("malformed checkpoint record in job ", job_id));
    }
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  return out;
}

absl::StatusOr<std::vector<JobInfo>> CoordinatorStore::LoadJobs() {
  std::vector<JobInfo> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("j/"); it->Valid() && it->key().starts_with("j/"); it->Next()) {
    JobInfo& job = out.emplace_back();
    if (!job.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError("malformed job record");
    }
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  return out;
}

// Deletes every key that starts with `prefix` (as stored; not keys added to
// the same batch).
static absl::Status DeletePrefix(rocksdb::DB* db, rocksdb::WriteBatch* batch,
                                 absl::string_view prefix) {
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  const rocksdb::Slice p(prefix.data(), prefix.size());
  for (it->Seek(p); it->Valid() && it->key().starts_with(p); it->Next()) {
    batch->Delete(it->key());
  }
  return FromRocks(it->status(), "scan");
}

// ---------------------------------------------------------------------------
// Jobs.

absl::StatusOr<v1::RegisterJobResponse> CoordinatorStore::RegisterJob(
    const v1::RegisterJobRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(req.job_id()));
  if (req.world_size() < 1 || req.world_size() > kMaxWorldSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("world_size ", req.world_size(), " is invalid: use 1..",
                     kMaxWorldSize, " (the number of ranks that save a checkpoint)"));
  }
  absl::MutexLock lock(&mu_);
  v1::RegisterJobResponse out;
  absl::StatusOr<JobInfo> existing = LoadJob(req.job_id());
  if (existing.ok()) {
    if (existing->world_size() != req.world_size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", req.job_id(), " exists with world_size ", existing->world_size(),
          ", not ", req.world_size(),
          "; a job's world size never changes: register a new job id (resharding "
          "happens when restoring)"));
    }
    if (!req.scheduler().empty() &&
        (req.scheduler() != existing->scheduler() ||
         req.scheduler_job_id() != existing->scheduler_job_id())) {
      // The job now runs under another launcher or scheduler job: the
      // detector must restart it through that one.
      existing->set_scheduler(req.scheduler());
      existing->set_scheduler_job_id(req.scheduler_job_id());
      Txn txn(this);
      txn.batch.Put(JobKey(existing->job_id()), existing->SerializeAsString());
      SNAPBACK_RETURN_IF_ERROR(txn.Write());
    }
    *out.mutable_job() = *std::move(existing);
    out.set_created(false);
    return out;
  }
  if (!absl::IsNotFound(existing.status())) return existing.status();

  JobInfo job;
  job.set_job_id(req.job_id());
  job.set_world_size(req.world_size());
  if (req.has_retention()) {
    *job.mutable_retention() = req.retention();
  } else {
    job.mutable_retention()->set_keep_last(options_.default_keep_last);
  }
  job.set_incarnation(0);
  job.set_restore_target(-1);
  job.set_latest_committed(-1);
  job.set_scheduler(req.scheduler());
  job.set_scheduler_job_id(req.scheduler_job_id());
  Txn txn(this);
  txn.batch.Put(JobKey(job.job_id()), job.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  *out.mutable_job() = std::move(job);
  out.set_created(true);
  return out;
}

absl::StatusOr<JobInfo> CoordinatorStore::DescribeJob(absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  return LoadJob(job_id);
}

absl::StatusOr<JobInfo> CoordinatorStore::AdvanceIncarnation(absl::string_view job_id,
                                                             int64_t at_least) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  v1::RankRef ref;
  ref.set_job_id(std::string(job_id));
  ref.set_incarnation(std::max<int64_t>(job.incarnation() + 1, at_least));
  SNAPBACK_RETURN_IF_ERROR(Fence(ref, &job));
  return job;
}

absl::Status CoordinatorStore::PutIncident(const v1::Incident& incident) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(incident.job_id()));
  if (incident.seq() < 0) return absl::InvalidArgumentError("incident seq must be >= 0");
  std::string key = IncidentPrefix(incident.job_id());
  PutBE(&key, static_cast<uint64_t>(incident.seq()), 8);
  absl::MutexLock lock(&mu_);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(db_->Put(wo, Sl(key), incident.SerializeAsString()), "write incident");
}

absl::StatusOr<std::vector<v1::Incident>> CoordinatorStore::ListIncidents(
    absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  const std::string prefix = IncidentPrefix(job_id);
  std::vector<v1::Incident> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    v1::Incident incident;
    if (!incident.ParseFromArray(it->value().data(),
                                 static_cast<int>(it->value().size()))) {
      return absl::DataLossError(
          absl::StrCat("malformed incident record of job ", Quote(job_id)));
    }
    out.push_back(std::move(incident));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan incidents"));
  return out;
}

absl::StatusOr<v1::ListJobsResponse> CoordinatorStore::ListJobs() {
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<JobInfo> jobs, LoadJobs());
  v1::ListJobsResponse out;
  for (JobInfo& job : jobs) *out.add_jobs() = std::move(job);
  return out;
}

// ---------------------------------------------------------------------------
// Fencing, abort, delete.

absl::Status CoordinatorStore::Fence(const v1::RankRef& ref, JobInfo* job) {
  if (ref.incarnation() < job->incarnation()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stale incarnation ", ref.incarnation(), "; the job is at incarnation ",
        job->incarnation(), ": this process belongs to a previous run and must exit"));
  }
  if (ref.incarnation() == job->incarnation()) return absl::OkStatus();
  // A newer run of the job: its predecessor's unfinished checkpoints can
  // never complete (their ranks are gone or fenced), so release their claims
  // now rather than one lease later.
  Txn txn(this);
  job->set_incarnation(ref.incarnation());
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts,
                            LoadCheckpoints(job->job_id()));
  for (CheckpointInfo& ckpt : ckpts) {
    if (ckpt.state() == v1::WRITING && ckpt.incarnation() < ref.incarnation()) {
      SNAPBACK_RETURN_IF_ERROR(
          AbortInTxn(&txn, std::move(ckpt),
                     absl::StrCat("superseded by incarnation ", ref.incarnation())));
    }
  }
  txn.batch.Put(JobKey(job->job_id()), job->SerializeAsString());
  return txn.Write();
}

absl::Status CoordinatorStore::ReleaseClaimsInTxn(Txn* txn, absl::string_view job_id,
                                                  int64_t step) {
  const std::string prefix = StepPrefix("k", job_id, step);
  const int64_t now = NowMs();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    const ChunkId id = *ChunkId::FromBytes(View(it->key()).substr(prefix.size()));
    txn->batch.Delete(it->key());
    txn->AddClaim(id, -1);
    SNAPBACK_RETURN_IF_ERROR(txn->ClaimReleased(id, now));
  }
  return FromRocks(it->status(), "scan");
}

absl::Status CoordinatorStore::AbortInTxn(Txn* txn, CheckpointInfo ckpt,
                                          absl::string_view reason) {
  const std::string& job = ckpt.job_id();
  const int64_t step = ckpt.step();
  SNAPBACK_RETURN_IF_ERROR(
      DeletePrefix(db_.get(), &txn->batch, StepPrefix("m", job, step)));
  SNAPBACK_RETURN_IF_ERROR(
      DeletePrefix(db_.get(), &txn->batch, StepPrefix("s", job, step)));
  SNAPBACK_RETURN_IF_ERROR(
      DeletePrefix(db_.get(), &txn->batch, StepPrefix("t", job, step)));
  SNAPBACK_RETURN_IF_ERROR(ReleaseClaimsInTxn(txn, job, step));
  ckpt.set_state(v1::ABORTED);
  ckpt.set_abort_reason(std::string(reason.substr(0, kMaxReasonBytes)));
  ckpt.set_last_activity_unix_ms(NowMs());
  txn->batch.Put(CheckpointKey(job, step), ckpt.SerializeAsString());
  return absl::OkStatus();
}

absl::Status CoordinatorStore::DeleteCommittedInTxn(Txn* txn, const CheckpointInfo& ckpt,
                                                    JobInfo* job) {
  const std::string& job_id = ckpt.job_id();
  const int64_t step = ckpt.step();
  const int64_t now = NowMs();
  // One reference per distinct chunk of the checkpoint, as CommitRank added.
  absl::flat_hash_set<ChunkId> ids;
  const std::string prefix = StepPrefix("m", job_id, step);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    RankManifest m;
    if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("malformed manifest in checkpoint ",
                                              CheckpointName(job_id, step)));
    }
    for (const TensorEntry& t : m.tensors()) {
      for (const v1::ChunkRef& c : t.chunks()) ids.insert(*ChunkId::FromBytes(c.id()));
    }
    for (const v1::BlobEntry& b : m.blobs()) {
      for (const v1::ChunkRef& c : b.chunks()) ids.insert(*ChunkId::FromBytes(c.id()));
    }
    txn->batch.Delete(it->key());
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  for (const ChunkId& id : ids) {
    SNAPBACK_ASSIGN_OR_RETURN(RefRecord * r, txn->Ref(id));
    if (!r->exists || r->count == 0) {
      return absl::DataLossError(absl::StrCat(
          "chunk ", id.ToHex(), " of committed checkpoint ", CheckpointName(job_id, step),
          " has no reference; the metadata is inconsistent (run a consistency check)"));
    }
    if (--r->count == 0) r->zero_since_ms = now;
  }
  const std::string key = CheckpointKey(job_id, step);
  txn->batch.Delete(key);
  txn->deleted_checkpoints.insert(key);
  if (job->latest_committed() == step) {
    int64_t latest = -1;
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts, LoadCheckpoints(job_id));
    for (const CheckpointInfo& c : ckpts) {
      if (c.state() == v1::COMMITTED &&
          !txn->deleted_checkpoints.contains(CheckpointKey(job_id, c.step()))) {
        latest = std::max(latest, c.step());
      }
    }
    job->set_latest_committed(latest);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The write path.

absl::StatusOr<v1::BeginCheckpointResponse> CoordinatorStore::BeginCheckpoint(
    const v1::BeginCheckpointRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  const v1::RankRef& ref = req.rank();
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(ref.job_id()));
  SNAPBACK_RETURN_IF_ERROR(CheckRankInRange(ref, job));
  SNAPBACK_RETURN_IF_ERROR(Fence(ref, &job));
  const int64_t now = NowMs();
  absl::StatusOr<CheckpointInfo> ckpt = LoadCheckpoint(ref.job_id(), req.step());
  bool write = false;
  if (!ckpt.ok()) {
    if (!absl::IsNotFound(ckpt.status())) return ckpt.status();
    ckpt = CheckpointInfo();
    write = true;
  } else if (ckpt->state() == v1::COMMITTED) {
    return absl::AlreadyExistsError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " is already COMMITTED; nothing to save for this step"));
  } else if (ckpt->state() == v1::ABORTED) {
    if (ckpt->incarnation() >= ref.incarnation()) return AbortedError(*ckpt);
    // Left over from a previous run (its manifests and claims went with the
    // abort): this run saves the step afresh.
    ckpt = CheckpointInfo();
    write = true;
  } else {
    // Renewing a lease costs a synced write; skip it while the lease is
    // fresh, so W ranks joining one checkpoint do not cost W syncs.
    write = now - ckpt->last_activity_unix_ms() >=
            absl::ToInt64Milliseconds(options_.checkpoint_lease / 16);
  }
  if (write) {
    if (ckpt->job_id().empty()) {
      ckpt->set_job_id(ref.job_id());
      ckpt->set_step(req.step());
      ckpt->set_state(v1::WRITING);
      ckpt->set_incarnation(ref.incarnation());
      ckpt->set_created_unix_ms(now);
    }
    ckpt->set_last_activity_unix_ms(now);
    Txn txn(this);
    txn.batch.Put(CheckpointKey(ref.job_id(), req.step()), ckpt->SerializeAsString());
    SNAPBACK_RETURN_IF_ERROR(txn.Write());
  }
  v1::BeginCheckpointResponse out;
  for (const std::string& e : tier_->endpoints()) out.add_storage_endpoints(e);
  out.set_replication(tier_->replication());
  return out;
}

absl::StatusOr<v1::ClaimChunksResponse> CoordinatorStore::ClaimChunks(
    const v1::ClaimChunksRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  if (req.ids_size() > options_.max_claim_ids) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClaimChunks names ", req.ids_size(), " ids; the limit is ",
                     options_.max_claim_ids, ": split them over several calls"));
  }
  std::vector<ChunkId> ids;
  ids.reserve(req.ids_size());
  for (int i = 0; i < req.ids_size(); ++i) {
    absl::StatusOr<ChunkId> id = ChunkId::FromBytes(req.ids(i));
    if (!id.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ids[", i, "] is ", req.ids(i).size(),
                       " bytes; a chunk id is the 32-byte SHA-256 of its raw bytes"));
    }
    ids.push_back(*id);
  }
  const v1::RankRef& ref = req.rank();
  {
    absl::MutexLock lock(&mu_);
    SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(ref.job_id()));
    SNAPBACK_RETURN_IF_ERROR(CheckRankInRange(ref, job));
    SNAPBACK_RETURN_IF_ERROR(Fence(ref, &job));
    absl::StatusOr<CheckpointInfo> ckpt = LoadCheckpoint(ref.job_id(), req.step());
    if (absl::IsNotFound(ckpt.status())) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                       " was not begun: call BeginCheckpoint first"));
    }
    SNAPBACK_RETURN_IF_ERROR(ckpt.status());
    if (ckpt->state() == v1::ABORTED) return AbortedError(*ckpt);
    if (ckpt->state() == v1::COMMITTED) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                       " is already COMMITTED; its chunks need no claim"));
    }
    // The claims are durable before the tier is asked: from here on GC
    // cannot delete these chunks, so "present" stays true.
    Txn txn(this);
    absl::flat_hash_set<ChunkId> seen;
    for (const ChunkId& id : ids) {
      if (!seen.insert(id).second) continue;
      const std::string key = ClaimKey(ref.job_id(), req.step(), id);
      std::string value;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &value);
      if (s.IsNotFound()) {
        txn.batch.Put(key, "");
        txn.AddClaim(id, +1);
      } else {
        SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
      }
    }
    const int64_t now = NowMs();
    if (txn.batch.Count() > 0 ||
        now - ckpt->last_activity_unix_ms() >=
            absl::ToInt64Milliseconds(options_.checkpoint_lease / 16)) {
      ckpt->set_last_activity_unix_ms(now);
      txn.batch.Put(CheckpointKey(ref.job_id(), req.step()), ckpt->SerializeAsString());
    }
    SNAPBACK_RETURN_IF_ERROR(txn.Write());
  }
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> present, tier_->Has(ids));
  v1::ClaimChunksResponse out;
  for (bool p : present) out.add_present(p);
  return out;
}

absl::Status CoordinatorStore::PrepareCommit(const v1::CommitRankRequest& req,
                                             const std::string& manifest_bytes,
                                             JobInfo* job, CheckpointInfo* ckpt,
                                             bool* replay) {
  const v1::RankRef& ref = req.rank();
  *replay = false;
  SNAPBACK_ASSIGN_OR_RETURN(*job, LoadJob(ref.job_id()));
  SNAPBACK_RETURN_IF_ERROR(CheckRankInRange(ref, *job));
  SNAPBACK_RETURN_IF_ERROR(Fence(ref, job));
  absl::StatusOr<CheckpointInfo> loaded = LoadCheckpoint(ref.job_id(), req.step());
  if (absl::IsNotFound(loaded.status())) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " was not begun: call BeginCheckpoint first"));
  }
  SNAPBACK_RETURN_IF_ERROR(loaded.status());
  *ckpt = *std::move(loaded);
  std::string stored;
  rocksdb::Status s = db_->Get(
      rocksdb::ReadOptions(), ManifestKey(ref.job_id(), req.step(), ref.rank()), &stored);
  if (s.ok()) {
    if (stored == manifest_bytes) {
      *replay = true;  // a retry after a lost response
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", ref.rank(), " already committed a different manifest for checkpoint ",
        CheckpointName(ref.job_id(), req.step()),
        "; a committed rank's manifest cannot change: save a later step"));
  }
  if (!s.IsNotFound()) return FromRocks(s, "read");
  if (ckpt->state() == v1::ABORTED) return AbortedError(*ckpt);
  if (ckpt->state() == v1::COMMITTED) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " is already COMMITTED without rank ", ref.rank()));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::CommitRankResponse> CoordinatorStore::CommitRank(
    const v1::CommitRankRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  std::vector<ChunkId> ids;
  uint64_t logical_bytes = 0;
  {
    absl::Status valid = ValidManifest(req.manifest(), options_, &ids, &logical_bytes);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rank ", req.rank().rank(), "'s manifest for ",
          CheckpointName(req.rank().job_id(), req.step()), ": ", valid.message()));
    }
  }
  const std::string manifest_bytes = req.manifest().SerializeAsString();
  for (int attempt = 0; attempt < kCommitAttempts; ++attempt) {
    uint64_t generation;
    {
      absl::MutexLock lock(&mu_);
      JobInfo job;
      CheckpointInfo ckpt;
      bool replay;
      SNAPBACK_RETURN_IF_ERROR(PrepareCommit(req, manifest_bytes, &job, &ckpt, &replay));
      if (replay) {
        v1::CommitRankResponse out;
        out.set_checkpoint_committed(ckpt.state() == v1::COMMITTED);
        out.set_ranks_committed(ckpt.ranks_committed());
        return out;
      }
      generation = gc_generation_;
    }
    // The tier is asked without the lock (it may be remote). GC may delete
    // chunks meanwhile only if they are unclaimed; the generation check
    // below notices that and asks again.
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> present, tier_->Has(ids));
    std::vector<ChunkId> missing;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!present[i]) missing.push_back(ids[i]);
    }
    if (!missing.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(missing.size(), " of the ", ids.size(), " chunks named by rank ",
                       req.rank().rank(), "'s manifest for ",
                       CheckpointName(req.rank().job_id(), req.step()),
                       " are not durable on the storage tier: ", ListIds(missing),
                       "; upload them first, then commit again"));
    }
    absl::MutexLock lock(&mu_);
    JobInfo job;
    CheckpointInfo ckpt;
    bool replay;
    SNAPBACK_RETURN_IF_ERROR(PrepareCommit(req, manifest_bytes, &job, &ckpt, &replay));
    if (replay) {
      v1::CommitRankResponse out;
      out.set_checkpoint_committed(ckpt.state() == v1::COMMITTED);
      out.set_ranks_committed(ckpt.ranks_committed());
      return out;
    }
    if (generation != gc_generation_) continue;  // GC deleted chunks: ask again
    return FinishCommit(req, manifest_bytes, ids, logical_bytes, std::move(job),
                        std::move(ckpt));
  }
  return absl::UnavailableError(
      "garbage collection kept deleting chunks while this rank committed; retry the "
      "commit");
}

absl::StatusOr<v1::CommitRankResponse> CoordinatorStore::FinishCommit(
    const v1::CommitRankRequest& req, const std::string& manifest_bytes,
    const std::vector<ChunkId>& ids, uint64_t logical_bytes, JobInfo job,
    CheckpointInfo ckpt) {
  const v1::RankRef& ref = req.rank();
  const std::string& job_id = ref.job_id();
  const int64_t step = req.step();
  const RankManifest& manifest = req.manifest();
  const int64_t now = NowMs();
  const bool last = ckpt.ranks_committed() + 1 >= job.world_size();
  Txn txn(this);

  // Shards of one tensor name across ranks: the same dtype and global
  // shape, and regions that are identical (replicas) or disjoint. The index
  // ("t/" per name, "s/" per distinct region) lives only while WRITING, so
  // the last rank checks against it without adding to it.
  for (const TensorEntry& t : manifest.tensors()) {
    const std::string info_key = TensorInfoKey(job_id, step, t.name());
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), info_key, &value);
    TensorInfo info;
    const bool known = s.ok();
    if (known) {
      if (!DecodeTensorInfo(value, &info))
        return absl::DataLossError("malformed tensor info");
      const std::vector<int64_t> global(t.global_shape().begin(), t.global_shape().end());
      if (info.dtype != t.dtype() || info.global_shape != global) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", Quote(t.name()), " of checkpoint ", CheckpointName(job_id, step),
            ": rank ", ref.rank(), " has dtype ", t.dtype(), " and global_shape ",
            Dims(t.global_shape()), " but rank ", info.first_rank, " committed dtype ",
            info.dtype, " and global_shape [", absl::StrJoin(info.global_shape, ", "),
            "]; every shard of one tensor must agree"));
      }
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "read");
    } else {
      info.first_rank = ref.rank();
      info.dtype = t.dtype();
      info.global_shape.assign(t.global_shape().begin(), t.global_shape().end());
    }
    const int ndim = t.shape_size();
    bool empty = false;
    for (int64_t d : t.shape()) empty = empty || d == 0;
    bool replica = false;
    std::string region_key = RegionPrefix(job_id, step, t.name());
    if (!empty && ndim > 0) {
      for (int64_t o : t.global_offset()) PutBE(&region_key, static_cast<uint64_t>(o), 8);
      for (int64_t d : t.shape()) PutBE(&region_key, static_cast<uint64_t>(d), 8);
      // Only regions starting within max_extent0 before this one can reach
      // into it along dim 0, so the scan stays short for the usual dim-0
      // sharding however many ranks there are.
      const std::string prefix = RegionPrefix(job_id, step, t.name());
      const int64_t off0 = t.global_offset(0), end0 = off0 + t.shape(0);
      std::string seek = prefix;
      PutBE(&seek,
            static_cast<uint64_t>(std::max<int64_t>(0, off0 - info.max_extent0 + 1)), 8);
      std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
      for (it->Seek(seek); it->Valid() && it->key().starts_with(prefix); it->Next()) {
        absl::string_view r = View(it->key()).substr(prefix.size());
        if (r.size() != static_cast<size_t>(16 * ndim) || it->value().size() != 4) {
          return absl::DataLossError("malformed shard region record");
        }
        auto e_off = [&](int i) {
          return static_cast<int64_t>(GetBE(r.substr(8 * i), 8));
        };
        auto e_len = [&](int i) {
          return static_cast<int64_t>(GetBE(r.substr(8 * (ndim + i)), 8));
        };
        if (e_off(0) >= end0) break;
        bool same = true, disjoint = false;
        for (int i = 0; i < ndim; ++i) {
          const int64_t a0 = t.global_offset(i), a1 = a0 + t.shape(i);
          const int64_t b0 = e_off(i), b1 = b0 + e_len(i);
          same = same && a0 == b0 && a1 == b1;
          disjoint = disjoint || a1 <= b0 || b1 <= a0;
        }
        if (same) {
          replica = true;
          break;
        }
        if (!disjoint) {
          std::vector<int64_t> offs, lens;
          for (int i = 0; i < ndim; ++i) {
            offs.push_back(e_off(i));
            lens.push_back(e_len(i));
          }
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor ", Quote(t.name()), " of checkpoint ", CheckpointName(job_id, step),
              ": rank ", ref.rank(), "'s shard (", Region(t.global_offset(), t.shape()),
              ") partially overlaps rank ", GetBE(View(it->value()), 4),
              "'s shard (offset [", absl::StrJoin(offs, ", "), "], shape [",
              absl::StrJoin(lens, ", "),
              "]); shards of one tensor must be identical replicas or disjoint: fix "
              "global_offset/shape of one of them"));
        }
      }
      SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    } else if (!empty) {
      replica = known;  // a scalar: every copy is the same region
    }
    if (!last) {
      bool info_changed = !known;
      if (!empty && !replica) {
        std::string rank_value;
        PutBE(&rank_value, static_cast<uint32_t>(ref.rank()), 4);
        txn.batch.Put(region_key, rank_value);
        if (ndim > 0 && t.shape(0) > info.max_extent0) {
          info.max_extent0 = t.shape(0);
          info_changed = true;
        }
      }
      if (info_changed) txn.batch.Put(info_key, EncodeTensorInfo(info));
    }
  }

  txn.batch.Put(ManifestKey(job_id, step, ref.rank()), manifest_bytes);
  ckpt.set_ranks_committed(ckpt.ranks_committed() + 1);
  ckpt.set_logical_bytes(ckpt.logical_bytes() + logical_bytes);
  ckpt.set_last_activity_unix_ms(now);

  if (!last) {
    // The manifest's chunks are claimed (and marked as named by a committed
    // manifest) in the same batch, so GC leaves them alone from now on.
    for (const ChunkId& id : ids) {
      const std::string key = ClaimKey(job_id, step, id);
      std::string value;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &value);
      if (s.IsNotFound()) {
        txn.AddClaim(id, +1);
      } else {
        SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
      }
      if (!s.ok() || value != kClaimNamed) txn.batch.Put(key, Sl(kClaimNamed));
    }
  } else {
    // The global commit: every rank's chunks get one reference each, the
    // claims go, the shard index goes, latest moves — all in this batch.
    absl::flat_hash_set<ChunkId> named(ids.begin(), ids.end());
    std::vector<ChunkId> claimed;
    const std::string prefix = StepPrefix("k", job_id, step);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      const ChunkId id = *ChunkId::FromBytes(View(it->key()).substr(prefix.size()));
      if (View(it->value()) == kClaimNamed) named.insert(id);
      claimed.push_back(id);
      txn.batch.Delete(it->key());
      txn.AddClaim(id, -1);
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    for (const ChunkId& id : named) {
      SNAPBACK_ASSIGN_OR_RETURN(RefRecord * r, txn.Ref(id));
      r->exists = true;
      ++r->count;
    }
    for (const ChunkId& id : claimed) {
      SNAPBACK_RETURN_IF_ERROR(txn.ClaimReleased(id, now));
    }
    SNAPBACK_RETURN_IF_ERROR(
        DeletePrefix(db_.get(), &txn.batch, StepPrefix("s", job_id, step)));
    SNAPBACK_RETURN_IF_ERROR(
        DeletePrefix(db_.get(), &txn.batch, StepPrefix("t", job_id, step)));
    ckpt.set_state(v1::COMMITTED);
    ckpt.set_committed_unix_ms(now);
    if (step > job.latest_committed()) {
      job.set_latest_committed(step);
      txn.batch.Put(JobKey(job_id), job.SerializeAsString());
    }
  }
  txn.batch.Put(CheckpointKey(job_id, step), ckpt.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  v1::CommitRankResponse out;
  out.set_checkpoint_committed(last);
  out.set_ranks_committed(ckpt.ranks_committed());
  return out;
}

absl::StatusOr<v1::AbortCheckpointResponse> CoordinatorStore::AbortCheckpoint(
    const v1::AbortCheckpointRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  const v1::RankRef& ref = req.rank();
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(ref.job_id()));
  SNAPBACK_RETURN_IF_ERROR(CheckRankInRange(ref, job));
  SNAPBACK_RETURN_IF_ERROR(Fence(ref, &job));
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt,
                            LoadCheckpoint(ref.job_id(), req.step()));
  if (ckpt.state() == v1::ABORTED) return v1::AbortCheckpointResponse();
  if (ckpt.state() == v1::COMMITTED) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " is COMMITTED and cannot be aborted; an operator may delete it"));
  }
  Txn txn(this);
  SNAPBACK_RETURN_IF_ERROR(AbortInTxn(
      &txn, std::move(ckpt),
      absl::StrCat("aborted by rank ", ref.rank(),
                   req.reason().empty() ? "" : absl::StrCat(": ", req.reason()))));
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return v1::AbortCheckpointResponse();
}

// ---------------------------------------------------------------------------
// The read path and operator calls.

absl::StatusOr<v1::GetLatestResponse> CoordinatorStore::GetLatest(
    absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  v1::GetLatestResponse out;
  if (job.restore_target() >= 0) {
    out.set_step(job.restore_target());
    out.set_is_restore_target(true);
  } else if (job.latest_committed() >= 0) {
    out.set_step(job.latest_committed());
  } else {
    return absl::NotFoundError(absl::StrCat(
        "job ", job_id, " has no committed checkpoint yet: start training from scratch"));
  }
  return out;
}

absl::StatusOr<v1::GetManifestResponse> CoordinatorStore::GetManifest(
    const v1::GetManifestRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(req.job_id()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(req.job_id()));
  if (req.rank() < 0 || req.rank() >= job.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", req.rank(),
                                                   " is out of range: job ", req.job_id(),
                                                   " has world_size ", job.world_size()));
  }
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt,
                            LoadCheckpoint(req.job_id(), req.step()));
  if (ckpt.state() != v1::COMMITTED) {
    return absl::NotFoundError(absl::StrCat(
        "checkpoint ", CheckpointName(req.job_id(), req.step()), " is ",
        StateName(ckpt.state()), " (", ckpt.ranks_committed(), " of ", job.world_size(),
        " ranks committed); only COMMITTED checkpoints can be read: ask GetLatest "
        "which step to restore"));
  }
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(),
                               ManifestKey(req.job_id(), req.step(), req.rank()), &value);
  v1::GetManifestResponse out;
  if (s.IsNotFound() || (s.ok() && !out.mutable_manifest()->ParseFromString(value))) {
    return absl::DataLossError(
        absl::StrCat("manifest of rank ", req.rank(), " of committed checkpoint ",
                     CheckpointName(req.job_id(), req.step()),
                     " is missing or malformed; the metadata is damaged"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
  out.set_world_size(job.world_size());
  for (const std::string& e : tier_->endpoints()) out.add_storage_endpoints(e);
  return out;
}

absl::StatusOr<v1::ListCheckpointsResponse> CoordinatorStore::ListCheckpoints(
    absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_RETURN_IF_ERROR(LoadJob(job_id).status());
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts, LoadCheckpoints(job_id));
  v1::ListCheckpointsResponse out;
  for (CheckpointInfo& c : ckpts) *out.add_checkpoints() = std::move(c);
  return out;
}

absl::StatusOr<CheckpointInfo> CoordinatorStore::PinCheckpoint(absl::string_view job_id,
                                                               int64_t step,
                                                               bool pinned) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(step));
  absl::MutexLock lock(&mu_);
  SNAPBACK_RETURN_IF_ERROR(LoadJob(job_id).status());
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
  if (pinned && ckpt.state() != v1::COMMITTED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", CheckpointName(job_id, step), " is ", StateName(ckpt.state()),
        "; only COMMITTED checkpoints can be pinned"));
  }
  if (ckpt.pinned() == pinned) return ckpt;
  ckpt.set_pinned(pinned);
  Txn txn(this);
  txn.batch.Put(CheckpointKey(job_id, step), ckpt.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return ckpt;
}

absl::StatusOr<v1::DeleteCheckpointResponse> CoordinatorStore::DeleteCheckpoint(
    absl::string_view job_id, int64_t step) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(step));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
  if (ckpt.pinned()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", CheckpointName(job_id, step), " is pinned; unpin first"));
  }
  if (job.restore_target() == step) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(job_id, step),
                     " is the job's restore target; clear the restore target first"));
  }
  Txn txn(this);
  switch (ckpt.state()) {
    case v1::COMMITTED:
      SNAPBACK_RETURN_IF_ERROR(DeleteCommittedInTxn(&txn, ckpt, &job));
      txn.batch.Put(JobKey(job_id), job.SerializeAsString());
      break;
    case v1::WRITING:
      SNAPBACK_RETURN_IF_ERROR(
          AbortInTxn(&txn, std::move(ckpt), "deleted by an operator while WRITING"));
      break;
    default:  // ABORTED: nothing left but the record
      txn.batch.Delete(CheckpointKey(job_id, step));
      break;
  }
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return v1::DeleteCheckpointResponse();
}

absl::StatusOr<JobInfo> CoordinatorStore::SetRestoreTarget(absl::string_view job_id,
                                                           int64_t step) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(step));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
  if (ckpt.state() != v1::COMMITTED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", CheckpointName(job_id, step), " is ", StateName(ckpt.state()),
        "; only a COMMITTED checkpoint can be the restore target"));
  }
  if (job.restore_target() == step) return job;
  job.set_restore_target(step);
  Txn txn(this);
  txn.batch.Put(JobKey(job_id), job.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return job;
}

absl::StatusOr<JobInfo> CoordinatorStore::ClearRestoreTarget(absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  if (job.restore_target() < 0) return job;
  job.set_restore_target(-1);
  Txn txn(this);
  txn.batch.Put(JobKey(job_id), job.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return job;
}

// ---------------------------------------------------------------------------
// Garbage collection.

absl::StatusOr<v1::CollectGarbageResponse> CoordinatorStore::CollectGarbage() {
  v1::CollectGarbageResponse out;
  {
    absl::MutexLock lock(&mu_);
    SNAPBACK_RETURN_IF_ERROR(ApplyRetention(&out));
  }
  SNAPBACK_RETURN_IF_ERROR(DeleteUnreferencedChunks(&out));
  return out;
}

absl::Status CoordinatorStore::ApplyRetention(v1::CollectGarbageResponse* out) {
  const int64_t now = NowMs();
  const int64_t lease_ms = absl::ToInt64Milliseconds(options_.checkpoint_lease);
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<JobInfo> jobs, LoadJobs());
  for (JobInfo& job : jobs) {
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts,
                              LoadCheckpoints(job.job_id()));
    const v1::RetentionPolicy& policy = job.retention();
    // Committed steps, newest first, for keep_last.
    std::vector<int64_t> committed;
    for (const CheckpointInfo& c : ckpts) {
      if (c.state() == v1::COMMITTED) committed.push_back(c.step());
    }
    std::sort(committed.rbegin(), committed.rend());
    absl::flat_hash_set<int64_t> newest;
    for (size_t i = 0; i < committed.size() && i < policy.keep_last(); ++i) {
      newest.insert(committed[i]);
    }
    Txn txn(this);
    bool job_changed = false;
    for (CheckpointInfo& c : ckpts) {
      switch (c.state()) {
        case v1::COMMITTED: {
          const bool keep =
              policy.keep_last() == 0 || newest.contains(c.step()) || c.pinned() ||
              c.step() == job.restore_target() ||
              (policy.keep_every_n_steps() > 0 &&
               c.step() % static_cast<int64_t>(policy.keep_every_n_steps()) == 0);
          if (keep) break;
          SNAPBACK_RETURN_IF_ERROR(DeleteCommittedInTxn(&txn, c, &job));
          job_changed = true;
          out->set_checkpoints_deleted(out->checkpoints_deleted() + 1);
          break;
        }
        case v1::WRITING:
          if (now - c.last_activity_unix_ms() < lease_ms) break;
          SNAPBACK_RETURN_IF_ERROR(
              AbortInTxn(&txn, std::move(c),
                         absl::StrCat("lease expired: no activity for ",
                                      absl::FormatDuration(options_.checkpoint_lease))));
          out->set_checkpoints_aborted(out->checkpoints_aborted() + 1);
          break;
        default:
          // ABORTED: remembered for one lease so that late calls of its ranks
          // get ABORTED, then forgotten.
          if (now - c.last_activity_unix_ms() >= lease_ms) {
            txn.batch.Delete(CheckpointKey(c.job_id(), c.step()));
          }
          break;
      }
    }
    if (job_changed) txn.batch.Put(JobKey(job.job_id()), job.SerializeAsString());
    if (!txn.empty()) SNAPBACK_RETURN_IF_ERROR(txn.Write());
  }
  return absl::OkStatus();
}

absl::Status CoordinatorStore::DeleteUnreferencedChunks(v1::CollectGarbageResponse* out) {
  const int64_t cutoff_ms = absl::ToUnixMillis(clock_->Now() - options_.gc_grace);
  // Claimed chunks stay in the queue; the cursor moves past them.
  std::string cursor(kZeroPrefix);
  for (;;) {
    // Decision, tier deletion and metadata removal of one batch happen under
    // one hold of the writer lock, which ClaimChunks also takes: a claim
    // cannot slip in between the decision and the deletion.
    absl::MutexLock lock(&mu_);
    std::vector<ChunkId> victims;
    std::vector<int64_t> zero_since;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(cursor); it->Valid() && it->key().starts_with(Sl(kZeroPrefix));
         it->Next()) {
      absl::string_view key = View(it->key());
      if (key.size() != kZeroPrefix.size() + 8 + 32) {
        return absl::DataLossError("malformed GC queue key");
      }
      const int64_t since =
          static_cast<int64_t>(GetBE(key.substr(kZeroPrefix.size()), 8));
      if (since > cutoff_ms) break;  // the queue is ordered by time
      cursor = absl::StrCat(key, absl::string_view("\0", 1));
      const ChunkId id = *ChunkId::FromBytes(key.substr(kZeroPrefix.size() + 8));
      if (claims_.contains(id)) continue;
      victims.push_back(id);
      zero_since.push_back(since);
      if (static_cast<int>(victims.size()) >= options_.gc_batch_chunks) break;
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    if (victims.empty()) return absl::OkStatus();
    // Tier first: if the metadata went first and we crashed, the chunks
    // would be stranded on the tier with nothing left to collect them.
    ++gc_generation_;
    SNAPBACK_RETURN_IF_ERROR(tier_->Delete(victims).status());
    Txn txn(this);
    for (size_t i = 0; i < victims.size(); ++i) {
      txn.batch.Delete(RefKey(victims[i]));
      txn.batch.Delete(ZeroKey(zero_since[i], victims[i]));
    }
    SNAPBACK_RETURN_IF_ERROR(txn.Write());
    out->set_chunks_deleted(out->chunks_deleted() + victims.size());
  }
}

// ---------------------------------------------------------------------------
// Verification.

absl::StatusOr<ConsistencyReport> CoordinatorStore::CheckConsistency(bool check_tier) {
  absl::ReaderMutexLock lock(&mu_);
  ConsistencyReport report;
  std::vector<std::string> problems;
  auto problem = [&](std::string p) {
    if (problems.size() < 10) problems.push_back(std::move(p));
  };

  absl::flat_hash_map<std::string, JobInfo> jobs;
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<JobInfo> job_list, LoadJobs());
  for (JobInfo& j : job_list) jobs[j.job_id()] = std::move(j);
  report.jobs = jobs.size();

  struct Ckpt {
    CheckpointInfo info;
    int manifests = 0;
    absl::flat_hash_set<ChunkId> named;  // chunks of its manifests
  };
  absl::flat_hash_map<std::string, Ckpt> ckpts;  // by "job\0step" key suffix
  auto id_of = [](absl::string_view job, int64_t step) {
    std::string k = absl::StrCat(job, absl::string_view("\0", 1));
    PutBE(&k, static_cast<uint64_t>(step), 8);
    return k;
  };
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("c/"); it->Valid() && it->key().starts_with("c/"); it->Next()) {
    std::string job;
    int64_t step;
    absl::string_view rest;
    Ckpt c;
    if (!ParseStepKey(View(it->key()), &job, &step, &rest) || !rest.empty() ||
        !c.info.ParseFromArray(it->value().data(),
                               static_cast<int>(it->value().size()))) {
      problem("malformed checkpoint record");
      continue;
    }
    if (!jobs.contains(job)) problem(absl::StrCat("checkpoint of unknown job ", job));
    ckpts[id_of(job, step)] = std::move(c);
  }
  report.checkpoints = ckpts.size();

  for (it->Seek("m/"); it->Valid() && it->key().starts_with("m/"); it->Next()) {
    std::string job;
    int64_t step;
    absl::string_view rest;
    RankManifest m;
    if (!ParseStepKey(View(it->key()), &job, &step, &rest) || rest.size() != 4 ||
        !m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      problem("malformed manifest record");
      continue;
    }
    auto c = ckpts.find(id_of(job, step));
    if (c == ckpts.end()) {
      problem(
          absl::StrCat("manifest of a missing checkpoint ", CheckpointName(job, step)));
      continue;
    }
    ++c->second.manifests;
    ++report.manifests;
    for (const TensorEntry& t : m.tensors()) {
      for (const v1::ChunkRef& r : t.chunks()) {
        c->second.named.insert(*ChunkId::FromBytes(r.id()));
      }
    }
    for (const v1::BlobEntry& b : m.blobs()) {
      for (const v1::ChunkRef& r : b.chunks()) {
        c->second.named.insert(*ChunkId::FromBytes(r.id()));
      }
    }
  }

  absl::flat_hash_map<ChunkId, uint64_t> expected_refs;
  absl::flat_hash_map<std::string, int64_t> latest;
  for (auto& [key, c] : ckpts) {
    const CheckpointInfo& info = c.info;
    const std::string name = CheckpointName(info.job_id(), info.step());
    auto job = jobs.find(info.job_id());
    const int world = job == jobs.end() ? 0 : job->second.world_size();
    switch (info.state()) {
      case v1::COMMITTED:
        ++report.committed;
        if (c.manifests != world || info.ranks_committed() != world) {
          problem(absl::StrCat("COMMITTED ", name, " has ", c.manifests,
                               " manifests and ", info.ranks_committed(),
                               " ranks committed, world_size ", world));
        }
        for (const ChunkId& id : c.named) ++expected_refs[id];
        latest[info.job_id()] = std::max(latest[info.job_id()], info.step() + 1);
        break;
      case v1::WRITING:
        if (c.manifests != info.ranks_committed()) {
          problem(absl::StrCat("WRITING ", name, " has ", c.manifests, " manifests but ",
                               info.ranks_committed(), " ranks committed"));
        }
        break;
      case v1::ABORTED:
        if (c.manifests != 0) problem(absl::StrCat("ABORTED ", name, " has manifests"));
        break;
      default:
        problem(absl::StrCat(name, " has no state"));
    }
  }
  for (const auto& [id, job] : jobs) {
    const int64_t want = latest.contains(id) ? latest[id] - 1 : -1;
    if (job.latest_committed() != want) {
      problem(absl::StrCat("job ", id, " latest_committed ", job.latest_committed(),
                           ", highest COMMITTED step ", want));
    }
    if (job.restore_target() >= 0) {
      auto c = ckpts.find(id_of(id, job.restore_target()));
      if (c == ckpts.end() || c->second.info.state() != v1::COMMITTED) {
        problem(absl::StrCat("job ", id, " restore target ", job.restore_target(),
                             " is not COMMITTED"));
      }
    }
  }

  // Claims: only WRITING checkpoints hold them, each named chunk of a
  // committed rank is claimed as such, and memory agrees with the database.
  absl::flat_hash_map<ChunkId, int> claims;
  for (it->Seek(Sl(kClaimPrefix)); it->Valid() && it->key().starts_with(Sl(kClaimPrefix));
       it->Next()) {
    std::string job;
    int64_t step;
    absl::string_view rest;
    if (!ParseStepKey(View(it->key()), &job, &step, &rest) || rest.size() != 32) {
      problem("malformed claim key");
      continue;
    }
    const ChunkId id = *ChunkId::FromBytes(rest);
    ++claims[id];
    ++report.claims;
    auto c = ckpts.find(id_of(job, step));
    if (c == ckpts.end() || c->second.info.state() != v1::WRITING) {
      problem(absl::StrCat("claim of ", id.ShortHex(), " by ", CheckpointName(job, step),
                           ", which is not WRITING"));
    } else if (View(it->value()) == kClaimNamed) {
      c->second.named.erase(id);  // accounted for
    }
  }
  for (const auto& [key, c] : ckpts) {
    if (c.info.state() == v1::WRITING && !c.named.empty()) {
      problem(absl::StrCat("WRITING ", CheckpointName(c.info.job_id(), c.info.step()),
                           " has ", c.named.size(), " unclaimed manifest chunks"));
    }
  }
  if (claims != claims_) {
    problem(absl::StrCat("in-memory claims (", claims_.size(),
                         " chunks) differ from the database (", claims.size(), ")"));
  }

  // References and the GC queue.
  absl::flat_hash_map<ChunkId, uint64_t> refs;
  absl::flat_hash_set<std::string> zero_keys;
  for (it->Seek(Sl(kRefPrefix)); it->Valid() && it->key().starts_with(Sl(kRefPrefix));
       it->Next()) {
    RefRecord r;
    absl::string_view key = View(it->key());
    if (key.size() != kRefPrefix.size() + 32 || !DecodeRef(View(it->value()), &r)) {
      problem("malformed reference record");
      continue;
    }
    const ChunkId id = *ChunkId::FromBytes(key.substr(kRefPrefix.size()));
    if (r.count > 0) {
      refs[id] = r.count;
    } else {
      zero_keys.insert(ZeroKey(r.zero_since_ms, id));
    }
  }
  report.referenced_chunks = refs.size();
  if (refs != expected_refs) {
    int shown = 0;
    for (const auto& [id, n] : expected_refs) {
      auto r = refs.find(id);
      if ((r == refs.end() || r->second != n) && shown++ < 3) {
        problem(absl::StrCat("chunk ", id.ShortHex(), " refcount ",
                             r == refs.end() ? 0 : r->second, ", named by ", n,
                             " COMMITTED checkpoints"));
      }
    }
    for (const auto& [id, n] : refs) {
      if (!expected_refs.contains(id) && shown++ < 3) {
        problem(absl::StrCat("chunk ", id.ShortHex(), " refcount ", n,
                             " but no COMMITTED checkpoint names it"));
      }
    }
  }
  uint64_t queued = 0;
  for (it->Seek(Sl(kZeroPrefix)); it->Valid() && it->key().starts_with(Sl(kZeroPrefix));
       it->Next()) {
    ++queued;
    if (!zero_keys.contains(View(it->key()))) {
      problem("GC queue entry without a zero reference record");
    }
  }
  if (queued != zero_keys.size()) {
    problem(absl::StrCat(zero_keys.size(), " zero reference records but ", queued,
                         " GC queue entries"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));

  if (check_tier && !refs.empty()) {
    std::vector<ChunkId> ids;
    for (const auto& [id, n] : refs) ids.push_back(id);
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> present, tier_->Has(ids));
    std::vector<ChunkId> missing;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!present[i]) missing.push_back(ids[i]);
    }
    if (!missing.empty()) {
      problem(absl::StrCat(
          missing.size(),
          " referenced chunks are missing from the tier: ", ListIds(missing)));
    }
  }
  if (!problems.empty()) {
    return absl::InternalError(absl::StrCat("coordinator metadata is inconsistent: ",
                                            absl::StrJoin(problems, "; ")));
  }
  return report;
}

int64_t CoordinatorStore::TEST_Refcount(const ChunkId& id) {
  absl::ReaderMutexLock lock(&mu_);
  std::string value;
  RefRecord r;
  if (!db_->Get(rocksdb::ReadOptions(), RefKey(id), &value).ok() ||
      !DecodeRef(value, &r)) {
    return -1;
  }
  return static_cast<int64_t>(r.count);
}

int CoordinatorStore::TEST_Claims(const ChunkId& id) {
  absl::ReaderMutexLock lock(&mu_);
  auto it = claims_.find(id);
  return it == claims_.end() ? 0 : it->second;
}

}  // namespace snapback::server
