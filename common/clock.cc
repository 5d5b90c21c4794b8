#include "common/clock.h"

#include <chrono>

namespace snapback {
namespace {

class SystemClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  absl::Duration Monotonic() override {
    return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
  }
};

}  // namespace

Clock* RealClock() {
  static SystemClock* const clock = new SystemClock();  // never destroyed
  return clock;
}

}  // namespace snapback
