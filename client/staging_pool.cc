#include "client/staging_pool.h"

#include <sys/mman.h>

#include <algorithm>

namespace snapback::internal_client {

StagingPool::StagingPool(uint64_t cap_bytes, uint64_t chunk_bytes)
    : chunk_bytes_(chunk_bytes),
      capacity_(static_cast<int>(std::max<uint64_t>(1, cap_bytes / chunk_bytes))) {}

void StagingPool::Buffer::Release() {
  if (pool_ != nullptr && data_ != nullptr) pool_->Return(std::move(data_));
  data_.reset();
}

StagingPool::Buffer StagingPool::Acquire() {
  absl::MutexLock lock(&mu_);
  auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !free_.empty() || allocated_ < capacity_;
  };
  mu_.Await(absl::Condition(&available));
  if (!free_.empty()) {
    auto data = std::move(free_.back());
    free_.pop_back();
    return Buffer(this, std::move(data));
  }
  ++allocated_;
  // Untouched until the copy writes it; huge pages where the kernel has
  // them (madvise mode), ordinary pages otherwise.
  constexpr size_t kHuge = 2 << 20;
  const size_t size = (chunk_bytes_ + kHuge - 1) / kHuge * kHuge;
  char* p = static_cast<char*>(std::aligned_alloc(kHuge, size));
  if (p == nullptr) std::abort();  // as operator new would
  (void)madvise(p, size, MADV_HUGEPAGE);
  return Buffer(this, Memory(p));
}

int StagingPool::available() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(free_.size()) + capacity_ - allocated_;
}

void StagingPool::Return(Memory data) {
  absl::MutexLock lock(&mu_);
  free_.push_back(std::move(data));
}

}  // namespace snapback::internal_client
