// ChunkStore reads: index lookups, Get() (with a second lookup when
// compaction moved the record meanwhile), Has(), the checks of a stored
// record against its index entry, and Scrub(), which reads every live chunk
// through Get() and verifies it fully.
#include <rocksdb/db.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/codec.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/rocksdb_util.h"
#include "common/status_macros.h"
#include "storage/chunk_store.h"
#include "storage/chunk_store_internal.h"
#include "storage/file_system.h"
#include "storage/record.h"

namespace snapback::storage {
namespace {

using internal::FromRocks;
using internal::SegmentName;
using internal_rocksdb::View;

}  // namespace

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
  auto where = [&] {
    return absl::StrCat(" (segment ", SegmentName(e.segment), " offset ", e.offset, ")");
  };
  // A segment cut short under a running store: the record is gone.
  auto past_end = [&](absl::Status s) {
    if (!absl::IsOutOfRange(s)) return s;
    return absl::DataLossError(
        absl::StrCat("record past the end of its segment", where()));
  };
  if (file->direct_io()) {
    // One aligned read covering the record, into a per-thread buffer (a new
    // multi-MiB allocation per read would cost page faults).
    thread_local AlignedBuffer buf;
    uint64_t begin = AlignDown(e.offset);
    uint64_t end = AlignUp(e.offset + size);
    buf.Resize(end - begin);
    SNAPBACK_RETURN_IF_ERROR(past_end(file->ReadAt(begin, buf.span())));
    const char* rec = buf.data() + (e.offset - begin);
    std::memcpy(header_bytes.data(), rec, kRecordHeaderSize);
    chunk.data.assign(rec + kRecordHeaderSize, e.encoded_length);
  } else {
    chunk.data.resize(e.encoded_length);
    SNAPBACK_RETURN_IF_ERROR(
        past_end(file->ReadAt(e.offset, absl::MakeSpan(header_bytes))));
    SNAPBACK_RETURN_IF_ERROR(
        past_end(file->ReadAt(e.offset + kRecordHeaderSize, absl::MakeSpan(chunk.data))));
  }
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
      chunk = absl::DataLossError(absl::StrCat("record at the index location of ",
                                               id.ShortHex(), " holds chunk ",
                                               chunk->id.ShortHex()));
    }
    if (absl::IsDataLoss(chunk.status())) {
      // The bytes are bad for good: drop the chunk so repair can put a good
      // copy back, and say DATA_LOSS to this reader.
      absl::Status q = Quarantine(
          {{.id = id, .where = e, .reason = std::string(chunk.status().message())}});
      if (!q.ok()) {
        SNAPBACK_LOG(Error, "cannot quarantine chunk %s in %s: %s", id.ToHex(), dir_,
                     q.ToString());
      }
      return chunk;
    }
    if (chunk.ok() || attempt >= 2 || !absl::IsUnavailable(chunk.status())) return chunk;
  }
}

absl::StatusOr<bool> ChunkStore::Impl::List(
    absl::string_view start_after, size_t limit,
    std::vector<std::pair<ChunkId, uint32_t>>* out) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  std::string from = "c";
  from.append(start_after.data(), start_after.size());
  it->Seek(rocksdb::Slice(from));
  if (!start_after.empty() && it->Valid() && it->key() == rocksdb::Slice(from))
    it->Next();
  size_t n = 0;
  for (; it->Valid() && it->key().starts_with("c"); it->Next()) {
    if (n == limit) return false;
    absl::StatusOr<ChunkId> id =
        ChunkIdFromKey(absl::string_view(it->key().data(), it->key().size()));
    if (!id.ok()) continue;  // not a chunk key
    absl::StatusOr<IndexEntry> e =
        IndexEntry::Decode(absl::string_view(it->value().data(), it->value().size()));
    if (!e.ok()) return e.status();
    out->emplace_back(*id, e->raw_length);
    ++n;
  }
  if (!it->status().ok()) {
    return absl::UnavailableError(absl::StrCat("index scan: ", it->status().ToString()));
  }
  return true;
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

absl::Status ChunkStore::Impl::ScrubOne(const ChunkId& id, std::string* scratch) {
  // Get() quarantines a record that fails its checksum; a record that
  // passes it but does not decode to its id is quarantined here.
  SNAPBACK_ASSIGN_OR_RETURN(IndexEntry e, Lookup(id));
  auto chunk = Get(id);
  if (!chunk.ok()) return chunk.status();
  absl::Status s = VerifyChunk(*chunk, scratch);
  if (!s.ok()) {
    absl::Status q =
        Quarantine({{.id = id, .where = e, .reason = std::string(s.message())}});
    if (!q.ok()) {
      SNAPBACK_LOG(Error, "cannot quarantine chunk %s in %s: %s", id.ToHex(), dir_,
                   q.ToString());
    }
  }
  return s;
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
    absl::Status s = ScrubOne(*id, &scratch);
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

ScrubResult ChunkStore::Impl::ScrubChunks(absl::Span<const ChunkId> ids) {
  ScrubResult result;
  std::string scratch;
  for (const ChunkId& id : ids) {
    absl::Status s = ScrubOne(id, &scratch);
    if (absl::IsNotFound(s)) {
      result.missing.push_back(id);
      continue;
    }
    ++result.checked;
    if (!s.ok()) result.bad.push_back({id, s});
  }
  return result;
}

}  // namespace snapback::storage
