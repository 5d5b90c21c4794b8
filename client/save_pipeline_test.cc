// The pipeline's memory arithmetic. The stages themselves need a
// coordinator and storage nodes: tests/client_test.cc drives them.
#include "client/save_pipeline.h"

#include <gtest/gtest.h>

namespace snapback::internal_client {
namespace {

constexpr uint64_t kMiB = 1 << 20;

CheckpointerOptions Options(uint64_t staging_bytes, uint64_t chunk_bytes, int streams) {
  CheckpointerOptions o;
  o.staging_bytes = staging_bytes;
  o.chunk_bytes = chunk_bytes;
  o.upload_streams = streams;
  return o;
}

TEST(BatchChunksTest, SixteenAtMostAndHalfThePool) {
  // Defaults: 1 GiB, 4 MiB chunks: the pool holds 128, half is 64.
  EXPECT_EQ(BatchChunks(CheckpointerOptions{}), 16);
  // 64 MiB: the pool holds 8 chunks, batches of 4.
  EXPECT_EQ(BatchChunks(Options(64 * kMiB, 4 * kMiB, 2)), 4);
  // 16 MiB: the pool holds 2 chunks, batches of 1.
  EXPECT_EQ(BatchChunks(Options(16 * kMiB, 4 * kMiB, 2)), 1);
  // Smaller than a chunk: still 1.
  EXPECT_EQ(BatchChunks(Options(1 * kMiB, 4 * kMiB, 2)), 1);
}

TEST(EncodedBudgetTest, HalfTheCapLessWhatTheTransportHolds) {
  // 512 MiB - (16 * 4 MiB batch + 3 * 2 streams * 4 MiB) = 424 MiB.
  EXPECT_EQ(EncodedBudget(CheckpointerOptions{}), 424 * kMiB);
  // 16 MiB chunks: frames are capped at 4 MiB per stream.
  // 512 MiB - (16 * 16 MiB + 3 * 4 streams * 4 MiB) = 208 MiB.
  EXPECT_EQ(EncodedBudget(Options(1024 * kMiB, 16 * kMiB, 4)), 208 * kMiB);
  // 64 KiB chunks, 8 MiB: 4 MiB - (16 * 64 KiB + 3 * 2 * 64 KiB) = 2688 KiB.
  EXPECT_EQ(EncodedBudget(Options(8 * kMiB, 64 << 10, 2)), uint64_t{2688} << 10);
}

TEST(EncodedBudgetTest, NeverBelowOneChunk) {
  // 32 MiB: half is 16 MiB, the transport alone takes 2 * 4 + 24 MiB.
  EXPECT_EQ(EncodedBudget(Options(32 * kMiB, 4 * kMiB, 2)), 4 * kMiB);
}

}  // namespace
}  // namespace snapback::internal_client
