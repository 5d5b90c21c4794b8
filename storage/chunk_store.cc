#include "storage/chunk_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/rocksdb_util.h"
#include "common/status_macros.h"
#include "storage/record.h"

namespace snapback::storage {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  static constexpr internal_rocksdb::DbLabel kIndex = {
      "index", "the chunk index is corrupt: restore this node's data dir from a replica"};
  return internal_rocksdb::FromRocks(s, what, kIndex);
}

using internal_rocksdb::View;

std::string SegmentName(uint64_t id) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016" PRIu64 ".seg", id);
  return buf;
}

bool ParseSegmentName(const std::string& name, uint64_t* id) {
  if (name.size() != 20 || name.substr(16) != ".seg") return false;
  return absl::SimpleAtoi(name.substr(0, 16), id);
}

// Where a chunk was found when its index entry was read.
struct Location {
  uint64_t segment;
  uint64_t offset;
};

}  // namespace

// ---------------------------------------------------------------------------

class ChunkStore::Impl {
 public:
  Impl(std::string dir, ChunkStoreOptions options)
      : dir_(std::move(dir)),
        segments_dir_(dir_ + "/segments"),
        options_(std::move(options)) {}
  ~Impl();

  absl::Status Open();
  absl::Status Put(absl::Span<const EncodedChunk> chunks, PutResult* result);
  absl::StatusOr<EncodedChunk> Get(const ChunkId& id);
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids);
  absl::StatusOr<int> Delete(absl::Span<const ChunkId> ids);
  ChunkStoreStats Stats();
  absl::StatusOr<int> CompactNow();
  ScrubResult Scrub(const ScrubProgress& progress);
  const std::string& dir() const { return dir_; }
  absl::Status CheckConsistency();

 private:
  struct Segment {
    std::shared_ptr<File> file;
    uint64_t size = 0;        // bytes appended (always 4 KiB aligned)
    uint64_t live_bytes = 0;  // bytes of records the index points at
    bool sealed = false;
  };

  // Records laid out by the caller's own thread before it queues, so the
  // copies and checksums of concurrent callers run in parallel and the
  // group-commit leader only issues I/O. Records are packed at 8-byte
  // alignment; the buffer is zero-padded to a 4 KiB multiple for O_DIRECT.
  struct Prepared {
    struct Record {
      const EncodedChunk* chunk;
      uint64_t offset;                   // within the buffer
      uint64_t checksum;                 // xxh64 of the encoded bytes
      const IndexEntry* from = nullptr;  // compaction: where it is now
    };
    std::unique_ptr<AlignedBuffer> buffer;
    uint64_t bytes = 0;  // padded length
    std::vector<Record> records;
  };

  // One caller's request in the group-commit queue.
  struct Writer {
    enum class Kind { kPut, kDelete, kRelocate } kind;
    Prepared* prepared = nullptr;        // kPut, kRelocate
    absl::Span<const ChunkId> ids = {};  // kDelete
    absl::Status status = absl::OkStatus();
    PutResult put_result = {};
    int deleted = 0;
    bool done = false;
  };

  // Lays out `records` (chunk pointers must outlive the returned value).
  Prepared Prepare(std::vector<Prepared::Record> records);
  void Recycle(Prepared* p);

  // The index entry of `id`, NOT_FOUND when absent.
  absl::StatusOr<IndexEntry> Lookup(const ChunkId& id);
  // Reads and checks (header + payload checksum) the record at `e`.
  absl::StatusOr<EncodedChunk> ReadRecord(const IndexEntry& e);
  std::shared_ptr<File> SegmentFile(uint64_t id);

  // Queues `w` and returns when a leader (maybe this thread) has written it.
  absl::Status Write(Writer* w);
  // Leader only: writes a group of writers with one sync and one index batch.
  absl::Status WriteGroup(const std::vector<Writer*>& group);
  // Leader only: makes sure there is an unsealed segment with room for
  // `bytes` (starting a new one when needed). Returns its id.
  absl::StatusOr<uint64_t> ActiveSegmentFor(uint64_t bytes, bool* created);
  void SealSegment(uint64_t id);

  absl::Status Recover();
  void CompactionLoop();
  absl::Status CompactSegment(uint64_t id, std::vector<IndexEntry> live);

  const std::string dir_;
  const std::string segments_dir_;
  ChunkStoreOptions options_;
  std::shared_ptr<FileSystem> fs_;
  std::unique_ptr<rocksdb::DB> db_;

  absl::Mutex queue_mu_;
  std::deque<Writer*> queue_ ABSL_GUARDED_BY(queue_mu_);

  // Reusable write buffers: a fresh 64 MiB allocation per Put would cost
  // page faults comparable to the copy itself.
  absl::Mutex pool_mu_;
  std::vector<std::unique_ptr<AlignedBuffer>> buffer_pool_ ABSL_GUARDED_BY(pool_mu_);

  absl::Mutex mu_;
  std::map<uint64_t, Segment> segments_ ABSL_GUARDED_BY(mu_);
  uint64_t active_segment_ ABSL_GUARDED_BY(mu_) = 0;  // 0 = none
  uint64_t next_segment_id_ ABSL_GUARDED_BY(mu_) = 1;
  ChunkStoreStats stats_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool compaction_kick_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex compaction_mu_;  // one compaction pass at a time
  std::thread compaction_thread_;
};

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

