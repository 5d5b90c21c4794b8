// ChunkStore compaction: the background thread, the choice of sealed
// segments with too little live data, the paced copy of their live records
// through the writer queue (chunk_store_write.cc), and the unlink of a
// segment once nothing points at it.
#include <rocksdb/db.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/rocksdb_util.h"
#include "common/status_macros.h"
#include "storage/chunk_store.h"
#include "storage/chunk_store_internal.h"
#include "storage/record.h"

namespace snapback::storage {
namespace {

using internal::FromRocks;
using internal::SegmentName;
using internal_rocksdb::View;

}  // namespace

absl::StatusOr<int> ChunkStore::Impl::CompactNow() {
  absl::MutexLock compaction_lock(&compaction_mu_);
  const bool full = Stats().full;
  // Pick segments with too little live data, emptiest first: a dead one is
  // unlinked without copying anything, which is all a full volume may allow.
  std::vector<std::pair<uint64_t, uint64_t>> candidates;  // (live bytes, id)
  {
    absl::MutexLock lock(&mu_);
    if (active_segment_ != 0 && active_segment_ != writing_segment_) {
      // The active segment takes no part otherwise. Seal it when it is dead
      // (everything in it deleted), or thin while the node is full: no new
      // chunk will land in it then anyway.
      Segment& seg = segments_[active_segment_];
      if (seg.size > 0 &&
          (seg.live_bytes == 0 || (full && static_cast<double>(seg.live_bytes) <
                                               options_.compaction_live_fraction *
                                                   static_cast<double>(seg.size)))) {
        seg.sealed = true;
        active_segment_ = 0;
      }
    }
    for (const auto& [id, seg] : segments_) {
      if (id == active_segment_ || !seg.sealed) continue;
      if (seg.size == 0 ||
          static_cast<double>(seg.live_bytes) <
              options_.compaction_live_fraction * static_cast<double>(seg.size)) {
        candidates.push_back({seg.live_bytes, id});
      }
    }
  }
  if (candidates.empty()) {
    MaintainReserve();
    return 0;
  }
  std::sort(candidates.begin(), candidates.end());
  int compacted = 0;
  // Dead segments first, with no index scan.
  size_t first_live = 0;
  for (; first_live < candidates.size() && candidates[first_live].first == 0;
       ++first_live) {
    SNAPBACK_ASSIGN_OR_RETURN(bool unlinked, UnlinkIfDead(candidates[first_live].second));
    if (unlinked) ++compacted;
  }
  if (first_live == candidates.size() || absl::Now() < copy_backoff_until_) {
    MaintainReserve();
    return compacted;  // nothing to copy, or out of space lately
  }
  // The index says exactly which records are live; collect them per segment.
  absl::flat_hash_map<uint64_t, std::vector<IndexEntry>> live;
  for (size_t i = first_live; i < candidates.size(); ++i) live[candidates[i].second];
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek("c"); it->Valid() && it->key().starts_with("c"); it->Next()) {
      SNAPBACK_ASSIGN_OR_RETURN(IndexEntry e, IndexEntry::Decode(View(it->value())));
      auto found = live.find(e.segment);
      if (found != live.end()) found->second.push_back(e);
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  }
  for (size_t i = first_live; i < candidates.size(); ++i) {
    const uint64_t id = candidates[i].second;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
    }
    uint64_t copy = 0;
    for (const IndexEntry& e : live[id])
      copy += AlignUp(e.record_size(), kRecordAlignment);
    absl::Status s = RoomToCopy(AlignUp(copy))
                         ? CompactSegment(id, std::move(live[id]))
                         : absl::ResourceExhaustedError(
                               absl::StrCat("no room on the volume to copy the ", copy,
                                            " live bytes of segment ", SegmentName(id)));
    if (absl::IsResourceExhausted(s)) {
      // Out of space: do not spin. Copying waits, doubling from the
      // compaction interval up to a minute; dead segments are still unlinked
      // (deletes kick a pass), which is what gives space back first.
      copy_backoff_ =
          std::clamp(copy_backoff_ * 2, options_.compaction_interval,
                     std::max(options_.compaction_interval, absl::Minutes(1)));
      copy_backoff_until_ = absl::Now() + copy_backoff_;
      SNAPBACK_LOG(Warning, "compaction of %s paused for %s: %s", dir_,
                   absl::FormatDuration(copy_backoff_), s.ToString());
      MaintainReserve();
      return compacted;
    }
    if (!s.ok() && !absl::IsDataLoss(s)) return s;  // I/O trouble: stop the pass
    // One segment that cannot be compacted (e.g. a record failing its
    // checksum: scrub reports it) must not stop space coming back elsewhere.
    if (!s.ok()) {
      SNAPBACK_LOG(Warning, "compaction of segment %s in %s skipped: %s", SegmentName(id),
                   dir_, s.ToString());
      continue;
    }
    ++compacted;
  }
  copy_backoff_ = absl::ZeroDuration();
  MaintainReserve();  // space may be back
  return compacted;
}

