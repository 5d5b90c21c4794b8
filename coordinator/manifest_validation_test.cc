// Unit tests of the coordinator's request checks (manifest_validation.h),
// called directly: no store, no RocksDB. Each refused input is asserted with
// its status code and the part of the message that tells the caller what to
// fix. (coordinator_store_test checks the same rules end to end through
// CommitRank, and that a refused call records nothing.)
#include "coordinator/manifest_validation.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace snapback::coordinator::internal {
namespace {

using v1::RankManifest;
using v1::TensorEntry;

#define EXPECT_INVALID(expr, fragment)                                        \
  do {                                                                        \
    const absl::Status status_ = (expr);                                      \
    EXPECT_EQ(status_.code(), absl::StatusCode::kInvalidArgument) << status_; \
    EXPECT_NE(status_.message().find(fragment), std::string::npos)            \
        << "want '" << (fragment) << "' in: " << status_;                     \
  } while (0)

ChunkId Id(uint8_t n) {
  ChunkId id;
  id.bytes[0] = n;
  id.bytes[31] = 0xab;
  return id;
}

void AddChunk(google::protobuf::RepeatedPtrField<v1::ChunkRef>* chunks, const ChunkId& id,
              uint32_t length) {
  v1::ChunkRef* c = chunks->Add();
  c->set_id(std::string(id.AsBytes()));
  c->set_length(length);
}

// A float32 tensor of `shape`, unsharded, over one chunk of the right size.
TensorEntry Tensor(const std::string& name, std::vector<int64_t> shape,
                   const ChunkId& id = Id(1)) {
  TensorEntry t;
  t.set_name(name);
  t.set_dtype("float32");
  uint64_t elements = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    t.add_global_shape(d);
    t.add_global_offset(0);
    elements *= static_cast<uint64_t>(d);
  }
  t.set_byte_length(elements * 4);
  if (elements > 0) AddChunk(t.mutable_chunks(), id, static_cast<uint32_t>(elements * 4));
  return t;
}

absl::Status CheckTensor(const TensorEntry& t, const CoordinatorOptions& options = {}) {
  absl::flat_hash_set<ChunkId> ids;
  return ValidTensor(t, options, "tensors[0] 'w'", &ids);
}

absl::Status CheckManifest(const RankManifest& m,
                           const CoordinatorOptions& options = {}) {
  std::vector<ChunkId> distinct;
  uint64_t logical = 0;
  return ValidManifest(m, options, &distinct, &logical);
}

TEST(ManifestValidationTest, JobIds) {
  for (const std::string& ok : std::vector<std::string>{"a", "llama-7b.run_2", "A.B_C-9",
                                                        std::string(128, 'x')}) {
    EXPECT_TRUE(ValidJobId(ok).ok()) << ok;
  }
  for (const std::string& bad :
       std::vector<std::string>{"", "has space", "a/b", "ünïcode", std::string(129, 'x'),
                                std::string("nul\0x", 5), "tab\t", "a:b"}) {
    EXPECT_INVALID(ValidJobId(bad), "use 1 to 128 characters from A-Z, a-z, 0-9");
  }
  // The id is quoted with its control bytes escaped, and long ones are cut.
  EXPECT_INVALID(ValidJobId(std::string("nul\0x", 5)), "'nul\\x00x'");
  EXPECT_INVALID(ValidJobId(std::string(200, 'y')), std::string(80, 'y') + "...'");
}

