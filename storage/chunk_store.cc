// ChunkStore: opening the store (index options, recovery of the segment
// table from the index, the I/O-mode probe), stats, the consistency check,
// and the public methods, which forward to ChunkStore::Impl. Writes are in
// chunk_store_write.cc, reads and scrub in chunk_store_read.cc, compaction in
// chunk_store_compaction.cc (see storage/chunk_store_internal.h).
#include "storage/chunk_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/rocksdb_util.h"
#include "common/status_macros.h"
#include "storage/chunk_store_internal.h"
#include "storage/record.h"

namespace snapback::storage {
namespace internal {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  static constexpr internal_rocksdb::DbLabel kIndex = {
      "index", "the chunk index is corrupt: restore this node's data dir from a replica"};
  return internal_rocksdb::FromRocks(s, what, kIndex);
}

std::string SegmentName(uint64_t id) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016" PRIu64 ".seg", id);
  return buf;
}

}  // namespace internal
namespace {

using internal::FromRocks;
using internal::SegmentName;
using internal_rocksdb::View;

bool ParseSegmentName(const std::string& name, uint64_t* id) {
  if (name.size() != 20 || name.substr(16) != ".seg") return false;
  return absl::SimpleAtoi(name.substr(0, 16), id);
}

}  // namespace

ChunkStore::Impl::~Impl() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (compaction_thread_.joinable()) compaction_thread_.join();
  if (db_) (void)db_->Close();
}

absl::Status ChunkStore::Impl::Open() {
  fs_ = options_.fs ? options_.fs : DefaultFileSystem();
  SNAPBACK_RETURN_IF_ERROR(fs_->CreateDirs(segments_dir_));
  SNAPBACK_RETURN_IF_ERROR(fs_->CreateDirs(dir_ + "/index"));
  // On a full volume RocksDB cannot even open (a new MANIFEST, WAL and
  // OPTIONS file): release the reserve first.
  if (fs_->Exists(reserve_path_)) {
    auto file = fs_->Open(reserve_path_, {});
    if (file.ok()) {
      auto size = (*file)->Size();
      if (size.ok() && *size == options_.reserve_bytes) reserve_held_ = *size;
    }
  }
  MaintainReserve();

  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.paranoid_checks = true;
  // Small WAL/MANIFEST preallocation (an idle node's footprint), and the
  // info log through SNAPBACK_LOG instead of a LOG file that can fill up.
  internal_rocksdb::ApplyCommonOptions(&db_options, "index");
  // The default (kPointInTimeRecovery) stops replaying the WAL at the first
  // corrupt record and silently drops every entry after it: acknowledged
  // chunks would vanish. kTolerateCorruptedTailRecords does the same with a
  // record damaged mid-log (RocksDB cannot tell it from a torn tail; see
  // chunk_store_crash_test), so by default the index opens with
  // kAbsoluteConsistency, which refuses any WAL damage and leaves the call to
  // an operator. A SIGKILL cannot tear a synced WAL append (one write() into
  // the page cache); only a power cut can, and then the operator may choose
  // kDropTornTail for that one restart.
  db_options.wal_recovery_mode =
      options_.index_recovery == IndexRecovery::kDropTornTail
          ? rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords
          : rocksdb::WALRecoveryMode::kAbsoluteConsistency;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir_ + "/index", &db);
  if (!s.ok()) {
    if (s.IsCorruption()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "chunk index in ", dir_, "/index is corrupt (", s.ToString(),
          "); refusing to open rather than drop acknowledged chunks. Restore the data "
          "dir "
          "from a replica; only if this node lost power, restart once with "
          "--index-recovery=drop-torn-tail to drop an incomplete last WAL record"));
    }
    return FromRocks(s, "open");
  }
  db_.reset(db);
  SNAPBACK_RETURN_IF_ERROR(Recover());
  // Find out once whether this file system takes O_DIRECT, so Stats() can
  // say how segments are written before the first one exists.
  std::string io_mode = fs_->IoMode();
  if (options_.direct_io) {
    const std::string probe = segments_dir_ + "/.direct-io-probe";
    {
      auto file = fs_->Open(probe, {.write = true, .create = true, .direct_io = true});
      if (file.ok() && (*file)->direct_io()) io_mode += "+O_DIRECT";
    }
    if (fs_->Exists(probe)) SNAPBACK_RETURN_IF_ERROR(fs_->Remove(probe));
  }
  {
    absl::MutexLock lock(&mu_);
    stats_.io_mode = io_mode;
  }
  MaintainReserve();
  if (options_.background_compaction) {
    compaction_thread_ = std::thread([this] { CompactionLoop(); });
  }
  return absl::OkStatus();
}

