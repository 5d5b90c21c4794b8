#include "storage/catalog.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/hash.h"

namespace snapback::storage {
namespace {

absl::Status Errno(const std::string& what) {
  const int e = errno;
  const std::string msg = absl::StrCat(what, ": ", std::strerror(e));
  return e == ENOSPC ? absl::ResourceExhaustedError(msg + "; free space on the volume")
                     : absl::UnavailableError(msg);
}

absl::Status SyncPath(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return Errno("open " + path);
  const int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : Errno("fsync " + path);
}

}  // namespace

std::string CatalogStore::PathOf(const std::string& key) const {
  return absl::StrCat(dir_, "/", Sha256(key).ToHex());
}

absl::StatusOr<std::unique_ptr<CatalogStore>> CatalogStore::Open(const std::string& dir) {
  const std::string path = dir + "/catalog";
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("creating ", path, ": ", ec.message()));
  }
  for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
    if (absl::EndsWith(e.path().filename().string(), ".tmp")) {
      std::filesystem::remove(e.path(), ec);
    }
  }
  return std::unique_ptr<CatalogStore>(new CatalogStore(path));
}

absl::Status CatalogStore::Put(const std::string& key, const std::string& value) {
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError("catalog key must be 1..1024 bytes");
  }
  if (value.size() > kMaxValueBytes) {
    return absl::InvalidArgumentError("catalog value larger than 64 MiB");
  }
  absl::MutexLock lock(&mu_);
  const std::string final_path = PathOf(key);
  const std::string tmp = final_path + ".tmp";
  // The file holds the key (4-byte length, little-endian) then the value;
  // its name is a hash of the key, so any key fits a file name.
  std::string contents;
  const uint32_t klen = static_cast<uint32_t>(key.size());
  contents.append(reinterpret_cast<const char*>(&klen), 4);
  contents.append(key);
  contents.append(value);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("create " + tmp);
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = Errno("write " + tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    absl::Status s = Errno("fsync " + tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    absl::Status s = Errno("rename " + tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  return SyncPath(dir_, O_RDONLY | O_DIRECTORY);
}

absl::StatusOr<bool> CatalogStore::List(
    const std::string& prefix, const std::string& start_after, size_t max_bytes,
    std::vector<std::pair<std::string, std::string>>* out) {
  // Every record is read (a node keeps one per committed checkpoint it was
  // given); the page is cut at max_bytes, in key order.
  std::map<std::string, std::string> records;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (absl::EndsWith(name, ".tmp")) continue;
    std::ifstream in(e.path(), std::ios::binary);
    if (!in) continue;  // deleted meanwhile
    std::string contents((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
    uint32_t n = 0;
    if (contents.size() < 4) continue;
    std::memcpy(&n, contents.data(), 4);
    if (contents.size() < 4 + static_cast<size_t>(n)) continue;
    std::string key = contents.substr(4, n);
    if (!absl::StartsWith(key, prefix) || key <= start_after) continue;
    records.emplace(std::move(key), contents.substr(4 + n));
  }
  if (ec) {
    return absl::UnavailableError(absl::StrCat("listing ", dir_, ": ", ec.message()));
  }
  size_t bytes = 0;
  for (auto& [key, value] : records) {
    if (bytes >= max_bytes && !out->empty()) return false;
    bytes += value.size();
    out->emplace_back(key, std::move(value));
  }
  return true;
}

absl::Status CatalogStore::Delete(const std::vector<std::string>& keys) {
  absl::MutexLock lock(&mu_);
  for (const std::string& key : keys) {
    const std::string path = PathOf(key);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno("unlink " + path);
  }
  return SyncPath(dir_, O_RDONLY | O_DIRECTORY);
}

}  // namespace snapback::storage