std::shared_ptr<File> ChunkStore::Impl::SegmentFile(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(id);
  return it == segments_.end() ? nullptr : it->second.file;
}

absl::StatusOr<IndexEntry> ChunkStore::Impl::Lookup(const ChunkId& id) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), ChunkKey(id), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("chunk ", id.ToHex(), " is not stored here"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "get"));
  return IndexEntry::Decode(value);
}

absl::StatusOr<EncodedChunk> ChunkStore::Impl::ReadRecord(const IndexEntry& e) {
  std::shared_ptr<File> file = SegmentFile(e.segment);
  if (file == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("segment ", e.segment, " is gone (compacted)"));
  }
  const uint64_t size = e.record_size();
  std::string header_bytes(kRecordHeaderSize, '\0');
  EncodedChunk chunk;
  if (file->direct_io()) {
    // One aligned read covering the record, into a per-thread buffer (a new
    // multi-MiB allocation per read would cost page faults).
    thread_local AlignedBuffer buf;
    uint64_t begin = AlignDown(e.offset);
    uint64_t end = AlignUp(e.offset + size);
    buf.Resize(end - begin);
    SNAPBACK_RETURN_IF_ERROR(file->ReadAt(begin, buf.span()));
    const char* rec = buf.data() + (e.offset - begin);
    std::memcpy(header_bytes.data(), rec, kRecordHeaderSize);
    chunk.data.assign(rec + kRecordHeaderSize, e.encoded_length);
  } else {
    chunk.data.resize(e.encoded_length);
    SNAPBACK_RETURN_IF_ERROR(file->ReadAt(e.offset, absl::MakeSpan(header_bytes)));
    SNAPBACK_RETURN_IF_ERROR(
        file->ReadAt(e.offset + kRecordHeaderSize, absl::MakeSpan(chunk.data)));
  }
  auto where = [&] {
    return absl::StrCat(" (segment ", SegmentName(e.segment), " offset ", e.offset, ")");
  };
  auto header = DecodeRecordHeader(header_bytes);
  if (!header.ok()) {
    return absl::DataLossError(absl::StrCat(header.status().message(), where()));
  }
  if (header->encoded_length != e.encoded_length || header->raw_length != e.raw_length ||
      header->codec != e.codec || header->payload_checksum != e.payload_checksum) {
    return absl::DataLossError(
        absl::StrCat("record header disagrees with the index", where()));
  }
  if (Checksum64(chunk.data) != e.payload_checksum) {
    return absl::DataLossError(absl::StrCat(
        "chunk ", header->id.ShortHex(), ": encoded bytes fail their checksum", where()));
  }
  chunk.id = header->id;
  chunk.codec = header->codec;
  chunk.element_size = header->element_size;
  chunk.raw_length = header->raw_length;
  return chunk;
}

absl::StatusOr<EncodedChunk> ChunkStore::Impl::Get(const ChunkId& id) {
  // Compaction may move the record between the index read and the file read;
  // the second lookup then finds the new location.
  for (int attempt = 0;; ++attempt) {
    SNAPBACK_ASSIGN_OR_RETURN(IndexEntry e, Lookup(id));
    auto chunk = ReadRecord(e);
    if (chunk.ok() && chunk->id != id) {
      return absl::DataLossError(absl::StrCat("record at the index location of ",
                                              id.ShortHex(), " holds chunk ",
                                              chunk->id.ShortHex()));
    }
    if (chunk.ok() || attempt >= 2 || !absl::IsUnavailable(chunk.status())) return chunk;
  }
}

