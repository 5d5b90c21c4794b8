// ChunkStore writes: Put() (verify, skip what is already stored, lay the
// records out on the caller's thread), Delete(), and the group commit: the
// queue, its leader's one append + fsync + synced index batch for the whole
// group, and segment rollover. A failed write or sync seals the segment.
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/codec.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "storage/chunk_store.h"
#include "storage/chunk_store_internal.h"
#include "storage/file_system.h"
#include "storage/record.h"

namespace snapback::storage {
namespace {

using internal::FromRocks;
using internal::SegmentName;

}  // namespace

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
  // Refuse before the volume is full (and before copying anything).
  uint64_t bytes = 0;
  for (const auto& r : records) {
    bytes += AlignUp(kRecordHeaderSize + r.chunk->data.size(), kRecordAlignment);
  }
  bytes = AlignUp(bytes);
  if (absl::Status admitted = AdmitPut(bytes); !admitted.ok()) {
    MaintainReserve();
    return admitted;
  }
  Prepared prepared = Prepare(std::move(records));
  Writer w{.kind = Writer::Kind::kPut, .prepared = &prepared};
  absl::Status s = Write(&w);
  Recycle(&prepared);
  FinishPut(bytes);
  if (absl::IsResourceExhausted(s)) MaintainReserve();  // the volume filled anyway
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

absl::Status ChunkStore::Impl::Quarantine(std::vector<LostRecord> lost) {
  for (const LostRecord& r : lost) {
    SNAPBACK_LOG(
        Error,
        "chunk %s in %s is unreadable (%s): quarantined (dropped from the index, "
        "listed as lost) for repair from a replica",
        r.id.ToHex(), dir_, r.reason);
  }
  Writer w{.kind = Writer::Kind::kQuarantine, .prepared = nullptr, .lost = lost};
  return Write(&w);
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
        writing_segment_ = active_segment_;
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
  writing_segment_ = id;
  ++stats_.segments;
  return id;
}

void ChunkStore::Impl::SealSegment(uint64_t id) {
  {
    absl::MutexLock lock(&mu_);
    if (writing_segment_ == id) writing_segment_ = 0;
    if (active_segment_ == id) active_segment_ = 0;
    auto it = segments_.find(id);
    if (it == segments_.end()) return;
    it->second.sealed = true;
    if (it->second.live_bytes > 0) return;
    // Nothing is indexed here (typically a new segment whose first write
    // failed with ENOSPC): no reader can reach it, so drop it now instead
    // of leaving an empty file per failed attempt.
    stats_.file_bytes -= it->second.size;
    segments_.erase(it);
  }
  absl::Status removed = fs_->Remove(segments_dir_ + "/" + SegmentName(id));
  if (removed.ok()) removed = fs_->SyncDir(segments_dir_);
  if (!removed.ok() && !absl::IsNotFound(removed)) {
    // Harmless: Open() removes segments nothing points at.
    SNAPBACK_LOG(Warning, "cannot remove failed segment %s in %s: %s", SegmentName(id),
                 dir_, removed.ToString());
  }
}

absl::Status ChunkStore::Impl::WriteIndex(rocksdb::WriteBatch* batch) {
  if (index_failed_) {
    // RocksDB stops taking writes after a failed one (e.g. ENOSPC) until
    // resumed; try once per group (it refuses while the cause persists).
    index_failed_ = !db_->Resume().ok();
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  absl::Status s = FromRocks(db_->Write(wo, batch), "write");
  if (!s.ok()) {
    index_failed_ = true;
    if (absl::IsResourceExhausted(s)) MaintainReserve();
  }
  return s;
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
  absl::flat_hash_set<ChunkId> removed;       // deleted (or quarantined) in this group
  std::vector<IndexEntry> removals;           // pre-existing entries deleted
  std::vector<std::pair<ChunkId, bool>> ops;  // batch order: (id, is_put)
  std::vector<const Prepared*> buffers;
  // Lost-chunk keys this group sets (a value) or clears (nullopt), last
  // change in queue order winning; and ids stored or forgotten here, whose
  // lost key (if any) goes. A delete leaves it: the coordinator may delete
  // a chunk it does not know is lost, and repair decides what to forget.
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  absl::flat_hash_map<ChunkId, std::optional<std::string>> lost_change;
  std::vector<ChunkId> unlost;
  auto not_lost = [&](const ChunkId& id) {
    if (auto it = lost_change.find(id); it != lost_change.end()) {
      it->second.reset();
    } else {
      unlost.push_back(id);
    }
  };

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
        if (r.from == nullptr) not_lost(id);
      }
    }
    if (w->kind == Writer::Kind::kQuarantine) {
      for (const LostRecord& r : w->lost) {
        if (removed.contains(r.id) || added.contains(r.id)) continue;
        auto current = Lookup(r.id);
        if (!current.ok() || current->segment != r.where.segment ||
            current->offset != r.where.offset) {
          continue;  // deleted or moved meanwhile: not the bad copy any more
        }
        removals.push_back(*current);
        removed.insert(r.id);
        ops.push_back({r.id, false});
        lost_change[r.id] = EncodeLostValue(now_ms, r.reason);
      }
    }
    if (w->kind == Writer::Kind::kForget) {
      for (const ChunkId& id : w->ids) not_lost(id);
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
  if (!unlost.empty()) {
    absl::MutexLock lock(&mu_);
    for (const ChunkId& id : unlost) {
      if (lost_.contains(id)) lost_change.try_emplace(id, std::nullopt);
    }
  }

  // Whatever filled the volume, the writes below (and RocksDB's) must not
  // meet ENOSPC while the reserve still holds space.
  MaintainReserve(ReserveAction::kReleaseIfLow);

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
  auto done_writing = [&] {
    absl::MutexLock lock(&mu_);
    writing_segment_ = 0;
  };

  // 3. The index, in one synced batch, in queue order.
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
  for (const auto& [id, value] : lost_change) {
    if (value.has_value()) {
      batch.Put(LostKey(id), *value);
    } else {
      batch.Delete(LostKey(id));
    }
  }
  if (batch.Count() > 0) {
    absl::Status s = WriteIndex(&batch);
    if (s.ok()) s = fs_->CrashPoint("put.after_index");
    if (!s.ok()) {
      done_writing();
      return s;
    }
  }

  // 4. In-memory accounting.
  absl::MutexLock lock(&mu_);
  writing_segment_ = 0;
  ++stats_.group_commits;
  for (const auto& [id, value] : lost_change) {
    if (value.has_value()) {
      lost_.insert(id);
    } else {
      lost_.erase(id);
    }
  }
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

}  // namespace snapback::storage