TEST(ManifestValidationTest, WorldSizesStepsAndRankRefs) {
  EXPECT_TRUE(ValidWorldSize(1).ok());
  EXPECT_TRUE(ValidWorldSize(kMaxWorldSize).ok());
  for (int32_t bad : {0, -1, kMaxWorldSize + 1}) {
    EXPECT_INVALID(ValidWorldSize(bad), "use 1..65536");
  }

  EXPECT_TRUE(ValidStep(0).ok());
  EXPECT_TRUE(ValidStep(std::numeric_limits<int64_t>::max()).ok());
  EXPECT_INVALID(ValidStep(-1), "steps are >= 0");
  EXPECT_INVALID(ValidStep(std::numeric_limits<int64_t>::min()), "steps are >= 0");

  v1::RankRef ref;
  ref.set_job_id("job");
  ref.set_rank(0);
  ref.set_incarnation(0);
  EXPECT_TRUE(ValidRankRef(ref).ok());
  ref.set_rank(-1);
  EXPECT_INVALID(ValidRankRef(ref), "ranks are 0..world_size-1");
  ref.set_rank(3);
  ref.set_incarnation(-1);
  EXPECT_INVALID(ValidRankRef(ref), "grows with every restart");
  ref.set_incarnation(2);
  ref.set_job_id("bad/job");
  EXPECT_INVALID(ValidRankRef(ref), "A-Z, a-z, 0-9");

  v1::JobInfo job;
  job.set_job_id("job");
  job.set_world_size(4);
  ref.set_job_id("job");
  EXPECT_TRUE(CheckRankInRange(ref, job).ok());
  ref.set_rank(4);
  EXPECT_INVALID(CheckRankInRange(ref, job), "has world_size 4 (ranks 0..3)");
}

TEST(ManifestValidationTest, Dtypes) {
  const std::vector<std::pair<std::string, int>> known = {
      {"float32", 4}, {"bfloat16", 2}, {"float16", 2}, {"float64", 8}, {"int8", 1},
      {"uint8", 1},   {"int16", 2},    {"int32", 4},   {"int64", 8},   {"bool", 1}};
  for (const auto& [name, size] : known) EXPECT_EQ(DtypeSize(name), size) << name;
  for (const char* unknown : {"", "f32", "Float32", "float8", "complex64"}) {
    EXPECT_EQ(DtypeSize(unknown), 0) << unknown;
  }
  TensorEntry t = Tensor("w", {4});
  t.set_dtype("f32");
  EXPECT_INVALID(CheckTensor(t), "unknown dtype 'f32'");
  // Every known dtype is accepted when byte_length matches its size.
  for (const auto& [name, size] : known) {
    TensorEntry k = Tensor("w", {8});
    k.set_dtype(name);
    k.set_byte_length(8 * size);
    k.mutable_chunks(0)->set_length(8 * size);
    EXPECT_TRUE(CheckTensor(k).ok()) << name << ": " << CheckTensor(k);
  }
}

TEST(ManifestValidationTest, Names) {
  EXPECT_TRUE(ValidName("w", "here").ok());
  EXPECT_TRUE(ValidName(std::string(kMaxNameBytes, 'n'), "here").ok());
  EXPECT_INVALID(ValidName("", "here"), "here: name '' is invalid");
  EXPECT_INVALID(ValidName(std::string(kMaxNameBytes + 1, 'n'), "here"),
                 "use 1 to 1024 bytes without NUL");
  EXPECT_INVALID(ValidName(std::string("a\0b", 3), "here"), "without NUL");
}

TEST(ManifestValidationTest, ShapesAndOffsets) {
  EXPECT_TRUE(CheckTensor(Tensor("w", {4, 64})).ok());
  // A scalar (no dims) is one element.
  EXPECT_TRUE(CheckTensor(Tensor("s", {})).ok());
  // An empty tensor has no bytes and no chunks.
  EXPECT_TRUE(CheckTensor(Tensor("e", {0, 7})).ok());

  TensorEntry t = Tensor("w", {4, 64});
  t.add_global_shape(1);
  EXPECT_INVALID(CheckTensor(t), "must have the same number of dims");
  t = Tensor("w", {4, 64});
  t.clear_global_offset();
  EXPECT_INVALID(CheckTensor(t), "must have the same number of dims");

  t = Tensor("w", {4, 64});
  t.set_shape(0, -4);
  EXPECT_INVALID(CheckTensor(t), "dim 0 has shape -4");
  t = Tensor("w", {4, 64});
  t.set_global_shape(1, -1);
  EXPECT_INVALID(CheckTensor(t), "none may be negative");
  t = Tensor("w", {4, 64});
  t.set_global_offset(1, -1);
  EXPECT_INVALID(CheckTensor(t), "none may be negative");

  // The shard must lie inside the global shape.
  t = Tensor("w", {4, 64});
  t.set_global_offset(0, 1);
  EXPECT_INVALID(CheckTensor(t), "does not fit in global_shape [4, 64] at dim 0");
  t = Tensor("w", {4, 64});
  t.set_global_shape(1, 32);
  EXPECT_INVALID(CheckTensor(t), "at dim 1; need global_offset + shape <= global_shape");
  // offset + shape would overflow int64: refused, not wrapped.
  t = Tensor("w", {1});
  t.set_global_shape(0, std::numeric_limits<int64_t>::max());
  t.set_global_offset(0, std::numeric_limits<int64_t>::max());
  EXPECT_INVALID(CheckTensor(t), "does not fit in global_shape");
  // A shard of a larger tensor is fine.
  t = Tensor("w", {4, 64});
  t.set_global_shape(0, 8);
  t.set_global_offset(0, 4);
  EXPECT_TRUE(CheckTensor(t).ok()) << CheckTensor(t);
}

