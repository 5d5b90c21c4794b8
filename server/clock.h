// Clock: the one source of "now" for every timeout, lease and grace-period
// decision of the coordinator, so tests can drive time with FakeClock instead
// of sleeping.
//
// Wall time (absl::Time), not a monotonic clock: leases and grace periods are
// persisted as Unix milliseconds and must mean the same after a restart. A
// wall clock that jumps backwards only makes leases and grace periods last
// longer (nothing is collected early); one that jumps forwards can expire a
// lease early, which aborts a checkpoint but never loses a committed one.
#ifndef SNAPBACK_SERVER_CLOCK_H_
#define SNAPBACK_SERVER_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace snapback::server {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

// absl::Now(). The returned clock lives forever.
Clock* RealClock();

// A clock that moves only when told. Thread-safe.
class FakeClock final : public Clock {
 public:
  // Starts at `start` (a fixed, recognisable date by default).
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000))
      : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_CLOCK_H_
