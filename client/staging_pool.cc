#include "client/staging_pool.h"

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
  // new char[] leaves the bytes uninitialised: no page is touched before the
  // copy writes it.
  return Buffer(this, std::unique_ptr<char[]>(new char[chunk_bytes_]));
}

int StagingPool::allocated() {
  absl::MutexLock lock(&mu_);
  return allocated_;
}

void StagingPool::Return(std::unique_ptr<char[]> data) {
  absl::MutexLock lock(&mu_);
  free_.push_back(std::move(data));
}

}  // namespace snapback::internal_client
