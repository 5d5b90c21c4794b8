#include "common/malloc_tuning.h"

#include <malloc.h>

#include <mutex>

namespace snapback {

void TuneMallocForLargeBuffers() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Allocations up to 64 MiB (the largest chunk) come from the heap...
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    // ...and freed memory stays there for the next chunk instead of being
    // returned to the kernel after every free.
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
  });
}

}  // namespace snapback