// Rebuilds the in-memory segment table from the index (the truth), trims
// every segment to its last indexed record and removes unreferenced ones.
// Chunks whose segment is missing, unreadable or shorter than their record
// are quarantined (dropped from the index, remembered as lost) in one synced
// batch before any file is touched: the node starts and serves the rest.
absl::Status ChunkStore::Impl::Recover() {
  struct Entry {
    ChunkId id;
    IndexEntry e;
  };
  std::map<uint64_t, std::vector<Entry>> by_segment;
  absl::flat_hash_set<ChunkId> lost;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek("c"); it->Valid() && it->key().starts_with("c"); it->Next()) {
      SNAPBACK_ASSIGN_OR_RETURN(ChunkId id, ChunkIdFromKey(View(it->key())));
      SNAPBACK_ASSIGN_OR_RETURN(IndexEntry e, IndexEntry::Decode(View(it->value())));
      by_segment[e.segment].push_back({id, e});
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    for (it->Seek("l"); it->Valid() && it->key().starts_with("l"); it->Next()) {
      SNAPBACK_ASSIGN_OR_RETURN(ChunkId id, ChunkIdFromLostKey(View(it->key())));
      lost.insert(id);
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  }

  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  rocksdb::WriteBatch quarantine;
  uint64_t newly_lost = 0;
  auto lose = [&](const Entry& x, const std::string& reason) {
    quarantine.Delete(ChunkKey(x.id));
    quarantine.Put(LostKey(x.id), EncodeLostValue(now_ms, reason));
    lost.insert(x.id);
    ++newly_lost;
  };

  SNAPBACK_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_->ListDir(segments_dir_));
  std::map<uint64_t, Segment> segments;
  std::vector<std::string> unreferenced;
  std::vector<std::pair<Segment*, uint64_t>> resize;  // segment, size to set
  ChunkStoreStats stats;
  uint64_t max_id = 0;
  for (const std::string& name : names) {
    uint64_t id;
    if (!ParseSegmentName(name, &id)) continue;
    max_id = std::max(max_id, id);
    std::string path = segments_dir_ + "/" + name;
    auto ref = by_segment.find(id);
    if (ref == by_segment.end()) {
      // Nothing indexed points here: written before a crash and never
      // acknowledged, or already compacted away.
      unreferenced.push_back(path);
      continue;
    }
    std::vector<Entry> entries = std::move(ref->second);
    by_segment.erase(ref);
    auto file = fs_->Open(path, {.write = true, .direct_io = options_.direct_io});
    absl::StatusOr<uint64_t> size =
        file.ok() ? (*file)->Size() : absl::StatusOr<uint64_t>(file.status());
    if (!size.ok()) {
      SNAPBACK_LOG(Error, "segment %s cannot be read (%s): its %d chunks are lost", path,
                   size.status().ToString(), entries.size());
      for (const Entry& x : entries) {
        lose(x, absl::StrCat("segment unreadable: ", size.status().message()));
      }
      continue;  // unindexed now: removed at the next start
    }
    Segment seg;
    uint64_t end = 0;
    int truncated = 0;
    for (const Entry& x : entries) {
      if (x.e.offset + x.e.record_size() > *size) {
        lose(x, absl::StrCat("segment ", name, " is ", *size,
                             " bytes, the record ends at byte ",
                             x.e.offset + x.e.record_size()));
        ++truncated;
        continue;
      }
      seg.live_bytes += x.e.record_size();
      end = std::max(end, x.e.offset + x.e.record_size());
      ++stats.chunks;
      stats.raw_bytes += x.e.raw_length;
      stats.encoded_bytes += x.e.encoded_length;
      stats.live_bytes += x.e.record_size();
    }
    if (truncated > 0) {
      SNAPBACK_LOG(Error,
                   "segment %s is %d bytes, shorter than the index says: %d chunks lost",
                   path, *size, truncated);
    }
    if (seg.live_bytes == 0) {
      unreferenced.push_back(path);
      continue;
    }
    seg.file = *std::move(file);
    seg.size = *size;
    seg.sealed = true;  // appends always go to a fresh segment after a restart
    auto [it, inserted] = segments.emplace(id, std::move(seg));
    // Bytes past the last indexed record were never acknowledged: trim
    // them. A segment cut short mid-record is padded back to a 4 KiB
    // boundary, so aligned reads of the records before the cut stay inside.
    if (it->second.size != AlignUp(end)) resize.push_back({&it->second, AlignUp(end)});
  }
  for (const auto& [id, entries] : by_segment) {
    SNAPBACK_LOG(Error, "segment %s is missing from %s: its %d chunks are lost",
                 SegmentName(id), segments_dir_, entries.size());
    for (const Entry& x : entries) {
      lose(x, absl::StrCat("segment ", SegmentName(id), " is missing"));
    }
  }
  // The index first: once the lost entries are gone, removing or trimming
  // their files is safe at any point.
  if (newly_lost > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    SNAPBACK_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &quarantine), "write"));
    SNAPBACK_LOG(Error,
                 "%d chunks in %s were unreadable and are quarantined (dropped from the "
                 "index, listed as lost): restore them from a replica",
                 newly_lost, dir_);
  }
  for (const std::string& path : unreferenced) {
    SNAPBACK_RETURN_IF_ERROR(fs_->Remove(path));
  }
  for (auto [seg, size] : resize) {
    SNAPBACK_RETURN_IF_ERROR(seg->file->Truncate(size));
    SNAPBACK_RETURN_IF_ERROR(seg->file->Sync());
    seg->size = size;
  }
  if (!unreferenced.empty()) SNAPBACK_RETURN_IF_ERROR(fs_->SyncDir(segments_dir_));
  for (const auto& [id, seg] : segments) stats.file_bytes += seg.size;

  absl::MutexLock lock(&mu_);
  segments_ = std::move(segments);
  next_segment_id_ = max_id + 1;
  stats.segments = segments_.size();
  stats.io_mode = stats_.io_mode;
  stats_ = stats;
  lost_ = std::move(lost);
  return absl::OkStatus();
}

