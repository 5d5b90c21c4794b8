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
//                              unlink of emptied segments, the back-off.
//   chunk_store_space.cc       the volume: the high watermark for Put(), the
//                              reserve file, room for compaction.
//
// Not part of the public interface: include only from storage/chunk_store*.cc.
#ifndef SNAPBACK_STORAGE_CHUNK_STORE_INTERNAL_H_
#define SNAPBACK_STORAGE_CHUNK_STORE_INTERNAL_H_

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
// queue_mu_, pool_mu_, reserve_mu_ and mu_ are never held together.
class ChunkStore::Impl {
 public:
  Impl(std::string dir, ChunkStoreOptions options)
      : dir_(std::move(dir)),
        segments_dir_(dir_ + "/segments"),
        reserve_path_(dir_ + "/space-reserve"),
        options_(std::move(options)) {}
  // Stops the compaction thread and closes the index.
  ~Impl();

  // The methods behind ChunkStore's, with the same contracts (which file
  // defines which: see the top of this file).
  absl::Status Open();
  absl::Status Put(absl::Span<const EncodedChunk> chunks, PutResult* result);
  absl::StatusOr<EncodedChunk> Get(const ChunkId& id);
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids);
  absl::StatusOr<bool> List(absl::string_view start_after, size_t limit,
                            std::vector<std::pair<ChunkId, uint32_t>>* out);
  absl::StatusOr<int> Delete(absl::Span<const ChunkId> ids);
  ChunkStoreStats Stats();
  absl::StatusOr<int> CompactNow();
  ScrubResult Scrub(const ScrubProgress& progress);
  ScrubResult ScrubChunks(absl::Span<const ChunkId> ids);
  const std::string& dir() const { return dir_; }
  absl::Status CheckConsistency();
  std::vector<ChunkId> LostChunks();
  absl::Status ForgetLost(absl::Span<const ChunkId> ids);

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

  // A chunk whose bytes cannot be read: dropped from the index (when the
  // index still points at `where`) and remembered as lost.
  struct LostRecord {
    ChunkId id;
    IndexEntry where;
    std::string reason;
  };

  // One caller's request in the group-commit queue.
  struct Writer {
    enum class Kind { kPut, kDelete, kRelocate, kQuarantine, kForget } kind;
    Prepared* prepared = nullptr;            // kPut, kRelocate
    absl::Span<const ChunkId> ids = {};      // kDelete, kForget
    absl::Span<const LostRecord> lost = {};  // kQuarantine
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
  // No more appends to segment `id` (after a failed write or sync). A
  // segment nothing is indexed in is unlinked at once, so failed writes
  // (ENOSPC) leave no empty files behind.
  void SealSegment(uint64_t id);
  // Drops unreadable chunks from the index and records them as lost.
  absl::Status Quarantine(std::vector<LostRecord> lost);
  // The group's synced index write. After a failed write RocksDB refuses
  // every later one until resumed; the next call resumes it first.
  absl::Status WriteIndex(rocksdb::WriteBatch* batch);

  // --- chunk_store_read.cc

  // The index entry of `id`, NOT_FOUND when absent.
  absl::StatusOr<IndexEntry> Lookup(const ChunkId& id);
  // Reads and checks (header + payload checksum) the record at `e`.
  absl::StatusOr<EncodedChunk> ReadRecord(const IndexEntry& e);
  // The open file of segment `id`; nullptr once it is compacted away.
  std::shared_ptr<File> SegmentFile(uint64_t id);
  // Scrub of one chunk: read (a bad checksum quarantines, in Get()) and
  // verify fully; a chunk that does not decode to its id is quarantined too.
  absl::Status ScrubOne(const ChunkId& id, std::string* scratch);

  // --- chunk_store.cc

  // Rebuilds the segment table and the stats from the index (Open() only);
  // quarantines chunks of missing or truncated segments.
  absl::Status Recover();

  // --- chunk_store_space.cc

  // The data dir's volume now.
  absl::StatusOr<VolumeSpace> Space();
  // What MaintainReserve() may do.
  enum class ReserveAction {
    kAdjust,        // release when low, re-create when space is back
    kReleaseIfLow,  // only release (cheap; on every group commit)
    kRelease,       // release now (compaction needs the room)
  };
  // Releases the reserve when the volume's free space is below its size,
  // and re-creates it when there is 2 x reserve_bytes + min_free_bytes free.
  // Errors are logged, not returned: the reserve is a safety margin.
  void MaintainReserve(ReserveAction action = ReserveAction::kAdjust);
  // Put() admission: RESOURCE_EXHAUSTED (saying what to do) when `bytes`
  // more would cross the high watermark; else counts them as pending until
  // FinishPut().
  absl::Status AdmitPut(uint64_t bytes);
  void FinishPut(uint64_t bytes);
  // Whether AdmitPut() would refuse a 4 MiB chunk (the clients' size).
  bool Full(const VolumeSpace& space);
  // Whether compaction may write `bytes` now and leave the databases room
  // (releasing the reserve when that makes the difference).
  bool RoomToCopy(uint64_t bytes);

  // --- chunk_store_compaction.cc

  // The background thread: a pass every compaction_interval or after deletes.
  void CompactionLoop();
  // Moves the `live` records of sealed segment `id` elsewhere, then unlinks it.
  absl::Status CompactSegment(uint64_t id, std::vector<IndexEntry> live);
  // Unlinks sealed segment `id` if nothing is indexed in it. True if it did.
  absl::StatusOr<bool> UnlinkIfDead(uint64_t id);

  const std::string dir_;
  const std::string segments_dir_;
  const std::string reserve_path_;
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
  // The segment the group-commit leader is appending to (0 = none): never
  // sealed or unlinked by compaction meanwhile.
  uint64_t writing_segment_ ABSL_GUARDED_BY(mu_) = 0;
  // Bytes of admitted puts not yet written (see AdmitPut()).
  uint64_t pending_put_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Mirror of the "l" keys of the index.
  absl::flat_hash_set<ChunkId> lost_ ABSL_GUARDED_BY(mu_);
  uint64_t next_segment_id_ ABSL_GUARDED_BY(mu_) = 1;
  ChunkStoreStats stats_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool compaction_kick_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex compaction_mu_;  // one compaction pass at a time
  // After a compaction ran out of space, copying waits until then (doubling
  // up to a minute); unlinking dead segments goes on.
  absl::Time copy_backoff_until_ ABSL_GUARDED_BY(compaction_mu_) = absl::InfinitePast();
  absl::Duration copy_backoff_ ABSL_GUARDED_BY(compaction_mu_) = absl::ZeroDuration();
  std::thread compaction_thread_;

  absl::Mutex reserve_mu_;                 // one reserve change at a time
  std::atomic<uint64_t> reserve_held_{0};  // bytes the reserve file holds
  // An index write failed: resume RocksDB before the next one (leader only).
  bool index_failed_ = false;
};

}  // namespace snapback::storage

#endif  // SNAPBACK_STORAGE_CHUNK_STORE_INTERNAL_H_