TEST(ManifestValidationTest, ByteLengthAndOverflow) {
  TensorEntry t = Tensor("w", {4, 64});
  t.set_byte_length(4 * 64 * 4 - 1);
  EXPECT_INVALID(CheckTensor(t), "does not match shape [4, 64] of float32 (1024 bytes");

  // product(shape) * dtype size beyond 63 bits is refused before it wraps.
  t = Tensor("w", {1});
  t.clear_shape();
  t.clear_global_shape();
  t.clear_global_offset();
  for (int i = 0; i < 2; ++i) {
    t.add_shape(int64_t{1} << 32);
    t.add_global_shape(int64_t{1} << 32);
    t.add_global_offset(0);
  }
  EXPECT_INVALID(CheckTensor(t), "is too large");
  // 2^61 float32 elements = 2^63 bytes: not above the limit, so the shape
  // passes and the (unrepresentable) byte_length is what is wrong.
  t.set_shape(1, int64_t{1} << 29);
  t.set_global_shape(1, int64_t{1} << 29);
  EXPECT_INVALID(CheckTensor(t), "does not match shape");
}

TEST(ManifestValidationTest, ChunkLists) {
  CoordinatorOptions options;
  options.max_chunk_bytes = 1024;
  absl::flat_hash_set<ChunkId> ids;
  google::protobuf::RepeatedPtrField<v1::ChunkRef> chunks;
  AddChunk(&chunks, Id(1), 1024);
  AddChunk(&chunks, Id(2), 10);
  AddChunk(&chunks, Id(1), 1024);  // the same chunk twice: one id
  EXPECT_TRUE(ValidChunks(chunks, 2058, options, "blobs[0] 'b'", &ids).ok());
  EXPECT_EQ(ids.size(), 2u);
  EXPECT_TRUE(ids.contains(Id(1)) && ids.contains(Id(2)));
  EXPECT_TRUE(ValidChunks({}, 0, options, "blobs[0] 'b'", &ids).ok());

  EXPECT_INVALID(ValidChunks(chunks, 2057, options, "blobs[0] 'b'", &ids),
                 "blobs[0] 'b': the chunks' lengths add up to 2058 bytes but "
                 "byte_length is 2057");
  chunks[1].set_length(0);
  EXPECT_INVALID(ValidChunks(chunks, 2048, options, "w", &ids),
                 "chunks[1].length 0 must be in 1..1024");
  chunks[1].set_length(1025);
  EXPECT_INVALID(ValidChunks(chunks, 3073, options, "w", &ids),
                 "chunks[1].length 1025 must be in 1..1024");
  chunks[1].set_length(10);
  chunks[2].set_id("abc");
  EXPECT_INVALID(ValidChunks(chunks, 2058, options, "w", &ids),
                 "chunks[2].id is 3 bytes; a chunk id is the 32-byte SHA-256");

  // Through a tensor: the default limit is 16 MiB.
  TensorEntry t = Tensor("w", {(16 << 20) / 4 + 1});
  EXPECT_INVALID(CheckTensor(t), "chunks[0].length 16777220 must be in 1..16777216");
  t = Tensor("w", {4});
  t.mutable_chunks()->RemoveLast();
  EXPECT_INVALID(CheckTensor(t), "add up to 0 bytes");
}

