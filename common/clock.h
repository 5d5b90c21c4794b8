// Clock: the one source of "now" for every timeout, lease, grace-period and
// heartbeat decision, so tests drive time with FakeClock instead of sleeping.
//
// Two readings:
// - Now(): wall time. Leases and grace periods are persisted as Unix
//   milliseconds and must mean the same after a restart. A wall clock that
//   jumps backwards only makes them last longer (nothing is collected
//   early); one that jumps forwards can expire a lease early, which aborts a
//   checkpoint but never loses a committed one.
// - Monotonic(): time since an arbitrary start that never jumps, for
//   in-process intervals (heartbeat gaps, step times) where a wall-clock
//   step must not look like a hung or dead rank.
#ifndef SNAPBACK_COMMON_CLOCK_H_
#define SNAPBACK_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace snapback {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  virtual absl::Duration Monotonic() = 0;
};

// absl::Now(). The returned clock lives forever.
Clock* RealClock();

// A clock that moves only when told: Advance() moves both readings, Set()
// only the wall clock (a wall-clock step). Thread-safe.
class FakeClock final : public Clock {
 public:
  // Starts at `start` (a fixed, recognisable date by default).
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000))
      : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  absl::Duration Monotonic() override {
    absl::MutexLock lock(&mu_);
    return monotonic_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
    monotonic_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Duration monotonic_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
};

}  // namespace snapback

#endif  // SNAPBACK_COMMON_CLOCK_H_