absl::StatusOr<std::vector<bool>> ChunkStore::Impl::Has(absl::Span<const ChunkId> ids) {
  std::vector<bool> out;
  out.reserve(ids.size());
  std::string value;
  for (const ChunkId& id : ids) {
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), ChunkKey(id), &value);
    if (s.IsNotFound()) {
      out.push_back(false);
      continue;
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "get"));
    out.push_back(true);
  }
  return out;
}

ChunkStore::Impl::Prepared ChunkStore::Impl::Prepare(
    std::vector<Prepared::Record> records) {
  Prepared p;
  uint64_t bytes = 0;
  for (auto& r : records) {
    r.offset = bytes;
    bytes += AlignUp(kRecordHeaderSize + r.chunk->data.size(), kRecordAlignment);
  }
  p.bytes = AlignUp(bytes);
  if (records.empty()) return p;  // everything was already stored
  {
    absl::MutexLock lock(&pool_mu_);
    if (!buffer_pool_.empty()) {
      p.buffer = std::move(buffer_pool_.back());
      buffer_pool_.pop_back();
    }
  }
  if (p.buffer == nullptr) p.buffer = std::make_unique<AlignedBuffer>();
  p.buffer->Resize(p.bytes);
  char* base = p.buffer->data();
  for (auto& r : records) {
    const EncodedChunk& c = *r.chunk;
    r.checksum = Checksum64(c.data);
    EncodeRecordHeader(c, r.checksum, base + r.offset);
    std::memcpy(base + r.offset + kRecordHeaderSize, c.data.data(), c.data.size());
    uint64_t end = r.offset + kRecordHeaderSize + c.data.size();
    std::memset(base + end, 0, AlignUp(end, kRecordAlignment) - end);
  }
  std::memset(base + bytes, 0, p.bytes - bytes);
  p.records = std::move(records);
  return p;
}

void ChunkStore::Impl::Recycle(Prepared* p) {
  if (p->buffer == nullptr) return;
  absl::MutexLock lock(&pool_mu_);
  if (buffer_pool_.size() < 4) buffer_pool_.push_back(std::move(p->buffer));
}

absl::Status ChunkStore::Impl::Put(absl::Span<const EncodedChunk> chunks,
                                   PutResult* result) {
  if (options_.verify_on_put) {
    std::string scratch;
    for (const EncodedChunk& c : chunks) {
      absl::Status s = VerifyChunk(c, &scratch);
      if (!s.ok()) {
        return absl::Status(
            s.code(), absl::StrCat("chunk ", c.id.ToHex(), " rejected: ", s.message()));
      }
    }
  }
  // Skip what is already stored before copying anything; the leader checks
  // again for chunks that land meanwhile.
  PutResult skipped;
  std::vector<Prepared::Record> records;
  absl::flat_hash_set<ChunkId> seen;
  for (const EncodedChunk& c : chunks) {
    if (!seen.insert(c.id).second) {
      ++skipped.already_present;
      continue;
    }
    auto existing = Lookup(c.id);
    if (existing.ok()) {
      ++skipped.already_present;
      continue;
    }
    if (!absl::IsNotFound(existing.status())) return existing.status();
    records.push_back({.chunk = &c, .offset = 0, .checksum = 0});
  }
  if (records.empty()) {  // everything was already stored: nothing to write
    absl::MutexLock lock(&mu_);
    stats_.dedup_hits += skipped.already_present;
    if (result != nullptr) *result = skipped;
    return absl::OkStatus();
  }
  Prepared prepared = Prepare(std::move(records));
  Writer w{.kind = Writer::Kind::kPut, .prepared = &prepared};
  absl::Status s = Write(&w);
  Recycle(&prepared);
  if (skipped.already_present > 0) {
    absl::MutexLock lock(&mu_);
    stats_.dedup_hits += skipped.already_present;
  }
  if (result != nullptr) {
    *result = w.put_result;
    result->already_present += skipped.already_present;
  }
  return s;
}

