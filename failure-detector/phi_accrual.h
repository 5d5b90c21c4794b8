// PhiAccrualDetector: "how likely is it that this peer is dead?" from the
// history of its heartbeat arrivals (Hayashibara et al., "The φ accrual
// failure detector", 2004; the form used by Akka and Cassandra).
//
// It keeps a bounded window of the intervals between heartbeats and models
// them as a normal distribution. phi(now) = -log10(P(a heartbeat arrives later
// than now)): phi 1 means a 10 % chance the peer is alive and merely late,
// phi 8 one in 10^8. A caller suspects the peer when phi crosses its
// threshold. The threshold therefore adapts to each peer's observed rhythm:
// a rank whose heartbeats jitter is given more slack than a steady one.
//
// Time is the caller's (a monotonic reading of an injected Clock), so tests
// drive it by hand. Not thread-safe: the owner serialises calls.
#ifndef SNAPBACK_FAILURE_DETECTOR_PHI_ACCRUAL_H_
#define SNAPBACK_FAILURE_DETECTOR_PHI_ACCRUAL_H_

#include <deque>

#include "absl/time/time.h"

namespace snapback::detector {

struct PhiAccrualOptions {
  // Intervals remembered; older ones are forgotten.
  // Default: 100
  int window = 100;
  // Floor of the standard deviation, so a perfectly steady sender is not
  // declared dead by a few milliseconds of scheduling jitter.
  // Default: 100 ms
  absl::Duration min_std_dev = absl::Milliseconds(100);
  // Pause tolerated on top of the learned distribution (e.g. a GC pause or
  // a slow save) before phi starts to climb.
  // Default: 1 s
  absl::Duration acceptable_pause = absl::Seconds(1);
  // Interval assumed before any has been observed (the heartbeat period).
  // Default: 1 s
  absl::Duration first_interval = absl::Seconds(1);
};

class PhiAccrualDetector {
 public:
  explicit PhiAccrualDetector(PhiAccrualOptions options = {});

  // A heartbeat arrived at `now` (monotonic).
  void Heartbeat(absl::Duration now);
  // Suspicion at `now`: 0 right after a heartbeat, growing while none comes.
  // 0 before the first heartbeat (nothing is known yet).
  double Phi(absl::Duration now) const;
  // When phi will reach `threshold` if no heartbeat comes (monotonic), for
  // scheduling the next check; InfiniteDuration() before the first beat.
  absl::Duration WhenPhiReaches(double threshold) const;

  int samples() const { return static_cast<int>(intervals_.size()); }
  absl::Duration mean() const;
  absl::Duration std_dev() const;

 private:
  PhiAccrualOptions options_;
  bool started_ = false;
  absl::Duration last_ = absl::ZeroDuration();
  std::deque<double> intervals_;  // seconds
  double sum_ = 0, sum_sq_ = 0;
};

}  // namespace snapback::detector

#endif  // SNAPBACK_FAILURE_DETECTOR_PHI_ACCRUAL_H_
