#include "storage/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"

namespace snapback::storage {

absl::Status ErrnoToStatus(int err, absl::string_view what, absl::string_view path) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(
          absl::StrCat(msg, "; free space on the data volume or move the data dir"));
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(
          absl::StrCat(msg, "; check ownership and mount options of the data dir"));
    case EINTR:
    case EAGAIN:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

void AlignedBuffer::Resize(size_t size) {
  if (size > capacity_) {
    size_t cap = AlignUp(size);
    void* p = nullptr;
    if (posix_memalign(&p, kDirectIoAlignment, cap) != 0) std::abort();
    data_.reset(static_cast<char*>(p));
    capacity_ = cap;
  }
  size_ = size;
}

namespace {

// One io_uring shared by the files of a file system. Writes are issued by
// one group-commit leader at a time, so a mutex costs nothing measurable.
class Ring {
 public:
  static absl::StatusOr<std::unique_ptr<Ring>> Create(unsigned depth) {
    auto ring = std::unique_ptr<Ring>(new Ring());
    int rc = io_uring_queue_init(depth, &ring->ring_, 0);
    if (rc < 0) return ErrnoToStatus(-rc, "io_uring_queue_init", "");
    ring->depth_ = depth;
    ring->initialized_ = true;
    return ring;
  }
  ~Ring() {
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  // Writes `data` at `offset` of `fd` in pieces of `piece` bytes, up to the
  // queue depth in flight at once.
  absl::Status Write(int fd, uint64_t offset, absl::Span<const char> data, uint64_t piece,
                     const std::string& path) {
    absl::MutexLock lock(&mu_);
    uint64_t submitted = 0, completed = 0;
    unsigned inflight = 0;
    absl::Status status;
    while (completed < data.size()) {
      while (status.ok() && submitted < data.size() && inflight < depth_) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) break;
        uint64_t n = std::min<uint64_t>(piece, data.size() - submitted);
        io_uring_prep_write(sqe, fd, data.data() + submitted, static_cast<unsigned>(n),
                            offset + submitted);
        io_uring_sqe_set_data64(sqe, n);
        submitted += n;
        ++inflight;
      }
      if (inflight == 0) break;
      int rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc < 0 && rc != -EINTR) {
        // The kernel took none of them; nothing is in flight.
        return ErrnoToStatus(-rc, "io_uring_submit", path);
      }
      io_uring_cqe* cqe;
      while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
        uint64_t want = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&ring_, cqe);
        --inflight;
        if (res < 0) {
          if (status.ok()) status = ErrnoToStatus(-res, "io_uring write", path);
        } else if (static_cast<uint64_t>(res) != want) {
          // Short writes happen on ENOSPC; report them as such.
          if (status.ok()) {
            status = absl::ResourceExhaustedError(
                absl::StrCat("short write to ", path, " (", res, " of ", want,
                             " bytes); free space on the data volume"));
          }
        }
        completed += want;
      }
      if (!status.ok() && inflight == 0) return status;
    }
    return status;
  }

 private:
  Ring() = default;
  absl::Mutex mu_;
  io_uring ring_ ABSL_GUARDED_BY(mu_){};
  unsigned depth_ = 0;
  bool initialized_ = false;
};

class PosixFile : public File {
 public:
  PosixFile(int fd, std::string path, bool direct, Ring* ring, uint64_t io_size)
      : fd_(fd),
        path_(std::move(path)),
        direct_(direct),
        ring_(ring),
        io_size_(io_size) {}
  ~PosixFile() override { ::close(fd_); }

