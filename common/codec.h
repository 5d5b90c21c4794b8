// Chunk codecs: how a chunk's raw bytes are encoded for the wire and for disk.
//
//   kNone         the raw bytes
//   kZstd         zstd frame of the raw bytes
//   kShuffleZstd  byte-shuffle by element size (all first bytes, then all
//                 second bytes, ...) followed by zstd; exposes the
//                 low-entropy exponent bytes of floats to the compressor
//
// The encoder falls back to kNone when compression would save less than
// EncodeOptions::min_saving, so incompressible weights cost no decode time.
// Decoding is bounded: a frame that claims or produces anything other than
// exactly raw_length bytes is rejected (no zstd bomb can allocate more).
#ifndef SNAPBACK_COMMON_CODEC_H_
#define SNAPBACK_COMMON_CODEC_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/hash.h"

namespace snapback {

enum class Codec : uint8_t {
  kNone = 0,
  kZstd = 1,
  kShuffleZstd = 2,
};

// "none", "zstd", "shuffle+zstd"; "unknown(N)" otherwise.
std::string CodecName(Codec codec);
// Parses the names above. INVALID_ARGUMENT for anything else.
absl::StatusOr<Codec> ParseCodec(absl::string_view name);
// True for the values of the enum above.
bool IsKnownCodec(uint32_t value);

// Largest raw chunk any layer accepts (the default chunk size is 4 MiB).
inline constexpr uint32_t kMaxChunkRawBytes = 64u << 20;

struct EncodeOptions {
  // Preferred codec. The encoder may still store kNone (see min_saving).
  // Default: kShuffleZstd
  Codec codec = Codec::kShuffleZstd;
  // Element size in bytes for the byte shuffle (1, 2, 4 or 8; 1 = no shuffle).
  // Default: 4 (fp32)
  int element_size = 4;
  // zstd level; low levels keep encoding near disk speed.
  // Default: 1
  int zstd_level = 1;
  // Store raw unless compression saves at least this fraction of the bytes.
  // Default: 0.03
  double min_saving = 0.03;
};

// A chunk as stored and sent: identity, codec, lengths, encoded bytes.
struct EncodedChunk {
  ChunkId id;  // SHA-256 of the raw (decoded) bytes
  Codec codec = Codec::kNone;
  uint8_t element_size = 1;  // shuffle width used by kShuffleZstd, else 1
  uint32_t raw_length = 0;   // decoded length
  std::string data;          // encoded bytes; data.size() is the encoded length
};

// Encodes `raw` (at most kMaxChunkRawBytes) and computes its SHA-256 id.
absl::StatusOr<EncodedChunk> EncodeChunk(absl::Span<const char> raw,
                                         const EncodeOptions& options = {});

// Like EncodeChunk() for a caller that already has SHA-256(raw): skips the
// hash. The caller vouches for `id`; a server re-verifies it on ingest.
absl::StatusOr<EncodedChunk> EncodeChunkWithId(absl::Span<const char> raw,
                                               const ChunkId& id,
                                               const EncodeOptions& options = {});

// Decodes `chunk` into `out`, which must be exactly chunk.raw_length bytes.
// INVALID_ARGUMENT for an unknown codec, a bad element size or a wrong output
// size; DATA_LOSS when the encoded bytes do not decode to exactly raw_length
// bytes. Does not check the SHA-256 (see VerifyChunk).
absl::Status DecodeChunk(const EncodedChunk& chunk, absl::Span<char> out);

// Decodes and checks that SHA-256(decoded) == chunk.id and the lengths agree.
// `scratch` is reused across calls to avoid an allocation per chunk.
// INVALID_ARGUMENT for malformed headers (unknown codec, lengths over the
// limit); DATA_LOSS when the bytes do not hash to the id.
absl::Status VerifyChunk(const EncodedChunk& chunk, std::string* scratch);

// Byte shuffle / unshuffle of `in` into `out` (same size). A tail that is not
// a whole element is copied through unchanged. Exposed for tests.
void ByteShuffle(absl::Span<const char> in, int element_size, absl::Span<char> out);
void ByteUnshuffle(absl::Span<const char> in, int element_size, absl::Span<char> out);

}  // namespace snapback

#endif  // SNAPBACK_COMMON_CODEC_H_