TEST(ManifestValidationTest, Manifests) {
  RankManifest m;
  *m.add_tensors() = Tensor("a", {256}, Id(3));
  *m.add_tensors() = Tensor("b", {256}, Id(1));
  v1::BlobEntry* blob = m.add_blobs();
  blob->set_name("a");  // a blob may share a tensor's name
  blob->set_byte_length(7);
  AddChunk(blob->mutable_chunks(), Id(2), 7);
  std::vector<ChunkId> distinct;
  uint64_t logical = 0;
  ASSERT_TRUE(ValidManifest(m, {}, &distinct, &logical).ok());
  EXPECT_EQ(distinct, (std::vector<ChunkId>{Id(1), Id(2), Id(3)}));  // sorted
  EXPECT_EQ(logical, 2 * 1024u + 7u);
  absl::flat_hash_set<ChunkId> named;
  AddChunkIds(m, &named);
  EXPECT_EQ(named, (absl::flat_hash_set<ChunkId>{Id(1), Id(2), Id(3)}));

  // Errors name the entry.
  RankManifest dup = m;
  *dup.add_tensors() = Tensor("b", {1});
  EXPECT_INVALID(CheckManifest(dup), "tensors[2] 'b': duplicate tensor name");
  dup = m;
  dup.add_blobs()->set_name("a");
  EXPECT_INVALID(CheckManifest(dup), "blobs[1] 'a': duplicate blob name");
  dup = m;
  dup.mutable_tensors(1)->set_name("");
  EXPECT_INVALID(CheckManifest(dup), "tensors[1] '': name '' is invalid");
  dup = m;
  dup.mutable_blobs(0)->set_byte_length(8);
  EXPECT_INVALID(CheckManifest(dup), "blobs[0] 'a': the chunks' lengths add up to 7");
  dup = m;
  dup.mutable_tensors(0)->set_dtype("f16");
  EXPECT_INVALID(CheckManifest(dup), "tensors[0] 'a': unknown dtype");

  // Limits.
  CoordinatorOptions options;
  options.max_manifest_entries = 2;
  EXPECT_INVALID(CheckManifest(m, options),
                 "manifest has 3 entries (tensors + blobs); the limit is 2");
  options = {};
  options.max_manifest_bytes = 1024;
  RankManifest big;
  *big.add_tensors() = Tensor(std::string(1000, 'n'), {1});
  *big.add_tensors() = Tensor("y", {1});
  EXPECT_INVALID(CheckManifest(big, options), "bytes; the limit is 1024");
  EXPECT_TRUE(CheckManifest(RankManifest()).ok());
}

TEST(ManifestValidationTest, MessageHelpers) {
  EXPECT_EQ(CheckpointName("job", 7), "job@7");
  EXPECT_EQ(StateName(v1::WRITING), "WRITING");
  EXPECT_EQ(StateName(v1::COMMITTED), "COMMITTED");
  EXPECT_EQ(StateName(v1::ABORTED), "ABORTED");
  EXPECT_EQ(StateName(v1::CheckpointState()), "UNSPECIFIED");
  EXPECT_EQ(Quote("a'b\n"), "'a\\'b\\n'");

  std::vector<ChunkId> ids;
  for (uint8_t i = 0; i < 5; ++i) ids.push_back(Id(i));
  const std::string listed = ListIds(ids);
  EXPECT_NE(listed.find(Id(3).ToHex()), std::string::npos);
  EXPECT_EQ(listed.find(Id(4).ToHex()), std::string::npos);
  EXPECT_EQ(listed.substr(listed.size() - 5), ", ...");
  ids.resize(kMaxNamedIds);
  EXPECT_EQ(ListIds(ids).find("..."), std::string::npos);

  v1::CheckpointInfo c;
  c.set_job_id("job");
  c.set_step(3);
  c.set_abort_reason("lease expired");
  const absl::Status aborted = AbortedError(c);
  EXPECT_EQ(aborted.code(), absl::StatusCode::kAborted);
  EXPECT_NE(aborted.message().find("job@3 was aborted (lease expired)"),
            std::string::npos)
      << aborted;
}

}  // namespace
}  // namespace snapback::coordinator::internal