  absl::Status WriteAt(uint64_t offset, absl::Span<const char> data) override {
    if (ring_ != nullptr) return ring_->Write(fd_, offset, data, io_size_, path_);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done, offset + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "pwrite", path_);
      }
      if (n == 0) return ErrnoToStatus(ENOSPC, "pwrite", path_);
      done += n;
    }
    return absl::OkStatus();
  }

  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst) override {
    size_t done = 0;
    while (done < dst.size()) {
      ssize_t n = ::pread(fd_, dst.data() + done, dst.size() - done, offset + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "pread", path_);
      }
      if (n == 0) {
        return absl::OutOfRangeError(
            absl::StrCat("read past the end of ", path_, " at ", offset + done));
      }
      done += n;
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (::fdatasync(fd_) != 0) return ErrnoToStatus(errno, "fdatasync", path_);
    return absl::OkStatus();
  }

  absl::Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return ErrnoToStatus(errno, "ftruncate", path_);
    }
    return absl::OkStatus();
  }

  absl::Status Allocate(uint64_t offset, uint64_t length) override {
    int rc;
    do {
      rc = ::fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return absl::OkStatus();
    if (errno != EOPNOTSUPP) return ErrnoToStatus(errno, "fallocate", path_);
    // No fallocate here: write zeros (aligned, so an O_DIRECT file takes them).
    AlignedBuffer zeros(1 << 20);
    std::memset(zeros.data(), 0, zeros.size());
    for (uint64_t done = 0; done < length;) {
      const uint64_t n = std::min<uint64_t>(zeros.size(), length - done);
      SNAPBACK_RETURN_IF_ERROR(WriteAt(offset + done, {zeros.data(), AlignUp(n)}));
      done += n;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoToStatus(errno, "fstat", path_);
    return static_cast<uint64_t>(st.st_size);
  }

  bool direct_io() const override { return direct_; }
  const std::string& path() const override { return path_; }

 private:
  int fd_;
  std::string path_;
  bool direct_;
  Ring* ring_;
  uint64_t io_size_;
};

class PosixFileSystem : public FileSystem {
 public:
  PosixFileSystem(std::unique_ptr<Ring> ring, uint64_t io_size)
      : ring_(std::move(ring)), io_size_(io_size) {}

  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override {
    int flags = O_CLOEXEC;
    flags |= (options.write || options.create) ? O_RDWR : O_RDONLY;
    if (options.create) flags |= O_CREAT;
    bool direct = false;
    int fd = -1;
    if (options.direct_io) {
      fd = ::open(path.c_str(), flags | O_DIRECT, 0644);
      if (fd >= 0)
        direct = true;
      else if (errno != EINVAL)
        return ErrnoToStatus(errno, "open", path);
    }
    if (fd < 0) fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) return ErrnoToStatus(errno, "open", path);
    return std::make_unique<PosixFile>(fd, path, direct, ring_.get(), io_size_);
  }

  absl::Status CreateDirs(const std::string& path) override {
    std::string partial;
    for (size_t i = 0; i <= path.size(); ++i) {
      if (i == path.size() || (path[i] == '/' && i > 0)) {
        partial = path.substr(0, i);
        if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
          return ErrnoToStatus(errno, "mkdir", partial);
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status SyncDir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open dir", path);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoToStatus(err, "fsync dir", path);
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoToStatus(errno, "unlink", path);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* dir = ::opendir(path.c_str());
    if (dir == nullptr) return ErrnoToStatus(errno, "opendir", path);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    ::closedir(dir);
    return names;
  }

  bool Exists(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
  }

  absl::StatusOr<VolumeSpace> Space(const std::string& path) override {
    struct statvfs st;
    if (::statvfs(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "statvfs", path);
    return VolumeSpace{
        .capacity_bytes = static_cast<uint64_t>(st.f_blocks) * st.f_frsize,
        .free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize,
    };
  }

  std::string IoMode() const override { return ring_ ? "io_uring" : "pwrite"; }

 private:
  std::unique_ptr<Ring> ring_;
  uint64_t io_size_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<FileSystem>> NewPosixFileSystem(
    const PosixFileSystemOptions& options) {
  std::unique_ptr<Ring> ring;
  if (options.engine != IoEngine::kPwrite) {
    auto created = Ring::Create(options.queue_depth);
    if (created.ok()) {
      ring = std::move(created).value();
    } else if (options.engine == IoEngine::kIoUring) {
      return absl::FailedPreconditionError(
          absl::StrCat("io_uring is not available here (", created.status().message(),
                       "); use --io=pwrite or --io=auto"));
    }
  }
  return std::make_shared<PosixFileSystem>(std::move(ring), options.io_size);
}

std::shared_ptr<FileSystem> DefaultFileSystem() {
  static std::shared_ptr<FileSystem> fs = *NewPosixFileSystem({});
  return fs;
}

}  // namespace snapback::storage
