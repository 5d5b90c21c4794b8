#include "failure-detector/phi_accrual.h"

#include <random>

#include "common/clock.h"
#include "gtest/gtest.h"

namespace snapback::detector {
namespace {

TEST(PhiAccrual, NothingIsSuspectedBeforeTheFirstHeartbeat) {
  PhiAccrualDetector d;
  EXPECT_EQ(d.Phi(absl::Seconds(100)), 0);
  EXPECT_EQ(d.WhenPhiReaches(8), absl::InfiniteDuration());
}

TEST(PhiAccrual, SteadyHeartbeatsThenSilenceRaisesPhi) {
  FakeClock clock;
  PhiAccrualDetector d;
  for (int i = 0; i < 30; ++i) {
    d.Heartbeat(clock.Monotonic());
    clock.Advance(absl::Seconds(1));
  }
  // One period after the last beat (now): not suspicious.
  EXPECT_LT(d.Phi(clock.Monotonic()), 1.0);
  // Silence: phi grows without bound and crosses 8 within a few seconds.
  double last = d.Phi(clock.Monotonic());
  absl::Duration crossed = absl::InfiniteDuration();
  for (int ms = 0; ms < 20000; ms += 100) {
    clock.Advance(absl::Milliseconds(100));
    const double phi = d.Phi(clock.Monotonic());
    EXPECT_GE(phi, last);
    last = phi;
    if (phi >= 8 && crossed == absl::InfiniteDuration()) crossed = clock.Monotonic();
  }
  ASSERT_NE(crossed, absl::InfiniteDuration());
  // Last beat at t=29 s; mean 1 s + 1 s pause + a few 100 ms deviations.
  EXPECT_LE(crossed - absl::Seconds(29), absl::Seconds(4));
  EXPECT_GE(crossed - absl::Seconds(29), absl::Seconds(2));
  // WhenPhiReaches predicts the crossing.
  EXPECT_LE(absl::AbsDuration(d.WhenPhiReaches(8) - crossed), absl::Milliseconds(150));
}

TEST(PhiAccrual, JitteryPeersGetMoreSlackThanSteadyOnes) {
  PhiAccrualDetector steady, jittery;
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> jitter(0.3, 1.7);
  absl::Duration ts = absl::ZeroDuration(), tj = absl::ZeroDuration();
  absl::Duration last_s, last_j;
  for (int i = 0; i < 100; ++i) {
    steady.Heartbeat(last_s = ts);
    jittery.Heartbeat(last_j = tj);
    ts += absl::Seconds(1);
    tj += absl::Seconds(jitter(rng));
  }
  EXPECT_LT(steady.std_dev(), jittery.std_dev());
  // 3 s after each one's last beat, the steady peer is far more suspect.
  EXPECT_GT(steady.Phi(last_s + absl::Seconds(3)),
            jittery.Phi(last_j + absl::Seconds(3)));
}

TEST(PhiAccrual, WindowForgetsOldIntervals) {
  PhiAccrualDetector d({.window = 10});
  absl::Duration t = absl::ZeroDuration();
  for (int i = 0; i < 50; ++i) {
    d.Heartbeat(t);
    t += absl::Seconds(5);
  }
  for (int i = 0; i < 20; ++i) {
    d.Heartbeat(t);
    t += absl::Seconds(1);
  }
  EXPECT_EQ(d.samples(), 10);
  EXPECT_LE(absl::AbsDuration(d.mean() - absl::Seconds(1)), absl::Milliseconds(1));
}

TEST(PhiAccrual, AWallClockStepDoesNotLookLikeSilence) {
  // The detector only sees monotonic readings: a wall-clock jump of an hour
  // changes nothing.
  FakeClock clock;
  PhiAccrualDetector d;
  for (int i = 0; i < 10; ++i) {
    d.Heartbeat(clock.Monotonic());
    clock.Advance(absl::Seconds(1));
  }
  clock.Set(clock.Now() + absl::Hours(1));
  EXPECT_LT(d.Phi(clock.Monotonic()), 1.0);
}

}  // namespace
}  // namespace snapback::detector
