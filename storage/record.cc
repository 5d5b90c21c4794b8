#include "storage/record.h"

#include <cstring>

#include "absl/base/internal/endian.h"
#include "absl/strings/str_cat.h"
#include "common/hash.h"

namespace snapback::storage {
namespace {

using absl::little_endian::Load32;
using absl::little_endian::Load64;
using absl::little_endian::Store32;
using absl::little_endian::Store64;

constexpr size_t kIndexEntrySize = 48;

}  // namespace

void EncodeRecordHeader(const EncodedChunk& chunk, uint64_t payload_checksum, char* out) {
  std::memset(out, 0, kRecordHeaderSize);
  Store32(out, kRecordMagic);
  out[4] = static_cast<char>(kRecordVersion);
  out[5] = static_cast<char>(chunk.codec);
  out[6] = static_cast<char>(chunk.element_size);
  Store32(out + 8, chunk.raw_length);
  Store32(out + 12, static_cast<uint32_t>(chunk.data.size()));
  std::memcpy(out + 16, chunk.id.bytes.data(), 32);
  Store64(out + 48, payload_checksum);
  Store64(out + 56, Checksum64({out, 56}));
}

absl::StatusOr<RecordHeader> DecodeRecordHeader(absl::string_view b) {
  if (b.size() < kRecordHeaderSize) {
    return absl::DataLossError("record header truncated");
  }
  if (Load32(b.data()) != kRecordMagic) {
    return absl::DataLossError("record header has a bad magic number");
  }
  if (Load64(b.data() + 56) != Checksum64({b.data(), 56})) {
    return absl::DataLossError("record header checksum mismatch");
  }
  if (static_cast<uint8_t>(b[4]) != kRecordVersion) {
    return absl::DataLossError(
        absl::StrCat("record version ", static_cast<int>(b[4]), " is not supported"));
  }
  RecordHeader h;
  h.codec = static_cast<Codec>(b[5]);
  h.element_size = static_cast<uint8_t>(b[6]);
  h.raw_length = Load32(b.data() + 8);
  h.encoded_length = Load32(b.data() + 12);
  std::memcpy(h.id.bytes.data(), b.data() + 16, 32);
  h.payload_checksum = Load64(b.data() + 48);
  return h;
}

std::string IndexEntry::Encode() const {
  std::string out(kIndexEntrySize, '\0');
  char* p = out.data();
  Store64(p, segment);
  Store64(p + 8, offset);
  Store32(p + 16, raw_length);
  Store32(p + 20, encoded_length);
  p[24] = static_cast<char>(codec);
  p[25] = static_cast<char>(element_size);
  Store64(p + 32, payload_checksum);
  Store64(p + 40, static_cast<uint64_t>(created_unix_ms));
  return out;
}

absl::StatusOr<IndexEntry> IndexEntry::Decode(absl::string_view b) {
  if (b.size() != kIndexEntrySize) {
    return absl::DataLossError(
        absl::StrCat("index entry of ", b.size(), " bytes, expected ", kIndexEntrySize));
  }
  IndexEntry e;
  e.segment = Load64(b.data());
  e.offset = Load64(b.data() + 8);
  e.raw_length = Load32(b.data() + 16);
  e.encoded_length = Load32(b.data() + 20);
  e.codec = static_cast<Codec>(b[24]);
  e.element_size = static_cast<uint8_t>(b[25]);
  e.payload_checksum = Load64(b.data() + 32);
  e.created_unix_ms = static_cast<int64_t>(Load64(b.data() + 40));
  return e;
}

std::string ChunkKey(const ChunkId& id) { return absl::StrCat("c", id.AsBytes()); }

absl::StatusOr<ChunkId> ChunkIdFromKey(absl::string_view key) {
  if (key.size() != 33 || key[0] != 'c') {
    return absl::DataLossError("malformed chunk key in the index");
  }
  return ChunkId::FromBytes(key.substr(1));
}

std::string LostKey(const ChunkId& id) { return absl::StrCat("l", id.AsBytes()); }

absl::StatusOr<ChunkId> ChunkIdFromLostKey(absl::string_view key) {
  if (key.size() != 33 || key[0] != 'l') {
    return absl::DataLossError("malformed lost-chunk key in the index");
  }
  return ChunkId::FromBytes(key.substr(1));
}

std::string EncodeLostValue(int64_t lost_unix_ms, absl::string_view reason) {
  std::string out(8, '\0');
  Store64(out.data(), static_cast<uint64_t>(lost_unix_ms));
  absl::StrAppend(&out, reason);
  return out;
}

}  // namespace snapback::storage
