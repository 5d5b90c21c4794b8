#include "common/codec.h"

#include <zstd.h>

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace snapback {
namespace {

bool ValidElementSize(int n) { return n == 1 || n == 2 || n == 4 || n == 8; }

// One zstd context per thread: creating one costs more than compressing a
// small chunk.
struct ZstdContexts {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~ZstdContexts() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};
ZstdContexts& Contexts() {
  thread_local ZstdContexts contexts;
  return contexts;
}

}  // namespace

std::string CodecName(Codec codec) {
  switch (codec) {
    case Codec::kNone:
      return "none";
    case Codec::kZstd:
      return "zstd";
    case Codec::kShuffleZstd:
      return "shuffle+zstd";
  }
  return absl::StrCat("unknown(", static_cast<int>(codec), ")");
}

absl::StatusOr<Codec> ParseCodec(absl::string_view name) {
  if (name == "none") return Codec::kNone;
  if (name == "zstd") return Codec::kZstd;
  if (name == "shuffle+zstd") return Codec::kShuffleZstd;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown codec '", name, "'; use none, zstd or shuffle+zstd"));
}

bool IsKnownCodec(uint32_t value) { return value <= 2; }

void ByteShuffle(absl::Span<const char> in, int element_size, absl::Span<char> out) {
  const size_t n = in.size() / element_size;
  const size_t whole = n * element_size;
  for (int b = 0; b < element_size; ++b) {
    char* dst = out.data() + b * n;
    const char* src = in.data() + b;
    for (size_t i = 0; i < n; ++i) dst[i] = src[i * element_size];
  }
  std::memcpy(out.data() + whole, in.data() + whole, in.size() - whole);
}

void ByteUnshuffle(absl::Span<const char> in, int element_size, absl::Span<char> out) {
  const size_t n = in.size() / element_size;
  const size_t whole = n * element_size;
  for (int b = 0; b < element_size; ++b) {
    const char* src = in.data() + b * n;
    char* dst = out.data() + b;
    for (size_t i = 0; i < n; ++i) dst[i * element_size] = src[i];
  }
  std::memcpy(out.data() + whole, in.data() + whole, in.size() - whole);
}

absl::StatusOr<EncodedChunk> EncodeChunk(absl::Span<const char> raw,
                                         const EncodeOptions& options) {
  return EncodeChunkWithId(raw, Sha256(raw), options);
}

absl::StatusOr<EncodedChunk> EncodeChunkWithId(absl::Span<const char> raw,
                                               const ChunkId& id,
                                               const EncodeOptions& options) {
  if (raw.size() > kMaxChunkRawBytes) {
    return absl::InvalidArgumentError(absl::StrCat("chunk of ", raw.size(),
                                                   " bytes exceeds the limit of ",
                                                   kMaxChunkRawBytes, "; split it"));
  }
  if (!ValidElementSize(options.element_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("element size ", options.element_size, " is not 1, 2, 4 or 8"));
  }
  EncodedChunk chunk;
  chunk.id = id;
  chunk.raw_length = static_cast<uint32_t>(raw.size());

  if (options.codec != Codec::kNone && !raw.empty()) {
    absl::Span<const char> input = raw;
    std::string shuffled;
    const bool shuffle = options.codec == Codec::kShuffleZstd && options.element_size > 1;
    if (shuffle) {
      shuffled.resize(raw.size());
      ByteShuffle(raw, options.element_size, absl::MakeSpan(shuffled));
      input = shuffled;
    }
    std::string out;
    out.resize(ZSTD_compressBound(input.size()));
    size_t n = ZSTD_compressCCtx(Contexts().c, out.data(), out.size(), input.data(),
                                 input.size(), options.zstd_level);
    if (ZSTD_isError(n)) {
      return absl::InternalError(absl::StrCat("zstd: ", ZSTD_getErrorName(n)));
    }
    if (static_cast<double>(n) <= raw.size() * (1.0 - options.min_saving)) {
      out.resize(n);
      chunk.data = std::move(out);
      chunk.codec = shuffle ? Codec::kShuffleZstd : Codec::kZstd;
      chunk.element_size = shuffle ? static_cast<uint8_t>(options.element_size) : 1;
      return chunk;
    }
  }
  chunk.codec = Codec::kNone;
  chunk.element_size = 1;
  chunk.data.assign(raw.data(), raw.size());
  return chunk;
}

absl::Status DecodeChunk(const EncodedChunk& chunk, absl::Span<char> out) {
  if (out.size() != chunk.raw_length) {
    return absl::InvalidArgumentError(absl::StrCat("output buffer of ", out.size(),
                                                   " bytes for a chunk of ",
                                                   chunk.raw_length, " bytes"));
  }
  if (chunk.raw_length > kMaxChunkRawBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raw length ", chunk.raw_length, " exceeds the limit of ", kMaxChunkRawBytes));
  }
  switch (chunk.codec) {
    case Codec::kNone:
      if (chunk.data.size() != chunk.raw_length) {
        return absl::DataLossError(absl::StrCat("codec none: encoded length ",
                                                chunk.data.size(), " != raw length ",
                                                chunk.raw_length));
      }
      std::memcpy(out.data(), chunk.data.data(), out.size());
      return absl::OkStatus();
    case Codec::kZstd:
    case Codec::kShuffleZstd:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown codec ",
                                                     static_cast<int>(chunk.codec),
                                                     "; use none, zstd or shuffle+zstd"));
  }
  const bool shuffle = chunk.codec == Codec::kShuffleZstd;
  if (shuffle && !ValidElementSize(chunk.element_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "element size ", static_cast<int>(chunk.element_size), " is not 1, 2, 4 or 8"));
  }
  // Reject a frame whose header claims another size before decompressing.
  unsigned long long claimed =
      ZSTD_getFrameContentSize(chunk.data.data(), chunk.data.size());
  if (claimed == ZSTD_CONTENTSIZE_ERROR) {
    return absl::DataLossError("encoded bytes are not a zstd frame");
  }
  if (claimed != ZSTD_CONTENTSIZE_UNKNOWN && claimed != chunk.raw_length) {
    return absl::DataLossError(absl::StrCat("zstd frame claims ", claimed,
                                            " bytes, the chunk header says ",
                                            chunk.raw_length));
  }
  std::string tmp;
  char* dst = out.data();
  if (shuffle) {
    tmp.resize(out.size());
    dst = tmp.data();
  }
  // Decompressing into a buffer of exactly raw_length bytes bounds the work:
  // a frame that would produce more fails with dstSize_tooSmall.
  size_t n = ZSTD_decompressDCtx(Contexts().d, dst, out.size(), chunk.data.data(),
                                 chunk.data.size());
  if (ZSTD_isError(n)) {
    return absl::DataLossError(absl::StrCat("zstd: ", ZSTD_getErrorName(n)));
  }
  if (n != chunk.raw_length) {
    return absl::DataLossError(
        absl::StrCat("zstd produced ", n, " bytes, expected ", chunk.raw_length));
  }
  if (shuffle) ByteUnshuffle(tmp, chunk.element_size, out);
  return absl::OkStatus();
}

