#include "common/clock.h"

#include "gtest/gtest.h"

namespace snapback {
namespace {

TEST(FakeClock, AdvanceMovesBothReadingsSetOnlyTheWallClock) {
  FakeClock clock;
  const absl::Time wall = clock.Now();
  const absl::Duration mono = clock.Monotonic();
  clock.Advance(absl::Seconds(3));
  EXPECT_EQ(clock.Now() - wall, absl::Seconds(3));
  EXPECT_EQ(clock.Monotonic() - mono, absl::Seconds(3));
  clock.Set(wall - absl::Hours(1));  // the wall clock steps back
  EXPECT_EQ(clock.Now(), wall - absl::Hours(1));
  EXPECT_EQ(clock.Monotonic() - mono, absl::Seconds(3));
}

TEST(RealClock, MonotonicNeverGoesBack) {
  Clock* clock = RealClock();
  absl::Duration last = clock->Monotonic();
  for (int i = 0; i < 1000; ++i) {
    absl::Duration now = clock->Monotonic();
    EXPECT_GE(now, last);
    last = now;
  }
}

}  // namespace
}  // namespace snapback
