// A small real volume for full-disk tests: a tmpfs of a chosen size mounted
// in a private mount namespace of the test process, so ENOSPC, statvfs and
// fallocate behave as on a real full disk, nothing leaks into the host's
// mounts, and the mount disappears with the process.
//
// The namespace is per thread until threads are created from the thread
// that entered it: call EnterPrivateMountNamespace() before the process
// starts any thread (e.g. from a static initializer of the test), so every
// thread and child process (a snapback-server under test) sees the volumes.
#ifndef SNAPBACK_TESTING_SMALL_VOLUME_H_
#define SNAPBACK_TESTING_SMALL_VOLUME_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace snapback::testing {

// Moves the process (the calling thread and what it starts from then on)
// into a private mount namespace: as root with unshare(CLONE_NEWNS), else
// in a new user namespace too. Idempotent. FAILED_PRECONDITION saying why
// when the sandbox does not allow it (tests then skip with that reason).
absl::Status EnterPrivateMountNamespace();

class SmallVolume {
 public:
  // Mounts a tmpfs of `bytes` on a fresh directory under $TEST_TMPDIR or
  // /tmp. Requires EnterPrivateMountNamespace() to have succeeded.
  static absl::StatusOr<std::unique_ptr<SmallVolume>> Mount(uint64_t bytes);
  // Unmounts (lazily) and removes the directory.
  ~SmallVolume();
  SmallVolume(const SmallVolume&) = delete;
  SmallVolume& operator=(const SmallVolume&) = delete;

  const std::string& path() const { return path_; }
  // statvfs of the volume: bytes free to unprivileged writers.
  uint64_t FreeBytes() const;
  // Writes `name` under the volume until ENOSPC (another process filling
  // the disk). Returns the bytes written.
  uint64_t FillUp(const std::string& name) const;

 private:
  explicit SmallVolume(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace snapback::testing

#endif  // SNAPBACK_TESTING_SMALL_VOLUME_H_
