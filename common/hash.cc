#include "common/hash.h"

#include <openssl/sha.h>
#include <xxhash.h>

#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace snapback {

std::string ChunkId::ToHex() const { return absl::BytesToHexString(AsBytes()); }

absl::StatusOr<ChunkId> ChunkId::FromBytes(absl::string_view raw) {
  ChunkId id;
  if (raw.size() != id.bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk id must be 32 bytes (a SHA-256 digest), got ", raw.size(), " bytes"));
  }
  std::memcpy(id.bytes.data(), raw.data(), raw.size());
  return id;
}

absl::StatusOr<ChunkId> ChunkId::FromHex(absl::string_view hex) {
  if (hex.size() != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk id must be 64 hex characters, got ", hex.size()));
  }
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat("chunk id '", hex, "' is not hex"));
    }
  }
  return FromBytes(absl::HexStringToBytes(hex));
}

ChunkId Sha256(absl::Span<const char> data) {
  ChunkId id;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         id.bytes.data());
  return id;
}

uint64_t Checksum64(absl::Span<const char> data) {
  return XXH64(data.data(), data.size(), 0);
}

}  // namespace snapback