absl::Status VerifyChunk(const EncodedChunk& chunk, std::string* scratch) {
  if (!IsKnownCodec(static_cast<uint32_t>(chunk.codec))) {
    return absl::InvalidArgumentError(absl::StrCat("unknown codec ",
                                                   static_cast<int>(chunk.codec),
                                                   "; use none, zstd or shuffle+zstd"));
  }
  absl::Span<const char> raw;
  if (chunk.codec == Codec::kNone) {
    if (chunk.data.size() != chunk.raw_length) {
      return absl::InvalidArgumentError(absl::StrCat("codec none: encoded length ",
                                                     chunk.data.size(), " != raw length ",
                                                     chunk.raw_length));
    }
    raw = chunk.data;
  } else {
    if (chunk.raw_length > kMaxChunkRawBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "raw length ", chunk.raw_length, " exceeds the limit of ", kMaxChunkRawBytes));
    }
    scratch->resize(chunk.raw_length);
    SNAPBACK_RETURN_IF_ERROR(DecodeChunk(chunk, absl::MakeSpan(*scratch)));
    raw = *scratch;
  }
  ChunkId actual = Sha256(raw);
  if (actual != chunk.id) {
    return absl::DataLossError(
        absl::StrCat("chunk ", chunk.id.ShortHex(), ": SHA-256 of the bytes is ",
                     actual.ShortHex(), "; the bytes are corrupt or the id is wrong"));
  }
  return absl::OkStatus();
}

}  // namespace snapback