absl::StatusOr<int> ChunkStore::Impl::Delete(absl::Span<const ChunkId> ids) {
  Writer w{.kind = Writer::Kind::kDelete, .prepared = nullptr, .ids = ids};
  SNAPBACK_RETURN_IF_ERROR(Write(&w));
  if (w.deleted > 0) {
    absl::MutexLock lock(&mu_);
    compaction_kick_ = true;
  }
  return w.deleted;
}

absl::Status ChunkStore::Impl::Write(Writer* w) {
  {
    absl::MutexLock lock(&queue_mu_);
    queue_.push_back(w);
    auto ready = [this, w]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
      return w->done || queue_.front() == w;
    };
    queue_mu_.Await(absl::Condition(&ready));
    if (w->done) return w->status;
  }

  // This thread leads: take the writers queued so far, up to max_group_bytes
  // (always at least itself).
  std::vector<Writer*> group;
  {
    absl::MutexLock lock(&queue_mu_);
    uint64_t bytes = 0;
    for (Writer* q : queue_) {
      uint64_t n = q->prepared ? q->prepared->bytes : 0;
      if (!group.empty() && bytes + n > options_.max_group_bytes) break;
      bytes += n;
      group.push_back(q);
    }
  }
  absl::Status status = WriteGroup(group);
  {
    absl::MutexLock lock(&queue_mu_);
    for (Writer* q : group) {
      queue_.pop_front();
      if (q->status.ok()) q->status = status;
      q->done = true;
    }
  }
  return w->status;
}

absl::StatusOr<uint64_t> ChunkStore::Impl::ActiveSegmentFor(uint64_t bytes,
                                                            bool* created) {
  *created = false;
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (active_segment_ != 0) {
      Segment& seg = segments_[active_segment_];
      if (!seg.sealed && (seg.size == 0 || seg.size + bytes <= options_.segment_bytes)) {
        return active_segment_;
      }
      seg.sealed = true;
      active_segment_ = 0;
    }
    id = next_segment_id_++;
  }
  std::string path = segments_dir_ + "/" + SegmentName(id);
  SNAPBACK_ASSIGN_OR_RETURN(
      std::unique_ptr<File> file,
      fs_->Open(path, {.write = true, .create = true, .direct_io = options_.direct_io}));
  SNAPBACK_RETURN_IF_ERROR(fs_->CrashPoint("segment.after_create"));
  *created = true;
  absl::MutexLock lock(&mu_);
  Segment seg;
  seg.file = std::move(file);
  segments_[id] = std::move(seg);
  active_segment_ = id;
  ++stats_.segments;
  return id;
}

void ChunkStore::Impl::SealSegment(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(id);
  if (it != segments_.end()) it->second.sealed = true;
  if (active_segment_ == id) active_segment_ = 0;
}

