// The on-disk record of one chunk in a segment file, and the index value
// that points at it. Both are fixed-layout little-endian; see
// docs/storage_format.md.
#ifndef SNAPBACK_STORAGE_RECORD_H_
#define SNAPBACK_STORAGE_RECORD_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/codec.h"

namespace snapback::storage {

inline constexpr uint32_t kRecordMagic = 0x4B434253;  // "SBCK"
inline constexpr uint8_t kRecordVersion = 1;
inline constexpr size_t kRecordHeaderSize = 64;
// Records inside a group commit start on this boundary.
inline constexpr uint64_t kRecordAlignment = 8;

// Writes the 64-byte header of `chunk` (with the xxh64 `payload_checksum` of
// its encoded bytes) to `out`.
void EncodeRecordHeader(const EncodedChunk& chunk, uint64_t payload_checksum, char* out);

struct RecordHeader {
  Codec codec;
  uint8_t element_size;
  uint32_t raw_length;
  uint32_t encoded_length;
  ChunkId id;
  uint64_t payload_checksum;
};

// Parses and checks a header (magic, version, header checksum). DATA_LOSS
// when any check fails.
absl::StatusOr<RecordHeader> DecodeRecordHeader(absl::string_view bytes);

// Where a chunk's record lives, as stored in the index (48 bytes).
struct IndexEntry {
  uint64_t segment = 0;
  uint64_t offset = 0;  // of the record header within the segment
  uint32_t raw_length = 0;
  uint32_t encoded_length = 0;
  Codec codec = Codec::kNone;
  uint8_t element_size = 1;
  uint64_t payload_checksum = 0;
  int64_t created_unix_ms = 0;  // when the chunk was first stored (GC grace)

  uint64_t record_size() const { return kRecordHeaderSize + encoded_length; }
  std::string Encode() const;
  static absl::StatusOr<IndexEntry> Decode(absl::string_view bytes);
};

// Index keys: "c" + 32 id bytes.
std::string ChunkKey(const ChunkId& id);
absl::StatusOr<ChunkId> ChunkIdFromKey(absl::string_view key);

// Lost chunks (removed from the index because their bytes could not be
// read), under their own prefix in the index DB: "l" + 32 id bytes. The value
// is the time of the loss in Unix ms (8 bytes, little-endian) followed by the
// reason as text.
std::string LostKey(const ChunkId& id);
absl::StatusOr<ChunkId> ChunkIdFromLostKey(absl::string_view key);
std::string EncodeLostValue(int64_t lost_unix_ms, absl::string_view reason);

}  // namespace snapback::storage

#endif  // SNAPBACK_STORAGE_RECORD_H_
