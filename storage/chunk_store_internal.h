// ChunkStore::Impl, the engine behind storage/chunk_store.h, shared by the
// files that define its methods (one class across files, as RocksDB's
// DBImpl is):
//
//   chunk_store.cc             Open(): the index options, Recover() (segment
//                              table rebuilt from the index, unindexed tails
//                              trimmed), the I/O-mode probe; Stats(), the
//                              consistency check, the public forwarders.
//   chunk_store_write.cc       Put()/Delete(): verify, skip what is stored,
//                              lay records out, the group-commit queue and
//                              its leader (segment bytes -> fsync -> one
//                              synced index batch), segment rollover/sealing.
//   chunk_store_read.cc        Get()/Has(), the record checks (header and
//                              payload checksum against the index), Scrub().
//   chunk_store_compaction.cc  the background thread, segment selection,
//                              paced relocation through the writer queue,
//                              unlink of emptied segments.
//
// Not part of the public interface: include only from storage/chunk_store*.cc.
#ifndef SNAPBACK_STORAGE_CHUNK_STORE_INTERNAL_H_
#define SNAPBACK_STORAGE_CHUNK_STORE_INTERNAL_H_

#include <rocksdb/db.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/codec.h"
#include "common/hash.h"
#include "storage/chunk_store.h"
#include "storage/file_system.h"
#include "storage/record.h"

namespace snapback::storage {
namespace internal {

// A RocksDB status of the chunk index as an absl::Status; corruption names
// the index and says to restore the data dir from a replica.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what);

// "0000000000000007.seg": the file name of segment `id` under DIR/segments/.
std::string SegmentName(uint64_t id);

}  // namespace internal

// Thread-safe. Lock order: compaction_mu_ (one compaction pass, or the
// consistency check) is taken before mu_ and before the writer queue;
// queue_mu_, pool_mu_ and mu_ are never held together.
class ChunkStore::Impl {
 public:
  Impl(std::string dir, ChunkStoreOptions options)
      : dir_(std::move(dir)),
        segments_dir_(dir_ + "/segments"),
        options_(std::move(options)) {}
  // Stops the compaction thread and closes the index.
  ~Impl();

  // The methods behind ChunkStore's, with the same contracts (which file
  // defines which: see the top of this file).
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

  // --- chunk_store_write.cc

  // Lays out `records` (chunk pointers must outlive the returned value).
  Prepared Prepare(std::vector<Prepared::Record> records);
  // Returns the buffer of `p` to the pool.
  void Recycle(Prepared* p);

  // Queues `w` and returns when a leader (maybe this thread) has written it.
  absl::Status Write(Writer* w);
  // Leader only: writes a group of writers with one sync and one index batch.
  absl::Status WriteGroup(const std::vector<Writer*>& group);
  // Leader only: makes sure there is an unsealed segment with room for
  // `bytes` (starting a new one when needed). Returns its id.
  absl::StatusOr<uint64_t> ActiveSegmentFor(uint64_t bytes, bool* created);
  // No more appends to segment `id` (after a failed write or sync).
  void SealSegment(uint64_t id);

  // --- chunk_store_read.cc

  // The index entry of `id`, NOT_FOUND when absent.
  absl::StatusOr<IndexEntry> Lookup(const ChunkId& id);
  // Reads and checks (header + payload checksum) the record at `e`.
  absl::StatusOr<EncodedChunk> ReadRecord(const IndexEntry& e);
  // The open file of segment `id`; nullptr once it is compacted away.
  std::shared_ptr<File> SegmentFile(uint64_t id);

  // --- chunk_store.cc

  // Rebuilds the segment table and the stats from the index (Open() only).
  absl::Status Recover();

  // --- chunk_store_compaction.cc

  // The background thread: a pass every compaction_interval or after deletes.
  void CompactionLoop();
  // Moves the `live` records of sealed segment `id` elsewhere, then unlinks it.
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

}  // namespace snapback::storage

#endif  // SNAPBACK_STORAGE_CHUNK_STORE_INTERNAL_H_