absl::Status ChunkStore::Impl::WriteGroup(const std::vector<Writer*>& group) {
  // 1. Decide, in queue order, what the index batch does. A record is
  //    indexed unless its chunk is already stored (or earlier in the group)
  //    or, for compaction, the index no longer points at its source. Records
  //    not indexed are still written (as dead bytes) to keep the layout.
  struct NewEntry {
    Writer* owner;
    const Prepared::Record* record;
    size_t buffer_index;  // which writer buffer, for the final offset
  };
  absl::flat_hash_map<ChunkId, NewEntry> added;
  absl::flat_hash_set<ChunkId> removed;       // deleted in this group
  std::vector<IndexEntry> removals;           // pre-existing entries deleted
  std::vector<std::pair<ChunkId, bool>> ops;  // batch order: (id, is_put)
  std::vector<const Prepared*> buffers;

  auto present_before = [&](const ChunkId& id) -> absl::StatusOr<bool> {
    if (removed.contains(id)) return false;
    auto e = Lookup(id);
    if (e.ok()) return true;
    if (absl::IsNotFound(e.status())) return false;
    return e.status();
  };

  for (Writer* w : group) {
    if (w->prepared != nullptr && w->prepared->bytes > 0) {
      const size_t index = buffers.size();
      buffers.push_back(w->prepared);
      for (const auto& r : w->prepared->records) {
        const ChunkId& id = r.chunk->id;
        if (added.contains(id)) {
          if (r.from == nullptr) ++w->put_result.already_present;
          continue;
        }
        if (r.from == nullptr) {
          auto present = present_before(id);
          if (!present.ok()) {
            w->status = present.status();
            break;
          }
          if (*present) {
            ++w->put_result.already_present;
            continue;
          }
        } else {
          auto current = Lookup(id);
          if (!current.ok() || removed.contains(id) ||
              current->segment != r.from->segment || current->offset != r.from->offset) {
            continue;  // deleted or moved meanwhile: nothing to relocate
          }
        }
        added[id] = {w, &r, index};
        ops.push_back({id, true});
      }
    }
    if (w->kind == Writer::Kind::kDelete) {
      for (const ChunkId& id : w->ids) {
        if (removed.contains(id)) continue;
        if (auto it = added.find(id); it != added.end()) {
          // Stored earlier in this very group: its bytes become dead. When
          // that was a compaction move, the entry it would have replaced
          // (at the old location) is what this delete removes.
          if (const IndexEntry* from = it->second.record->from) {
            removals.push_back(*from);
            removed.insert(id);
          }
          added.erase(it);
          ops.push_back({id, false});
          ++w->deleted;
          continue;
        }
        auto existing = Lookup(id);
        if (absl::IsNotFound(existing.status())) continue;
        if (!existing.ok()) {
          w->status = existing.status();
          break;
        }
        removals.push_back(*existing);
        removed.insert(id);
        ops.push_back({id, false});
        ++w->deleted;
      }
    }
  }

  // 2. Append every writer's buffer back to back, then make it durable.
  uint64_t total = 0;
  for (const Prepared* p : buffers) total += p->bytes;
  uint64_t segment_id = 0;
  std::vector<uint64_t> buffer_base;  // segment offset of each buffer
  if (total > 0) {
    bool created = false;
    SNAPBACK_ASSIGN_OR_RETURN(segment_id, ActiveSegmentFor(total, &created));
    std::shared_ptr<File> file;
    uint64_t base;
    {
      absl::MutexLock lock(&mu_);
      base = segments_[segment_id].size;
      file = segments_[segment_id].file;
      segments_[segment_id].size = base + total;
      stats_.file_bytes += total;
    }
    absl::Status s;
    for (const Prepared* p : buffers) {
      buffer_base.push_back(base);
      if (s.ok()) s = file->WriteAt(base, {p->buffer->data(), p->bytes});
      base += p->bytes;
    }
    // Data first, durable, then the index: a crash in between leaves
    // unindexed bytes that Recover() trims.
    if (s.ok()) s = fs_->CrashPoint("put.after_write");
    if (s.ok()) s = file->Sync();
    if (s.ok()) s = fs_->CrashPoint("put.after_sync");
    if (s.ok() && created) s = fs_->SyncDir(segments_dir_);
    if (s.ok()) s = fs_->CrashPoint("put.after_dir_sync");
    if (!s.ok()) {
      // Never retry and trust a failed write or fsync: this segment takes no
      // more appends; a retry of the request goes to a new segment.
      SealSegment(segment_id);
      return s;
    }
  }

  // 3. The index, in one synced batch, in queue order.
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  auto entry_of = [&](const NewEntry& n) {
    const Prepared::Record& r = *n.record;
    return IndexEntry{.segment = segment_id,
                      .offset = buffer_base[n.buffer_index] + r.offset,
                      .raw_length = r.chunk->raw_length,
                      .encoded_length = static_cast<uint32_t>(r.chunk->data.size()),
                      .codec = r.chunk->codec,
                      .element_size = r.chunk->element_size,
                      .payload_checksum = r.checksum,
                      .created_unix_ms = r.from ? r.from->created_unix_ms : now_ms};
  };
  rocksdb::WriteBatch batch;
  for (const auto& [id, is_put] : ops) {
    auto it = added.find(id);
    if (is_put && it != added.end()) {
      batch.Put(ChunkKey(id), entry_of(it->second).Encode());
    } else if (!is_put) {
      batch.Delete(ChunkKey(id));
    }
  }
  if (batch.Count() > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    SNAPBACK_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch), "write"));
    SNAPBACK_RETURN_IF_ERROR(fs_->CrashPoint("put.after_index"));
  }

  // 4. In-memory accounting.
  absl::MutexLock lock(&mu_);
  ++stats_.group_commits;
  for (const auto& [id, n] : added) {
    const IndexEntry e = entry_of(n);
    segments_[segment_id].live_bytes += e.record_size();
    if (const IndexEntry* from = n.record->from) {
      auto it = segments_.find(from->segment);
      if (it != segments_.end()) it->second.live_bytes -= from->record_size();
      stats_.compacted_bytes += e.record_size();
      continue;
    }
    ++n.owner->put_result.stored;
    n.owner->put_result.bytes_written += e.record_size();
    ++stats_.puts;
    ++stats_.chunks;
    stats_.raw_bytes += e.raw_length;
    stats_.encoded_bytes += e.encoded_length;
    stats_.live_bytes += e.record_size();
  }
  for (Writer* w : group) stats_.dedup_hits += w->put_result.already_present;
  for (const IndexEntry& e : removals) {
    auto it = segments_.find(e.segment);
    if (it != segments_.end()) it->second.live_bytes -= e.record_size();
    --stats_.chunks;
    stats_.raw_bytes -= e.raw_length;
    stats_.encoded_bytes -= e.encoded_length;
    stats_.live_bytes -= e.record_size();
  }
  return absl::OkStatus();
}

