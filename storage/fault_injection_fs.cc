#include "storage/fault_injection_fs.h"

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace snapback::storage {
namespace {

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

class FaultFile : public File {
 public:
  FaultFile(FaultInjectionFileSystem* fs, std::unique_ptr<File> base)
      : fs_(fs), base_(std::move(base)) {}

  absl::Status WriteAt(uint64_t offset, absl::Span<const char> data) override {
    SNAPBACK_RETURN_IF_ERROR(fs_->Check(FsOp::kWrite, path()));
    fs_->OnWrite(path());
    return base_->WriteAt(offset, data);
  }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst) override {
    SNAPBACK_RETURN_IF_ERROR(fs_->CheckCrashed());
    return base_->ReadAt(offset, dst);
  }
  absl::Status Sync() override {
    absl::Status injected = fs_->Check(FsOp::kSync, path());
    if (!injected.ok()) {
      // Linux drops the dirty pages of a failed fsync: model that by losing
      // everything past the last good sync, so a caller that "retries and
      // trusts" would be caught.
      fs_->LoseUnsynced(base_.get());
      return injected;
    }
    SNAPBACK_RETURN_IF_ERROR(base_->Sync());
    SNAPBACK_ASSIGN_OR_RETURN(uint64_t size, base_->Size());
    fs_->OnSynced(path(), size);
    return absl::OkStatus();
  }
  absl::Status Truncate(uint64_t size) override {
    SNAPBACK_RETURN_IF_ERROR(fs_->Check(FsOp::kTruncate, path()));
    fs_->OnWrite(path());
    return base_->Truncate(size);
  }
  absl::Status Allocate(uint64_t offset, uint64_t length) override {
    SNAPBACK_RETURN_IF_ERROR(fs_->CheckCrashed());
    fs_->OnWrite(path());
    return base_->Allocate(offset, length);
  }
  absl::StatusOr<uint64_t> Size() override {
    SNAPBACK_RETURN_IF_ERROR(fs_->CheckCrashed());
    return base_->Size();
  }
  bool direct_io() const override { return base_->direct_io(); }
  const std::string& path() const override { return base_->path(); }

 private:
  FaultInjectionFileSystem* fs_;
  std::unique_ptr<File> base_;
};

FaultInjectionFileSystem::FaultInjectionFileSystem(std::shared_ptr<FileSystem> base)
    : base_(std::move(base)) {}

absl::Status FaultInjectionFileSystem::CheckCrashed() {
  absl::MutexLock lock(&mu_);
  if (crashed_) return absl::UnavailableError("simulated crash: the process is gone");
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::Check(FsOp op, const std::string& path) {
  absl::MutexLock lock(&mu_);
  if (crashed_) return absl::UnavailableError("simulated crash: the process is gone");
  int n = ++op_counts_[op];
  auto it = fail_at_.find(op);
  if (it != fail_at_.end() && it->second.first == n) {
    int err = it->second.second;
    fail_at_.erase(it);
    return ErrnoToStatus(err, "injected fault on", path);
  }
  return absl::OkStatus();
}

void FaultInjectionFileSystem::OnWrite(const std::string& path) {
  absl::MutexLock lock(&mu_);
  files_.try_emplace(path);
}

void FaultInjectionFileSystem::LoseUnsynced(File* file) {
  uint64_t keep;
  {
    absl::MutexLock lock(&mu_);
    keep = files_[file->path()].synced_size;
  }
  // Best effort: the file may already be shorter.
  (void)file->Truncate(keep);
}

void FaultInjectionFileSystem::OnSynced(const std::string& path, uint64_t size) {
  absl::MutexLock lock(&mu_);
  files_[path].synced_size = size;
}

absl::StatusOr<std::unique_ptr<File>> FaultInjectionFileSystem::Open(
    const std::string& path, const OpenOptions& options) {
  bool existed = base_->Exists(path);
  if (options.create && !existed) {
    SNAPBACK_RETURN_IF_ERROR(Check(FsOp::kOpenCreate, path));
  } else {
    SNAPBACK_RETURN_IF_ERROR(CheckCrashed());
  }
  SNAPBACK_ASSIGN_OR_RETURN(std::unique_ptr<File> file, base_->Open(path, options));
  if (options.create && !existed) {
    absl::MutexLock lock(&mu_);
    files_[path] = FileState{.synced_size = 0, .dir_synced = false};
  } else if (options.write) {
    // A file from before this object existed: what is on disk now counts as
    // durable.
    SNAPBACK_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    absl::MutexLock lock(&mu_);
    files_.try_emplace(path, FileState{.synced_size = size, .dir_synced = true});
  }
  return std::unique_ptr<File>(new FaultFile(this, std::move(file)));
}

absl::Status FaultInjectionFileSystem::CreateDirs(const std::string& path) {
  SNAPBACK_RETURN_IF_ERROR(CheckCrashed());
  return base_->CreateDirs(path);
}

absl::Status FaultInjectionFileSystem::SyncDir(const std::string& path) {
  SNAPBACK_RETURN_IF_ERROR(Check(FsOp::kSyncDir, path));
  SNAPBACK_RETURN_IF_ERROR(base_->SyncDir(path));
  absl::MutexLock lock(&mu_);
  for (auto& [name, state] : files_) {
    if (DirOf(name) == path) state.dir_synced = true;
  }
  return absl::OkStatus();
}

absl::Status FaultInjectionFileSystem::Remove(const std::string& path) {
  SNAPBACK_RETURN_IF_ERROR(CheckCrashed());
  SNAPBACK_RETURN_IF_ERROR(base_->Remove(path));
  // A removal is not durable before SyncDir either, but resurrecting a
  // removed segment is harmless here: its records are not indexed.
  absl::MutexLock lock(&mu_);
  files_.erase(path);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> FaultInjectionFileSystem::ListDir(
    const std::string& path) {
  SNAPBACK_RETURN_IF_ERROR(CheckCrashed());
  return base_->ListDir(path);
}

bool FaultInjectionFileSystem::Exists(const std::string& path) {
  return base_->Exists(path);
}

absl::StatusOr<VolumeSpace> FaultInjectionFileSystem::Space(const std::string& path) {
  SNAPBACK_RETURN_IF_ERROR(CheckCrashed());
  return base_->Space(path);
}

absl::Status FaultInjectionFileSystem::CrashPoint(absl::string_view name) {
  absl::MutexLock lock(&mu_);
  if (crashed_) return absl::UnavailableError("simulated crash: the process is gone");
  ++point_hits_[std::string(name)];
  if (!crash_point_.empty() && crash_point_ == name && --crash_countdown_ == 0) {
    crashed_ = true;
    crash_point_.clear();
    return absl::UnavailableError(absl::StrCat("simulated crash at ", name));
  }
  return absl::OkStatus();
}

void FaultInjectionFileSystem::CrashAt(std::string name, int nth) {
  absl::MutexLock lock(&mu_);
  crash_point_ = std::move(name);
  crash_countdown_ = nth;
}

void FaultInjectionFileSystem::Crash() {
  absl::MutexLock lock(&mu_);
  crashed_ = true;
}

bool FaultInjectionFileSystem::crashed() {
  absl::MutexLock lock(&mu_);
  return crashed_;
}

void FaultInjectionFileSystem::FailAt(FsOp op, int nth, int err) {
  absl::MutexLock lock(&mu_);
  fail_at_[op] = {op_counts_[op] + nth, err};
}

std::set<std::string> FaultInjectionFileSystem::SeenCrashPoints() {
  absl::MutexLock lock(&mu_);
  std::set<std::string> names;
  for (const auto& [name, hits] : point_hits_) names.insert(name);
  return names;
}

int FaultInjectionFileSystem::Count(FsOp op) {
  absl::MutexLock lock(&mu_);
  return op_counts_[op];
}

absl::Status FaultInjectionFileSystem::DropUnsyncedData(bool torn_tail,
                                                        std::mt19937_64* rng) {
  absl::MutexLock lock(&mu_);
  for (auto it = files_.begin(); it != files_.end();) {
    const std::string& path = it->first;
    const FileState& state = it->second;
    if (!base_->Exists(path)) {
      it = files_.erase(it);
      continue;
    }
    if (!state.dir_synced) {
      SNAPBACK_RETURN_IF_ERROR(base_->Remove(path));
      it = files_.erase(it);
      continue;
    }
    SNAPBACK_ASSIGN_OR_RETURN(auto file, base_->Open(path, {.write = true}));
    SNAPBACK_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    uint64_t keep = state.synced_size;
    if (torn_tail && size > keep) keep += (*rng)() % (size - keep + 1);
    if (keep < size) SNAPBACK_RETURN_IF_ERROR(file->Truncate(keep));
    it->second.synced_size = keep;
    ++it;
  }
  crashed_ = false;
  crash_point_.clear();
  fail_at_.clear();
  return absl::OkStatus();
}

}  // namespace snapback::storage
