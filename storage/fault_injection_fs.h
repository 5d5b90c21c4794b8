// FaultInjectionFileSystem: a FileSystem wrapper for crash and error tests
// (after LevelDB's FaultInjectionTestEnv and RocksDB's FaultInjectionTestFS).
//
// It remembers, per file, how many bytes were durable at the last successful
// Sync(), and which created files have not had their directory synced. A
// simulated crash (a named crash point, or Crash()) makes every later call
// fail; DropUnsyncedData() then does what a power cut would: truncates each
// file to its synced size (or keeps a torn prefix of the unsynced tail) and
// removes files whose creation was never made durable. Errors (EIO, ENOSPC)
// can be injected at the Nth call of a chosen kind.
//
// Thread-safe. For tests only.
#ifndef SNAPBACK_STORAGE_FAULT_INJECTION_FS_H_
#define SNAPBACK_STORAGE_FAULT_INJECTION_FS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "storage/file_system.h"

namespace snapback::storage {

enum class FsOp { kWrite, kSync, kSyncDir, kOpenCreate, kTruncate };

class FaultInjectionFileSystem : public FileSystem {
 public:
  explicit FaultInjectionFileSystem(std::shared_ptr<FileSystem> base);

  // --- FileSystem ---
  absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                             const OpenOptions& options) override;
  absl::Status CreateDirs(const std::string& path) override;
  absl::Status SyncDir(const std::string& path) override;
  absl::Status Remove(const std::string& path) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override;
  bool Exists(const std::string& path) override;
  absl::StatusOr<VolumeSpace> Space(const std::string& path) override;
  absl::Status CrashPoint(absl::string_view name) override;
  std::string IoMode() const override { return base_->IoMode(); }

  // --- test controls ---
  // Crash when CrashPoint(name) is reached for the `nth` time (1-based).
  void CrashAt(std::string name, int nth = 1);
  // Crash now: every later call fails with UNAVAILABLE.
  void Crash();
  bool crashed();
  // Fails the `nth` (1-based, counted from now) call of kind `op` with `err`
  // (e.g. EIO, ENOSPC). A failed Sync() leaves the unsynced data undefined,
  // as on Linux: the injected failure also drops it.
  void FailAt(FsOp op, int nth, int err);
  // Simulates power loss: for every file written through this object, keep
  // only what was synced; with torn_tail, keep a random prefix of the
  // unsynced bytes too (a torn write). Files whose directory entry was never
  // synced vanish. Clears the crashed state so the store can be reopened.
  absl::Status DropUnsyncedData(bool torn_tail, std::mt19937_64* rng);
  // Names of crash points seen so far (for tests that enumerate them).
  std::set<std::string> SeenCrashPoints();
  // Number of calls of `op` so far.
  int Count(FsOp op);

 private:
  friend class FaultFile;
  struct FileState {
    uint64_t synced_size = 0;
    bool dir_synced = true;  // false from creation until SyncDir of its dir
  };
  absl::Status Check(FsOp op, const std::string& path);
  absl::Status CheckCrashed();
  void OnWrite(const std::string& path);
  void OnSynced(const std::string& path, uint64_t size);
  void LoseUnsynced(File* file);

  std::shared_ptr<FileSystem> base_;
  absl::Mutex mu_;
  bool crashed_ ABSL_GUARDED_BY(mu_) = false;
  std::string crash_point_ ABSL_GUARDED_BY(mu_);
  int crash_countdown_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> point_hits_ ABSL_GUARDED_BY(mu_);
  std::map<FsOp, int> op_counts_ ABSL_GUARDED_BY(mu_);
  std::map<FsOp, std::pair<int, int>> fail_at_
      ABSL_GUARDED_BY(mu_);  // op -> (call, errno)
  std::map<std::string, FileState> files_ ABSL_GUARDED_BY(mu_);
};

}  // namespace snapback::storage

#endif  // SNAPBACK_STORAGE_FAULT_INJECTION_FS_H_