absl::StatusOr<bool> ChunkStore::Impl::UnlinkIfDead(uint64_t id) {
  std::string path;
  {
    absl::MutexLock lock(&mu_);
    auto it = segments_.find(id);
    if (it == segments_.end() || !it->second.sealed || it->second.live_bytes != 0 ||
        id == writing_segment_) {
      return false;
    }
    stats_.file_bytes -= it->second.size;
    segments_.erase(it);
    ++stats_.compactions;
    path = segments_dir_ + "/" + SegmentName(id);
  }
  // Readers hold the file open through shared_ptr; the unlink frees the
  // blocks once the last of them is done.
  SNAPBACK_RETURN_IF_ERROR(fs_->Remove(path));
  SNAPBACK_RETURN_IF_ERROR(fs_->CrashPoint("compact.after_unlink"));
  SNAPBACK_RETURN_IF_ERROR(fs_->SyncDir(segments_dir_));
  return true;
}

absl::Status ChunkStore::Impl::CompactSegment(uint64_t id, std::vector<IndexEntry> live) {
  std::sort(live.begin(), live.end(),
            [](const IndexEntry& a, const IndexEntry& b) { return a.offset < b.offset; });
  // Copy live records in batches of ~8 MiB through the writer queue, paced
  // to compaction_bytes_per_sec, so Put() callers interleave with us.
  constexpr uint64_t kBatchBytes = 8 << 20;
  const absl::Time start = absl::Now();
  uint64_t copied = 0;
  size_t i = 0;
  while (i < live.size()) {
    std::vector<EncodedChunk> chunks;
    std::vector<const IndexEntry*> sources;
    uint64_t bytes = 0;
    for (; i < live.size() && (chunks.empty() || bytes < kBatchBytes); ++i) {
      SNAPBACK_ASSIGN_OR_RETURN(EncodedChunk chunk, ReadRecord(live[i]));
      bytes += live[i].record_size();
      chunks.push_back(std::move(chunk));
      sources.push_back(&live[i]);
    }
    std::vector<Prepared::Record> records;
    for (size_t k = 0; k < chunks.size(); ++k) {
      records.push_back(
          {.chunk = &chunks[k], .offset = 0, .checksum = 0, .from = sources[k]});
    }
    Prepared prepared = Prepare(std::move(records));
    Writer w{.kind = Writer::Kind::kRelocate, .prepared = &prepared};
    absl::Status written = Write(&w);
    Recycle(&prepared);
    SNAPBACK_RETURN_IF_ERROR(written);
    copied += bytes;
    if (options_.compaction_bytes_per_sec > 0) {
      absl::Time due = start + absl::Seconds(static_cast<double>(copied) /
                                             options_.compaction_bytes_per_sec);
      absl::MutexLock lock(&mu_);
      // Pacing, not synchronisation: wakes early only to stop.
      mu_.AwaitWithDeadline(absl::Condition(&stopping_), due);
      if (stopping_) return absl::CancelledError("store is closing");
    }
  }
  SNAPBACK_RETURN_IF_ERROR(fs_->CrashPoint("compact.after_switch"));
  std::string path;
  {
    absl::MutexLock lock(&mu_);
    auto it = segments_.find(id);
    if (it == segments_.end()) return absl::OkStatus();
    if (it->second.live_bytes != 0) {
      // Something still points here (a record we could not read): keep it.
      return absl::DataLossError(absl::StrCat(
          "segment ", SegmentName(id), " still has live records after compaction"));
    }
    stats_.file_bytes -= it->second.size;
    segments_.erase(it);
    ++stats_.compactions;
    path = segments_dir_ + "/" + SegmentName(id);
  }
  SNAPBACK_RETURN_IF_ERROR(fs_->Remove(path));
  SNAPBACK_RETURN_IF_ERROR(fs_->CrashPoint("compact.after_unlink"));
  return fs_->SyncDir(segments_dir_);
}

void ChunkStore::Impl::CompactionLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || compaction_kick_;
      };
      mu_.AwaitWithTimeout(absl::Condition(&wake), options_.compaction_interval);
      if (stopping_) return;
      compaction_kick_ = false;
    }
    auto n = CompactNow();
    if (!n.ok() && !absl::IsCancelled(n.status())) {
      SNAPBACK_LOG(Warning, "compaction of %s failed: %s", dir_, n.status().ToString());
    }
    // Release the reserve if something filled the volume, or make it again
    // once compaction gave space back (CompactNow() does when it runs).
    MaintainReserve();
  }
}

}  // namespace snapback::storage
