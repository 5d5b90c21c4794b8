#include "testing/small_volume.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace snapback::testing {
namespace {

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  return !f.fail();
}

absl::Status Enter() {
  const uid_t uid = ::geteuid();
  const gid_t gid = ::getegid();
  if (uid == 0) {
    if (::unshare(CLONE_NEWNS) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("unshare(CLONE_NEWNS): ", std::strerror(errno)));
    }
  } else {
    if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("unshare(CLONE_NEWUSER|CLONE_NEWNS) as uid ", uid, ": ",
                       std::strerror(errno), " (user namespaces not permitted here)"));
    }
    // Become root of the new user namespace, mapped to ourselves outside.
    if (!WriteFile("/proc/self/setgroups", "deny") ||
        !WriteFile("/proc/self/uid_map", absl::StrCat("0 ", uid, " 1")) ||
        !WriteFile("/proc/self/gid_map", absl::StrCat("0 ", gid, " 1"))) {
      return absl::FailedPreconditionError("cannot write the user namespace's id maps");
    }
  }
  // Our mounts must not propagate back to the host's namespace.
  if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("making / private in the new namespace: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status EnterPrivateMountNamespace() {
  static const absl::Status* const status = new absl::Status(Enter());
  return *status;
}

absl::StatusOr<std::unique_ptr<SmallVolume>> SmallVolume::Mount(uint64_t bytes) {
  if (absl::Status s = EnterPrivateMountNamespace(); !s.ok()) return s;
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern = absl::StrCat(base ? base : "/tmp", "/snapback-volume-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  std::string path = buf.data();
  const std::string options = absl::StrCat("size=", bytes, ",mode=0755");
  if (::mount("snapback-test", path.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
              options.c_str()) != 0) {
    const int err = errno;
    ::rmdir(path.c_str());
    return absl::FailedPreconditionError(
        absl::StrCat("mount -t tmpfs -o ", options, " ", path, ": ", std::strerror(err)));
  }
  return std::unique_ptr<SmallVolume>(new SmallVolume(std::move(path)));
}

SmallVolume::~SmallVolume() {
  ::umount2(path_.c_str(), MNT_DETACH);
  ::rmdir(path_.c_str());
}

uint64_t SmallVolume::FreeBytes() const {
  struct statvfs st;
  if (::statvfs(path_.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

uint64_t SmallVolume::FillUp(const std::string& name) const {
  const std::string file = path_ + "/" + name;
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return 0;
  std::string block(64 << 10, 'f');
  uint64_t written = 0;
  for (size_t size = block.size(); size > 0;) {
    ssize_t n = ::write(fd, block.data(), size);
    if (n > 0) {
      written += n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      size /= 2;  // ENOSPC: fill what is left in smaller pieces
    }
  }
  ::close(fd);
  return written;
}

}  // namespace snapback::testing
