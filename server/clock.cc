#include "server/clock.h"

namespace snapback::server {
namespace {

class SystemClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

}  // namespace

Clock* RealClock() {
  static SystemClock* const clock = new SystemClock();  // never destroyed
  return clock;
}

}  // namespace snapback::server
