// The file-system seam of the chunk store. Everything the store does to disk
// goes through FileSystem, so tests can wrap it (FaultInjectionFileSystem)
// to fail calls, drop unsynced data and crash at named points.
//
// The POSIX implementation writes through io_uring (liburing) when the kernel
// allows it and falls back to pwrite() at run time otherwise; files opened
// with direct_io use O_DIRECT where the file system supports it.
#ifndef SNAPBACK_STORAGE_FILE_SYSTEM_H_
#define SNAPBACK_STORAGE_FILE_SYSTEM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace snapback::storage {

// O_DIRECT buffers, offsets and lengths are multiples of this.
inline constexpr uint64_t kDirectIoAlignment = 4096;

// An open file for positional I/O. Thread-safe: concurrent ReadAt calls are
// fine; writes to overlapping ranges are the caller's problem.
class File {
 public:
  virtual ~File() = default;

  // Writes all of `data` at `offset`. For a direct_io() file, data.data(),
  // offset and data.size() must be multiples of kDirectIoAlignment.
  // The data is not durable until Sync() returns OK.
  virtual absl::Status WriteAt(uint64_t offset, absl::Span<const char> data) = 0;
  // Reads exactly dst.size() bytes at `offset`; OUT_OF_RANGE when the file
  // ends first. Same alignment rule as WriteAt for a direct_io() file.
  virtual absl::Status ReadAt(uint64_t offset, absl::Span<char> dst) = 0;
  // fdatasync(). After an error the state of unsynced data is unknown: the
  // caller must not retry and trust it (see "fsyncgate").
  virtual absl::Status Sync() = 0;
  virtual absl::Status Truncate(uint64_t size) = 0;
  // Allocates disk blocks for [offset, offset + length) (fallocate mode 0;
  // zeros written where the file system cannot fallocate), extending the
  // file. RESOURCE_EXHAUSTED when the volume has no room.
  virtual absl::Status Allocate(uint64_t offset, uint64_t length) = 0;
  virtual absl::StatusOr<uint64_t> Size() = 0;
  // True when the file was opened with O_DIRECT.
  virtual bool direct_io() const = 0;
  virtual const std::string& path() const = 0;
};

struct OpenOptions {
  // Open for writing (else read-only).
  // Default: false
  bool write = false;
  // Create the file if it does not exist (implies write).
  // Default: false
  bool create = false;
  // Ask for O_DIRECT; silently buffered where the file system refuses it
  // (e.g. tmpfs): check File::direct_io().
  // Default: false
  bool direct_io = false;
};

// Size and free space of the volume holding a path (statvfs).
struct VolumeSpace {
  uint64_t capacity_bytes = 0;  // f_blocks * f_frsize
  uint64_t free_bytes = 0;      // f_bavail * f_frsize: what unprivileged writers get
};

// Thread-safe.
class FileSystem {
 public:
  virtual ~FileSystem() = default;

  virtual absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                                     const OpenOptions& options) = 0;
  // mkdir -p.
  virtual absl::Status CreateDirs(const std::string& path) = 0;
  // fsync() of a directory, making created or removed entries durable.
  virtual absl::Status SyncDir(const std::string& path) = 0;
  virtual absl::Status Remove(const std::string& path) = 0;
  // Names (not paths) of the entries of `path`, without "." and "..".
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual bool Exists(const std::string& path) = 0;
  // The volume that holds `path`.
  virtual absl::StatusOr<VolumeSpace> Space(const std::string& path) = 0;

  // A named point in a multi-step protocol (e.g. "segment.after_sync"). The
  // real file system returns OK; a fault-injecting one may return an error
  // to simulate a crash there, and the caller must then stop the operation.
  virtual absl::Status CrashPoint(absl::string_view name) {
    (void)name;
    return absl::OkStatus();
  }
  // How writes are issued, e.g. "io_uring" or "pwrite".
  virtual std::string IoMode() const = 0;
};

enum class IoEngine {
  kAuto,     // io_uring when the kernel allows it, else pwrite
  kIoUring,  // io_uring or fail at creation
  kPwrite,   // always pwrite/pread
};

struct PosixFileSystemOptions {
  // Default: kAuto
  IoEngine engine = IoEngine::kAuto;
  // io_uring submission queue depth; writes are split into pieces of
  // io_size bytes that are in flight together.
  // Default: 16
  unsigned queue_depth = 16;
  // Default: 1 MiB
  uint64_t io_size = 1 << 20;
};

// The real file system. With kIoUring, fails when io_uring cannot be set up.
absl::StatusOr<std::shared_ptr<FileSystem>> NewPosixFileSystem(
    const PosixFileSystemOptions& options = {});

// The process-wide default (kAuto).
std::shared_ptr<FileSystem> DefaultFileSystem();

// Maps errno to a status whose code says what to do: ENOSPC ->
// RESOURCE_EXHAUSTED, ENOENT -> NOT_FOUND, EACCES -> PERMISSION_DENIED,
// else INTERNAL/UNAVAILABLE; the message names the call, path and error.
absl::Status ErrnoToStatus(int err, absl::string_view what, absl::string_view path);

// An aligned, owned byte buffer for direct I/O.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size) { Resize(size); }
  // Grows (never shrinks the allocation); contents are not preserved.
  void Resize(size_t size);
  char* data() { return data_.get(); }
  const char* data() const { return data_.get(); }
  size_t size() const { return size_; }
  absl::Span<char> span() { return {data(), size_}; }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

inline uint64_t AlignUp(uint64_t n, uint64_t a = kDirectIoAlignment) {
  return (n + a - 1) / a * a;
}
inline uint64_t AlignDown(uint64_t n, uint64_t a = kDirectIoAlignment) {
  return n / a * a;
}

}  // namespace snapback::storage

#endif  // SNAPBACK_STORAGE_FILE_SYSTEM_H_
