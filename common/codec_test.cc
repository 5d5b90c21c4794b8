#include "common/codec.h"

#include <zstd.h>

#include <cstring>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

// Bytes that look like trained fp32 weights (compressible with
// shuffle+zstd), and random bytes.
std::string FloatLike(size_t n, uint32_t seed) {
  return testing::MakeBytes(n, seed, /*float_like=*/true);
}
std::string RandomBytes(size_t n, uint32_t seed) {
  return testing::MakeBytes(n, seed, /*float_like=*/false);
}

TEST(ByteShuffle, RoundTripsEveryWidthAndOddTails) {
  for (int width : {1, 2, 4, 8}) {
    for (size_t n : {0, 1, 3, 7, 8, 9, 1023, 4099}) {
      std::string in = RandomBytes(n, static_cast<uint32_t>(n * 10 + width));
      std::string shuffled(n, '\0'), back(n, '\0');
      ByteShuffle(in, width, absl::MakeSpan(shuffled));
      ByteUnshuffle(shuffled, width, absl::MakeSpan(back));
      EXPECT_EQ(back, in) << "width " << width << " n " << n;
    }
  }
}

TEST(ByteShuffle, GroupsBytesByPosition) {
  std::string in = "ABCDabcd";  // two 4-byte elements
  std::string out(8, '\0');
  ByteShuffle(in, 4, absl::MakeSpan(out));
  EXPECT_EQ(out, "AaBbCcDd");
}

class CodecRoundTrip : public ::testing::TestWithParam<std::tuple<Codec, int, size_t>> {};

TEST_P(CodecRoundTrip, DecodesToTheSameBytesAndVerifies) {
  auto [codec, width, n] = GetParam();
  std::string raw = FloatLike(n, static_cast<uint32_t>(n + width));
  auto chunk = EncodeChunk(raw, {.codec = codec, .element_size = width});
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_EQ(chunk->raw_length, n);
  EXPECT_EQ(chunk->id, Sha256(raw));
  std::string back(n, '\0');
  ASSERT_TRUE(DecodeChunk(*chunk, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, raw);
  std::string scratch;
  EXPECT_TRUE(VerifyChunk(*chunk, &scratch).ok());
}

INSTANTIATE_TEST_SUITE_P(
    AllWidthsAndOddLengths, CodecRoundTrip,
    ::testing::Combine(::testing::Values(Codec::kNone, Codec::kZstd, Codec::kShuffleZstd),
                       ::testing::Values(1, 2, 4, 8),
                       ::testing::Values(size_t{0}, size_t{1}, size_t{13}, size_t{4095},
                                         size_t{65537}, size_t{1} << 20)));

TEST(Codec, ShuffleHelpsFloatWeights) {
  std::string raw = FloatLike(1 << 20, 7);
  auto plain = EncodeChunk(raw, {.codec = Codec::kZstd, .min_saving = 0});
  auto shuffled = EncodeChunk(raw, {.codec = Codec::kShuffleZstd, .element_size = 4});
  ASSERT_TRUE(plain.ok() && shuffled.ok());
  EXPECT_EQ(shuffled->codec, Codec::kShuffleZstd);
  EXPECT_LT(shuffled->data.size(), plain->data.size());
  EXPECT_LT(shuffled->data.size(), raw.size() * 0.95);
}

TEST(Codec, IncompressibleDataIsStoredRaw) {
  std::string raw = RandomBytes(1 << 20, 3);
  auto chunk = EncodeChunk(raw, {.codec = Codec::kShuffleZstd, .element_size = 4});
  ASSERT_TRUE(chunk.ok());
  EXPECT_EQ(chunk->codec, Codec::kNone);
  EXPECT_EQ(chunk->data, raw);
}

TEST(Codec, CompressibleDataIsCompressed) {
  std::string raw(1 << 20, 'x');
  auto chunk = EncodeChunk(raw, {.codec = Codec::kZstd});
  ASSERT_TRUE(chunk.ok());
  EXPECT_EQ(chunk->codec, Codec::kZstd);
  EXPECT_LT(chunk->data.size(), 1000u);
}

TEST(Codec, CorruptEncodedBytesAreDetected) {
  std::string raw = FloatLike(256 << 10, 11);
  for (Codec codec : {Codec::kNone, Codec::kZstd, Codec::kShuffleZstd}) {
    auto chunk = EncodeChunk(raw, {.codec = codec, .element_size = 4, .min_saving = 0});
    ASSERT_TRUE(chunk.ok());
    ASSERT_EQ(chunk->codec, codec);
    std::mt19937 rng(static_cast<uint32_t>(codec));
    for (int trial = 0; trial < 20; ++trial) {
      EncodedChunk bad = *chunk;
      size_t pos = rng() % bad.data.size();
      bad.data[pos] = static_cast<char>(bad.data[pos] ^ (1 + rng() % 255));
      std::string scratch;
      absl::Status s = VerifyChunk(bad, &scratch);
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss)
          << CodecName(codec) << " flip at " << pos << ": " << s;
    }
  }
}

TEST(Codec, WrongLengthsAndUnknownCodecAreRejected) {
  std::string raw = FloatLike(4096, 5);
  auto chunk = EncodeChunk(raw, {.codec = Codec::kZstd, .min_saving = 0});
  ASSERT_TRUE(chunk.ok());
  std::string scratch;

  EncodedChunk longer = *chunk;
  longer.raw_length += 1;
  EXPECT_EQ(VerifyChunk(longer, &scratch).code(), absl::StatusCode::kDataLoss);

  EncodedChunk unknown = *chunk;
  unknown.codec = static_cast<Codec>(9);
  EXPECT_EQ(VerifyChunk(unknown, &scratch).code(), absl::StatusCode::kInvalidArgument);

  EncodedChunk raw_chunk = *EncodeChunk(raw, {.codec = Codec::kNone});
  raw_chunk.raw_length -= 1;
  EXPECT_EQ(VerifyChunk(raw_chunk, &scratch).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Codec, ZstdBombIsRejectedWithoutExpanding) {
  // 64 MiB of zeros compress to a few KiB; a header that claims 4 KiB must not
  // make the decoder produce (or allocate) 64 MiB.
  std::string zeros(64 << 20, '\0');
  std::string frame(ZSTD_compressBound(zeros.size()), '\0');
  size_t n = ZSTD_compress(frame.data(), frame.size(), zeros.data(), zeros.size(), 1);
  ASSERT_FALSE(ZSTD_isError(n));
  frame.resize(n);
  EncodedChunk bomb;
  bomb.codec = Codec::kZstd;
  bomb.raw_length = 4096;
  bomb.id = Sha256(absl::MakeConstSpan(zeros.data(), 4096));
  bomb.data = frame;
  std::string scratch;
  absl::Status s = VerifyChunk(bomb, &scratch);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_LE(scratch.capacity(), size_t{1} << 20);
}

TEST(Codec, ParsesNames) {
  for (Codec c : {Codec::kNone, Codec::kZstd, Codec::kShuffleZstd}) {
    auto parsed = ParseCodec(CodecName(c));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, c);
  }
  EXPECT_EQ(ParseCodec("lz4").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace snapback
