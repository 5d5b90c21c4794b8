// Content identity and integrity checksums.
//
// ChunkId is the SHA-256 (OpenSSL) of a chunk's raw bytes: the identity every
// layer agrees on. Checksum64 is xxh64 of encoded bytes: a cheap check that
// the bytes read back from disk or the wire are the bytes that were written.
#ifndef SNAPBACK_COMMON_HASH_H_
#define SNAPBACK_COMMON_HASH_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace snapback {

// A 32-byte SHA-256 digest. Value type; thread-compatible.
struct ChunkId {
  std::array<uint8_t, 32> bytes{};

  // Lower-case hex, 64 characters.
  std::string ToHex() const;
  // The first 12 hex characters, for log lines.
  std::string ShortHex() const { return ToHex().substr(0, 12); }
  // The 32 bytes as a string (for keys and wire fields).
  absl::string_view AsBytes() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  // Parses 32 raw bytes. INVALID_ARGUMENT when the length is not 32.
  static absl::StatusOr<ChunkId> FromBytes(absl::string_view raw);
  // Parses 64 hex characters. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<ChunkId> FromHex(absl::string_view hex);

  friend bool operator==(const ChunkId&, const ChunkId&) = default;
  friend auto operator<=>(const ChunkId&, const ChunkId&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const ChunkId& id) {
    return H::combine_contiguous(std::move(h), id.bytes.data(), id.bytes.size());
  }
};

// SHA-256 of `data`. Uses SHA-NI where the CPU has it (OpenSSL dispatches).
ChunkId Sha256(absl::Span<const char> data);

// xxh64 (seed 0) of `data`.
uint64_t Checksum64(absl::Span<const char> data);

}  // namespace snapback

#endif  // SNAPBACK_COMMON_HASH_H_