ChunkStoreStats ChunkStore::Impl::Stats() {
  absl::MutexLock lock(&mu_);
  ChunkStoreStats s = stats_;
  s.segments = segments_.size();
  return s;
}

absl::StatusOr<int> ChunkStore::Impl::CompactNow() {
  absl::MutexLock compaction_lock(&compaction_mu_);
  // Pick sealed segments with too little live data.
  std::vector<uint64_t> candidates;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, seg] : segments_) {
      if (id == active_segment_ || !seg.sealed) continue;
      if (seg.size == 0 ||
          static_cast<double>(seg.live_bytes) <
              options_.compaction_live_fraction * static_cast<double>(seg.size)) {
        candidates.push_back(id);
      }
    }
  }
  if (candidates.empty()) return 0;
  // The index says exactly which records are live; collect them per segment.
  absl::flat_hash_map<uint64_t, std::vector<IndexEntry>> live;
  for (uint64_t id : candidates) live[id];
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek("c"); it->Valid() && it->key().starts_with("c"); it->Next()) {
      SNAPBACK_ASSIGN_OR_RETURN(IndexEntry e, IndexEntry::Decode(View(it->value())));
      auto found = live.find(e.segment);
      if (found != live.end()) found->second.push_back(e);
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  }
  int compacted = 0;
  for (uint64_t id : candidates) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
    }
    // One segment that cannot be compacted (e.g. a record failing its
    // checksum: scrub reports it) must not stop space coming back elsewhere.
    absl::Status s = CompactSegment(id, std::move(live[id]));
    if (!s.ok() && !absl::IsDataLoss(s)) return s;  // I/O trouble: stop the pass
    if (!s.ok()) {
      std::fprintf(stderr, "snapback: compaction of segment %s in %s skipped: %s\n",
                   SegmentName(id).c_str(), dir_.c_str(), s.ToString().c_str());
      continue;
    }
    ++compacted;
  }
  return compacted;
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
      std::fprintf(stderr, "snapback: compaction of %s failed: %s\n", dir_.c_str(),
                   n.status().ToString().c_str());
    }
  }
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

ScrubResult ChunkStore::Impl::Scrub(const ScrubProgress& progress) {
  ScrubResult result;
  uint64_t total;
  {
    absl::MutexLock lock(&mu_);
    total = stats_.chunks;
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  std::string scratch;
  for (it->Seek("c"); it->Valid() && it->key().starts_with("c"); it->Next()) {
    auto id = ChunkIdFromKey(View(it->key()));
    if (!id.ok()) {
      result.bad.push_back({ChunkId{}, id.status()});
      continue;
    }
    auto chunk = Get(*id);
    absl::Status s = chunk.ok() ? VerifyChunk(*chunk, &scratch) : chunk.status();
    if (!s.ok() && !absl::IsNotFound(s)) result.bad.push_back({*id, s});
    ++result.checked;
    if (progress && (result.checked % 64 == 0 || result.checked == total)) {
      progress(result.checked, std::max(total, result.checked));
    }
  }
  if (!it->status().ok())
    result.bad.push_back({ChunkId{}, FromRocks(it->status(), "scan")});
  return result;
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
