#include "common/hash.h"

#include "gtest/gtest.h"

namespace snapback {
namespace {

TEST(Sha256, MatchesKnownVectors) {
  EXPECT_EQ(Sha256({}).ToHex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::string abc = "abc";
  EXPECT_EQ(Sha256(abc).ToHex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ChunkId, ParsesHexAndBytes) {
  std::string abc = "abc";
  ChunkId id = Sha256(abc);
  auto from_hex = ChunkId::FromHex(id.ToHex());
  ASSERT_TRUE(from_hex.ok());
  EXPECT_EQ(*from_hex, id);
  auto from_bytes = ChunkId::FromBytes(id.AsBytes());
  ASSERT_TRUE(from_bytes.ok());
  EXPECT_EQ(*from_bytes, id);
  EXPECT_FALSE(ChunkId::FromHex("abc").ok());
  EXPECT_FALSE(ChunkId::FromHex(std::string(64, 'z')).ok());
  EXPECT_FALSE(ChunkId::FromBytes("short").ok());
}

TEST(Checksum64, DiffersOnOneBitFlip) {
  std::string a(4096, 'a');
  std::string b = a;
  b[100] ^= 1;
  EXPECT_NE(Checksum64(a), Checksum64(b));
  EXPECT_EQ(Checksum64(a), Checksum64(std::string(4096, 'a')));
}

}  // namespace
}  // namespace snapback
