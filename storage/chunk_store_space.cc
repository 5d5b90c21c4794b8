// ChunkStore and the volume it lives on: the high watermark that refuses
// Put() before the file system is full, the reserve file that keeps room for
// deletes, compaction and the RocksDB writes of the data dir when the volume
// fills anyway, and the room compaction may use.
//
// Space is read with statvfs on every check (a microsecond): the volume is
// shared with the coordinator's metadata and anything else on it, so only
// the file system knows what is left.
#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "storage/chunk_store.h"
#include "storage/chunk_store_internal.h"
#include "storage/file_system.h"
#include "storage/record.h"

namespace snapback::storage {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Compaction leaves at least this much free for the two RocksDB databases
// of the data dir (4 MiB memtables, so a flush writes at most that much per
// database, plus their WALs) beyond what it copies.
constexpr uint64_t kDatabaseHeadroom = 16 * kMiB;

std::string MiB(uint64_t bytes) {
  return absl::StrCat(bytes / kMiB, ".", (bytes % kMiB) * 10 / kMiB, " MiB");
}

}  // namespace

absl::StatusOr<VolumeSpace> ChunkStore::Impl::Space() { return fs_->Space(dir_); }

void ChunkStore::Impl::MaintainReserve(ReserveAction action) {
  const uint64_t want = options_.reserve_bytes;
  if (action != ReserveAction::kAdjust && reserve_held_.load() == 0) return;
  absl::MutexLock lock(&reserve_mu_);
  const uint64_t held = reserve_held_.load();
  if (want == 0) {
    if (held > 0 || fs_->Exists(reserve_path_)) {
      // Disabled since the last run: give the space back.
      if (fs_->Remove(reserve_path_).ok()) reserve_held_ = 0;
    }
    return;
  }
  absl::StatusOr<VolumeSpace> space = Space();
  if (!space.ok()) {
    SNAPBACK_LOG(Warning, "cannot read the free space of %s: %s", dir_,
                 space.status().ToString());
    return;
  }
  if (held > 0 && (action == ReserveAction::kRelease || space->free_bytes < want)) {
    absl::Status removed = fs_->Remove(reserve_path_);
    if (!removed.ok() && !absl::IsNotFound(removed)) {
      SNAPBACK_LOG(Error, "cannot release the space reserve %s: %s", reserve_path_,
                   removed.ToString());
      return;
    }
    reserve_held_ = 0;
    SNAPBACK_LOG(Warning,
                 "the volume of %s is almost full (%s free): released the %s space "
                 "reserve so deletes, compaction and metadata writes can go on; delete "
                 "checkpoints or add space",
                 dir_, MiB(space->free_bytes), MiB(want));
    return;
  }
  if (action == ReserveAction::kAdjust && held == 0 &&
      space->free_bytes >= 2 * want + options_.min_free_bytes) {
    // Stale (a different size, or cut short by a crash) or absent: make it
    // anew.
    if (fs_->Exists(reserve_path_)) (void)fs_->Remove(reserve_path_);
    absl::Status made = [&]() -> absl::Status {
      SNAPBACK_ASSIGN_OR_RETURN(
          std::unique_ptr<File> file,
          fs_->Open(reserve_path_, {.write = true, .create = true}));
      return file->Allocate(0, want);
    }();
    if (!made.ok()) {
      (void)fs_->Remove(reserve_path_);
      SNAPBACK_LOG(Warning, "cannot create the space reserve %s: %s", reserve_path_,
                   made.ToString());
      return;
    }
    // Not synced: after a crash it is simply made again.
    reserve_held_ = want;
  }
}

absl::Status ChunkStore::Impl::AdmitPut(uint64_t bytes) {
  absl::StatusOr<VolumeSpace> space = Space();
  if (!space.ok()) return space.status();
  // A released reserve still counts as used: it is for deletes and
  // compaction, not for more chunks.
  const uint64_t owed = options_.reserve_bytes - reserve_held_.load();
  const uint64_t floor = owed + options_.min_free_bytes;
  absl::MutexLock lock(&mu_);
  const uint64_t need = floor + pending_put_bytes_ + bytes;
  if (space->free_bytes < need) {
    const uint64_t free = space->free_bytes > owed ? space->free_bytes - owed : 0;
    return absl::ResourceExhaustedError(absl::StrCat(
        "storage node ", dir_, " is full: ", MiB(free), " free on its volume, and ",
        MiB(bytes), " more would go below the ", MiB(options_.min_free_bytes),
        " watermark (--min-free-mb); delete checkpoints (retention, CollectGarbage) or "
        "add space to the volume, then retry; other nodes may take the chunks"));
  }
  pending_put_bytes_ += bytes;
  return absl::OkStatus();
}

bool ChunkStore::Impl::Full(const VolumeSpace& space) {
  constexpr uint64_t kClientChunk = 4 * kMiB + kRecordHeaderSize;
  const uint64_t owed = options_.reserve_bytes - reserve_held_.load();
  absl::MutexLock lock(&mu_);
  return space.free_bytes <
         owed + options_.min_free_bytes + pending_put_bytes_ + AlignUp(kClientChunk);
}

void ChunkStore::Impl::FinishPut(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  pending_put_bytes_ -= bytes;
}

bool ChunkStore::Impl::RoomToCopy(uint64_t bytes) {
  absl::StatusOr<VolumeSpace> space = Space();
  if (!space.ok()) return false;
  const uint64_t headroom = options_.reserve_bytes > 0
                                ? std::min(kDatabaseHeadroom, options_.reserve_bytes / 2)
                                : kDatabaseHeadroom;
  if (space->free_bytes >= bytes + headroom) return true;
  // Compaction gives back more than it copies (its segments are mostly
  // dead): it is what the reserve is for. Put() still counts the reserve as
  // used, and it is made again once space is back.
  if (space->free_bytes + reserve_held_.load() >= bytes + headroom) {
    MaintainReserve(ReserveAction::kRelease);
    return reserve_held_.load() == 0;
  }
  return false;
}

}  // namespace snapback::storage
