// ChunkStore: opening the store (index options, recovery of the segment
// table from the index, the I/O-mode probe), stats, the consistency check,
// and the public methods, which forward to ChunkStore::Impl. Writes are in
// chunk_store_write.cc, reads and scrub in chunk_store_read.cc, compaction in
// chunk_store_compaction.cc (see storage/chunk_store_internal.h).
#include "storage/chunk_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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

  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.paranoid_checks = true;
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
  if (options_.background_compaction) {
    compaction_thread_ = std::thread([this] { CompactionLoop(); });
  }
  return absl::OkStatus();
}

// Rebuilds the in-memory segment table from the index (the truth), trims
// every segment to its last indexed record and removes unreferenced ones.
absl::Status ChunkStore::Impl::Recover() {
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> referenced;  // id -> (live, end)
  ChunkStoreStats stats;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek("c"); it->Valid() && it->key().starts_with("c"); it->Next()) {
      SNAPBACK_ASSIGN_OR_RETURN(IndexEntry e, IndexEntry::Decode(View(it->value())));
      auto& [live, end] = referenced[e.segment];
      live += e.record_size();
      end = std::max(end, e.offset + e.record_size());
      ++stats.chunks;
      stats.raw_bytes += e.raw_length;
      stats.encoded_bytes += e.encoded_length;
      stats.live_bytes += e.record_size();
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  }

  SNAPBACK_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_->ListDir(segments_dir_));
  std::map<uint64_t, Segment> segments;
  uint64_t max_id = 0;
  bool removed_any = false;
  for (const std::string& name : names) {
    uint64_t id;
    if (!ParseSegmentName(name, &id)) continue;
    max_id = std::max(max_id, id);
    std::string path = segments_dir_ + "/" + name;
    auto ref = referenced.find(id);
    if (ref == referenced.end()) {
      // Nothing indexed points here: written before a crash and never
      // acknowledged, or already compacted away.
      SNAPBACK_RETURN_IF_ERROR(fs_->Remove(path));
      removed_any = true;
      continue;
    }
    SNAPBACK_ASSIGN_OR_RETURN(
        auto file, fs_->Open(path, {.write = true, .direct_io = options_.direct_io}));
    SNAPBACK_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    uint64_t keep = AlignUp(ref->second.second);
    if (size < ref->second.second) {
      return absl::DataLossError(
          absl::StrCat("segment ", path, " is ", size,
                       " bytes but the index points up to byte ", ref->second.second,
                       "; acknowledged chunks were lost: restore this node's data dir "
                       "from a replica"));
    }
    if (size > keep) {
      // Bytes past the last indexed record were never acknowledged.
      SNAPBACK_RETURN_IF_ERROR(file->Truncate(keep));
      SNAPBACK_RETURN_IF_ERROR(file->Sync());
      size = keep;
    }
    Segment seg;
    seg.file = std::move(file);
    seg.size = size;
    seg.live_bytes = ref->second.first;
    seg.sealed = true;  // appends always go to a fresh segment after a restart
    segments.emplace(id, std::move(seg));
    stats.file_bytes += size;
  }
  for (const auto& [id, ref] : referenced) {
    if (!segments.contains(id)) {
      return absl::DataLossError(absl::StrCat(
          "the index points at segment ", SegmentName(id), " which is missing from ",
          segments_dir_, "; restore this node's data dir from a replica"));
    }
  }
  if (removed_any) SNAPBACK_RETURN_IF_ERROR(fs_->SyncDir(segments_dir_));

  absl::MutexLock lock(&mu_);
  segments_ = std::move(segments);
  next_segment_id_ = max_id + 1;
  stats.segments = segments_.size();
  stats_ = stats;
  return absl::OkStatus();
}

ChunkStoreStats ChunkStore::Impl::Stats() {
  absl::MutexLock lock(&mu_);
  ChunkStoreStats s = stats_;
  s.segments = segments_.size();
  return s;
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

absl::StatusOr<int> ChunkStore::Delete(absl::Span<const ChunkId> ids) {
  return impl_->Delete(ids);
}

ChunkStoreStats ChunkStore::Stats() { return impl_->Stats(); }

absl::StatusOr<int> ChunkStore::CompactNow() { return impl_->CompactNow(); }

ScrubResult ChunkStore::Scrub(const ScrubProgress& progress) {
  return impl_->Scrub(progress);
}

absl::Status ChunkStore::TEST_CheckConsistency() { return impl_->CheckConsistency(); }

const std::string& ChunkStore::dir() const { return impl_->dir(); }

}  // namespace snapback::storage
