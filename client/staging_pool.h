// StagingPool: the client's snapshot memory. A fixed number of chunk-sized
// buffers (cap / chunk size), allocated on first use and reused across
// saves, so the memory a checkpoint takes is bounded no matter how large
// the model is: when every buffer is in use, Acquire() waits for the
// pipeline to release one (backpressure). Buffers are 2 MiB aligned and
// asked for transparent huge pages, so the first save faults a 4 MiB chunk
// in 2 page faults instead of 1024.
//
// Thread-safe.
#ifndef SNAPBACK_CLIENT_STAGING_POOL_H_
#define SNAPBACK_CLIENT_STAGING_POOL_H_

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace snapback::internal_client {

class StagingPool {
 public:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  using Memory = std::unique_ptr<char, Free>;

  // At least one buffer, even when cap_bytes < chunk_bytes.
  StagingPool(uint64_t cap_bytes, uint64_t chunk_bytes);

  class Buffer {
   public:
    Buffer() = default;
    Buffer(StagingPool* pool, Memory data) : pool_(pool), data_(std::move(data)) {}
    Buffer(Buffer&&) = default;
    Buffer& operator=(Buffer&& other) {
      Release();
      pool_ = other.pool_;
      data_ = std::move(other.data_);
      return *this;
    }
    ~Buffer() { Release(); }
    char* data() { return data_.get(); }
    const char* data() const { return data_.get(); }
    explicit operator bool() const { return data_ != nullptr; }
    // Gives the buffer back to the pool now.
    void Release();

   private:
    StagingPool* pool_ = nullptr;
    Memory data_;
  };

  // Blocks until a buffer is free.
  Buffer Acquire();
  uint64_t chunk_bytes() const { return chunk_bytes_; }
  int capacity() const { return capacity_; }
  // Buffers Acquire() could hand out now without waiting.
  int available();

 private:
  void Return(Memory data);

  const uint64_t chunk_bytes_;
  const int capacity_;
  absl::Mutex mu_;
  std::vector<Memory> free_ ABSL_GUARDED_BY(mu_);
  int allocated_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_STAGING_POOL_H_
