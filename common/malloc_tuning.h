// Process-wide allocator settings for programs that move multi-MiB buffers.
#ifndef SNAPBACK_COMMON_MALLOC_TUNING_H_
#define SNAPBACK_COMMON_MALLOC_TUNING_H_

namespace snapback {

// glibc serves every allocation over 128 KiB-32 MiB with a fresh mmap() and
// gives it back with munmap() on free: a 4 MiB chunk buffer then costs 1024
// page faults on first touch, and concurrent threads serialise on the
// process's mmap lock (measured with perf on store_bench: ~8 % of a read
// workload in clear_page and rwsem_down_write_slowpath). Raising the mmap
// and trim thresholds keeps chunk-sized buffers in the heap and reuses
// them. Call once at the start of main(); later calls do nothing.
void TuneMallocForLargeBuffers();

}  // namespace snapback

#endif  // SNAPBACK_COMMON_MALLOC_TUNING_H_