ChunkStoreStats ChunkStore::Impl::Stats() {
  ChunkStoreStats s;
  {
    absl::MutexLock lock(&mu_);
    s = stats_;
    s.segments = segments_.size();
    s.lost_chunks = lost_.size();
  }
  s.reserve_bytes = reserve_held_.load();
  s.min_free_bytes = options_.min_free_bytes;
  if (auto space = Space(); space.ok()) {
    s.capacity_bytes = space->capacity_bytes;
    s.free_bytes = space->free_bytes;
    s.full = Full(*space);
  }
  return s;
}

std::vector<ChunkId> ChunkStore::Impl::LostChunks() {
  std::vector<ChunkId> ids;
  {
    absl::MutexLock lock(&mu_);
    ids.assign(lost_.begin(), lost_.end());
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::Status ChunkStore::Impl::ForgetLost(absl::Span<const ChunkId> ids) {
  Writer w{.kind = Writer::Kind::kForget, .prepared = nullptr, .ids = ids};
  return Write(&w);
}

absl::Status ChunkStore::Impl::CheckConsistency() {
  absl::MutexLock compaction_lock(&compaction_mu_);
  std::map<uint64_t, uint64_t> live;
  ChunkStoreStats want;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("c"); it->Valid() && it->key().starts_with("c"); it->Next()) {
    SNAPBACK_ASSIGN_OR_RETURN(IndexEntry e, IndexEntry::Decode(View(it->value())));
    live[e.segment] += e.record_size();
    ++want.chunks;
    want.raw_bytes += e.raw_length;
    want.encoded_bytes += e.encoded_length;
    want.live_bytes += e.record_size();
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  absl::MutexLock lock(&mu_);
  auto differ = [](const char* what, uint64_t have, uint64_t should) {
    return absl::InternalError(
        absl::StrCat(what, " is ", have, " in memory but ", should, " by the index"));
  };
  if (stats_.chunks != want.chunks) return differ("chunks", stats_.chunks, want.chunks);
  if (stats_.raw_bytes != want.raw_bytes)
    return differ("raw bytes", stats_.raw_bytes, want.raw_bytes);
  if (stats_.encoded_bytes != want.encoded_bytes) {
    return differ("encoded bytes", stats_.encoded_bytes, want.encoded_bytes);
  }
  if (stats_.live_bytes != want.live_bytes) {
    return differ("live bytes", stats_.live_bytes, want.live_bytes);
  }
  for (const auto& [id, seg] : segments_) {
    const uint64_t should = live.contains(id) ? live[id] : 0;
    if (seg.live_bytes != should) {
      return differ(SegmentName(id).c_str(), seg.live_bytes, should);
    }
    live.erase(id);
  }
  if (!live.empty()) {
    return absl::InternalError(absl::StrCat("the index points at segment ",
                                            SegmentName(live.begin()->first),
                                            " which is not open"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------

ChunkStore::ChunkStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChunkStore::~ChunkStore() = default;

absl::StatusOr<std::unique_ptr<ChunkStore>> ChunkStore::Open(const std::string& dir,
                                                             ChunkStoreOptions options) {
  if (dir.empty()) {
    return absl::InvalidArgumentError("chunk store needs a data dir (--data-dir)");
  }
  auto impl = std::make_unique<Impl>(dir, std::move(options));
  SNAPBACK_RETURN_IF_ERROR(impl->Open());
  return std::unique_ptr<ChunkStore>(new ChunkStore(std::move(impl)));
}

absl::Status ChunkStore::Put(absl::Span<const EncodedChunk> chunks, PutResult* result) {
  return impl_->Put(chunks, result);
}

std::vector<absl::StatusOr<EncodedChunk>> ChunkStore::Get(absl::Span<const ChunkId> ids) {
  std::vector<absl::StatusOr<EncodedChunk>> out;
  out.reserve(ids.size());
  for (const ChunkId& id : ids) out.push_back(impl_->Get(id));
  return out;
}

absl::StatusOr<EncodedChunk> ChunkStore::GetOne(const ChunkId& id) {
  return impl_->Get(id);
}

absl::StatusOr<std::vector<bool>> ChunkStore::Has(absl::Span<const ChunkId> ids) {
  return impl_->Has(ids);
}

absl::StatusOr<bool> ChunkStore::List(absl::string_view start_after, size_t limit,
                                      std::vector<std::pair<ChunkId, uint32_t>>* out) {
  return impl_->List(start_after, limit, out);
}

absl::StatusOr<int> ChunkStore::Delete(absl::Span<const ChunkId> ids) {
  return impl_->Delete(ids);
}

ChunkStoreStats ChunkStore::Stats() { return impl_->Stats(); }

absl::StatusOr<int> ChunkStore::CompactNow() { return impl_->CompactNow(); }

ScrubResult ChunkStore::Scrub(const ScrubProgress& progress) {
  return impl_->Scrub(progress);
}

ScrubResult ChunkStore::ScrubChunks(absl::Span<const ChunkId> ids) {
  return impl_->ScrubChunks(ids);
}

std::vector<ChunkId> ChunkStore::LostChunks() { return impl_->LostChunks(); }

absl::Status ChunkStore::ForgetLost(absl::Span<const ChunkId> ids) {
  return impl_->ForgetLost(ids);
}

absl::Status ChunkStore::TEST_CheckConsistency() { return impl_->CheckConsistency(); }

const std::string& ChunkStore::dir() const { return impl_->dir(); }

}  // namespace snapback::storage
