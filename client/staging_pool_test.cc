#include "client/staging_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace snapback::internal_client {
namespace {

constexpr uint64_t kChunk = 4096;

TEST(StagingPoolTest, CapacityIsCapOverChunkSizeAndAtLeastOne) {
  EXPECT_EQ(StagingPool(3 * kChunk, kChunk).capacity(), 3);
  EXPECT_EQ(StagingPool(3 * kChunk + kChunk / 2, kChunk).capacity(), 3);
  EXPECT_EQ(StagingPool(kChunk / 2, kChunk).capacity(), 1);
  EXPECT_EQ(StagingPool(0, kChunk).capacity(), 1);
  EXPECT_EQ(StagingPool(3 * kChunk, kChunk).chunk_bytes(), kChunk);
}

TEST(StagingPoolTest, AcquireAndReleaseCountAvailableBuffers) {
  StagingPool pool(2 * kChunk, kChunk);
  EXPECT_EQ(pool.available(), 2);
  StagingPool::Buffer a = pool.Acquire();
  ASSERT_TRUE(a);
  EXPECT_EQ(pool.available(), 1);
  StagingPool::Buffer b = pool.Acquire();
  ASSERT_TRUE(b);
  EXPECT_NE(a.data(), b.data());
  EXPECT_EQ(pool.available(), 0);
  a.Release();
  EXPECT_FALSE(a);
  EXPECT_EQ(pool.available(), 1);
  a.Release();  // a second release is a no-op
  EXPECT_EQ(pool.available(), 1);
  {
    StagingPool::Buffer gone = std::move(b);
    EXPECT_FALSE(b);  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(pool.available(), 1);
  }  // destroyed: back to the pool
  EXPECT_EQ(pool.available(), 2);
}

TEST(StagingPoolTest, BuffersAreHugePageAlignedWritableAndReused) {
  StagingPool pool(kChunk, kChunk);
  StagingPool::Buffer a = pool.Acquire();
  char* first = a.data();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % (2 << 20), 0u);
  std::memset(first, 0x5a, kChunk);
  EXPECT_EQ(first[kChunk - 1], 0x5a);
  a.Release();
  StagingPool::Buffer again = pool.Acquire();
  EXPECT_EQ(again.data(), first);  // the same memory, not a new allocation
}

TEST(StagingPoolTest, MoveAssignmentReturnsTheBufferItOverwrites) {
  StagingPool pool(2 * kChunk, kChunk);
  StagingPool::Buffer a = pool.Acquire();
  StagingPool::Buffer b = pool.Acquire();
  EXPECT_EQ(pool.available(), 0);
  char* b_data = b.data();
  a = std::move(b);
  EXPECT_EQ(a.data(), b_data);
  EXPECT_EQ(pool.available(), 1);
}

TEST(StagingPoolTest, AcquireWaitsWhileEveryBufferIsInUse) {
  StagingPool pool(kChunk, kChunk);
  StagingPool::Buffer held = pool.Acquire();
  char* held_data = held.data();
  absl::Notification acquired;
  StagingPool::Buffer got;
  std::thread waiter([&] {
    got = pool.Acquire();
    acquired.Notify();
  });
  // Backpressure: the pool is empty, so Acquire() must still be waiting.
  EXPECT_FALSE(acquired.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  held.Release();
  EXPECT_TRUE(acquired.WaitForNotificationWithTimeout(absl::Seconds(30)));
  waiter.join();
  ASSERT_TRUE(got);
  EXPECT_EQ(got.data(), held_data);
  EXPECT_EQ(pool.available(), 0);
}

}  // namespace
}  // namespace snapback::internal_client
