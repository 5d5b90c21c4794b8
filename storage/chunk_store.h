// ChunkStore: the durable, content-addressed chunk store of a storage node.
//
// Chunks (EncodedChunk: SHA-256 id, codec, lengths, encoded bytes) are
// appended to segment files under DIR/segments/ and indexed in RocksDB under
// DIR/index/. The write order is: segment bytes written and fsynced (and the
// directory fsynced for a new segment) -> index entries written with a synced
// WAL -> Put() returns OK. After a crash the index is the truth; bytes past
// the last indexed record of a segment are reclaimed on Open().
//
// Concurrent Put()/Delete() calls are group-committed: one caller becomes the
// leader, writes every queued batch with one fsync and one index write batch,
// and wakes the others. A failed write or fsync is never retried and trusted:
// the segment is sealed (no more appends), the batch fails, and the caller may
// retry, which writes the chunks to a new segment.
//
// Space comes back through compaction: a background thread (or CompactNow())
// picks sealed segments whose live fraction is below a threshold, copies their
// live records through the normal write path, switches the index entries that
// still point at the old copies, and only then unlinks the old segment.
// Segments with no live record are unlinked without copying anything.
//
// A full volume: Put() is refused (RESOURCE_EXHAUSTED) once the volume's
// free space would fall below min_free_bytes, before the file system is
// full. A reserve file (DIR/space-reserve, reserve_bytes) holds space that is
// released when the volume runs out anyway (something else filled it), so
// deletes, compaction and the RocksDB writes of both databases in the data
// dir can always proceed, and re-created when space returns.
//
// Damage: a segment that is missing or shorter than the index says at
// Open(), or a record that fails its checksum on a read or in Scrub(), is
// quarantined: its chunks are dropped from the index and remembered as lost
// (LostChunks(), persisted in the index DB) for repair to restore them from
// another replica; everything else is served.
//
// Thread-safe. See docs/storage_format.md for the on-disk format.
#ifndef SNAPBACK_STORAGE_CHUNK_STORE_H_
#define SNAPBACK_STORAGE_CHUNK_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/codec.h"
#include "common/hash.h"
#include "storage/file_system.h"

namespace snapback::storage {

// What Open() does with a damaged index WAL.
enum class IndexRecovery {
  // Refuse to open on any WAL damage (RocksDB kAbsoluteConsistency): no
  // acknowledged chunk can silently disappear.
  kStrict,
  // Drop an incomplete record at the end of the WAL and open (RocksDB
  // kTolerateCorruptedTailRecords). Only after a power cut: RocksDB cannot
  // tell a torn tail from a record damaged mid-log, and drops from there on.
  kDropTornTail,
};

struct ChunkStoreOptions {
  // File system for segment files. nullptr = DefaultFileSystem().
  // Default: nullptr
  std::shared_ptr<FileSystem> fs;
  // A segment is sealed once it reaches this size; a new one is started.
  // Default: 256 MiB
  uint64_t segment_bytes = 256ull << 20;
  // Write segments with O_DIRECT where the file system supports it.
  // Default: true
  bool direct_io = true;
  // Decode every chunk and check SHA-256(raw) == id before storing it. Turn
  // off only where the caller has just verified the same bytes.
  // Default: true
  bool verify_on_put = true;
  // Largest amount of data one group commit writes before it syncs.
  // Default: 64 MiB
  uint64_t max_group_bytes = 64ull << 20;
  // Sealed segments whose live bytes fall below this fraction of their size
  // are compacted.
  // Default: 0.5
  double compaction_live_fraction = 0.5;
  // Compaction copies at most this many bytes per second, in small batches
  // through the same writer queue as Put(), so writers are never starved.
  // Default: 128 MiB/s
  uint64_t compaction_bytes_per_sec = 128ull << 20;
  // Run compaction in a background thread, checking every
  // compaction_interval and after deletes.
  // Default: true
  bool background_compaction = true;
  // Default: 2 s
  absl::Duration compaction_interval = absl::Seconds(2);
  // Default: kStrict
  IndexRecovery index_recovery = IndexRecovery::kStrict;
  // Bytes kept in a preallocated reserve file (DIR/space-reserve). It is
  // released when the volume's free space falls below this size (something
  // other than Put() filled it: the metadata DB, other files, an operator),
  // so deletes, compaction and index/metadata writes can proceed, and
  // re-created once the volume has 2 x reserve_bytes + min_free_bytes free.
  // While released, Put() still counts it as used. 0 disables the reserve.
  // Default: 64 MiB
  uint64_t reserve_bytes = 64ull << 20;
  // The high watermark: Put() fails with RESOURCE_EXHAUSTED (the node is
  // "full", see ChunkStoreStats::full) when storing the chunks would leave
  // less than this many bytes free on the volume (statvfs, minus a released
  // reserve). Deletes, compaction and reads go on. Compaction needs room for
  // the live bytes of one segment, so keep this at least segment_bytes / 2.
  // 0 = refuse only when the volume itself is full.
  // Default: 256 MiB
  uint64_t min_free_bytes = 256ull << 20;
};

struct PutResult {
  int stored = 0;           // chunks newly written
  int already_present = 0;  // chunks the store already had (not rewritten)
  uint64_t bytes_written = 0;
};

struct ChunkStoreStats {
  uint64_t chunks = 0;         // live chunks in the index
  uint64_t raw_bytes = 0;      // sum of their raw (decoded) lengths
  uint64_t encoded_bytes = 0;  // sum of their encoded lengths
  uint64_t live_bytes = 0;     // bytes of live records on disk (with headers)
  uint64_t file_bytes = 0;     // bytes of all segment files
  uint64_t segments = 0;
  uint64_t puts = 0;             // chunks stored since Open()
  uint64_t dedup_hits = 0;       // chunks put that were already present
  uint64_t group_commits = 0;    // fsync+index batches since Open()
  uint64_t compactions = 0;      // segments compacted since Open()
  uint64_t compacted_bytes = 0;  // bytes copied by compaction since Open()
  std::string io_mode;           // e.g. "io_uring+O_DIRECT"
  // The volume of the data dir (statvfs), at the time of the call.
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;  // as statvfs reports it (a held reserve is not free)
  // At the high watermark: a 4 MiB chunk (the clients' size) would be
  // refused until space comes back (see ChunkStoreOptions::min_free_bytes).
  // Placement should skip the node.
  bool full = false;
  uint64_t reserve_bytes = 0;   // bytes the reserve file holds now (0: released)
  uint64_t min_free_bytes = 0;  // the watermark (ChunkStoreOptions::min_free_bytes)
  uint64_t lost_chunks = 0;     // ids in LostChunks()
};

// Progress of a scrub: chunks checked so far out of a total.
using ScrubProgress = std::function<void(uint64_t done, uint64_t total)>;

struct ScrubResult {
  uint64_t checked = 0;
  std::vector<std::pair<ChunkId, absl::Status>> bad;  // chunks that failed
  std::vector<ChunkId> missing;                       // ScrubChunks(): not stored here
};

class ChunkStore {
 public:
  // Opens (creating if needed) the store in `dir`. Reclaims bytes past the
  // last indexed record and removes segments nothing points to; chunks whose
  // segment is missing or too short are quarantined (see LostChunks()), not
  // a reason to refuse. On a full volume the reserve is released first, so
  // the store opens there too.
  // FAILED_PRECONDITION when the index is corrupt (never silently repaired:
  // acknowledged chunks must not disappear); the message says what to do.
  static absl::StatusOr<std::unique_ptr<ChunkStore>> Open(const std::string& dir,
                                                          ChunkStoreOptions options = {});
  // Stops compaction and closes the index; does not wait for anything else.
  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // Stores `chunks`, returning OK only when every one is durable (or was
  // already present). With verify_on_put, a chunk that fails verification
  // fails the call (INVALID_ARGUMENT or DATA_LOSS) before anything is written.
  // RESOURCE_EXHAUSTED when the node is full (min_free_bytes) or on ENOSPC,
  // UNAVAILABLE/INTERNAL on I/O errors; nothing of a failed batch is indexed.
  absl::Status Put(absl::Span<const EncodedChunk> chunks, PutResult* result = nullptr);

  // Reads chunks; for each id: the chunk, NOT_FOUND, or DATA_LOSS when the
  // stored record fails its checksum (the chunk is then quarantined: see
  // LostChunks(); the next Get() says NOT_FOUND). The SHA-256 is not
  // re-computed (the reader verifies it; see VerifyChunk()).
  std::vector<absl::StatusOr<EncodedChunk>> Get(absl::Span<const ChunkId> ids);
  absl::StatusOr<EncodedChunk> GetOne(const ChunkId& id);

  // For each id, whether the store has it.
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids);

  // Up to `limit` (id, raw length) pairs of the chunks the store holds,
  // in id order, strictly after `start_after` (32 id bytes, or "" for the
  // start), appended to `out`. Returns true when nothing follows.
  absl::StatusOr<bool> List(absl::string_view start_after, size_t limit,
                            std::vector<std::pair<ChunkId, uint32_t>>* out);

  // Removes chunks from the index (durably); absent ids are ignored. Space is
  // reclaimed later by compaction. Returns how many were present.
  absl::StatusOr<int> Delete(absl::Span<const ChunkId> ids);

  ChunkStoreStats Stats();

  // Compacts every eligible segment now (throttled as configured). Returns
  // the number of segments compacted.
  absl::StatusOr<int> CompactNow();

  // Reads and fully verifies (checksum, decode, SHA-256) every live chunk.
  // A chunk that fails (DATA_LOSS) is quarantined: dropped from the index and
  // added to LostChunks(), so a later Put() of the same id stores good bytes.
  // Other errors (I/O) are reported in `bad` but change nothing.
  ScrubResult Scrub(const ScrubProgress& progress = nullptr);

  // Like Scrub() for the named chunks only; ids the store does not have are
  // listed in `missing`, not in `bad`.
  ScrubResult ScrubChunks(absl::Span<const ChunkId> ids);

  // Ids removed from the index because their bytes were unreadable: a
  // segment missing or truncated at Open(), a record failing its checksum on
  // Get(), Scrub() or ScrubChunks(). Persisted in the index DB, so they
  // survive restarts, until ForgetLost() or a Put() that stores the id again
  // (Delete() leaves them). Sorted. For repair: restore them from another
  // replica (a Put()), or forget them.
  std::vector<ChunkId> LostChunks();
  // Removes `ids` from LostChunks() (durably); ids not there are ignored.
  absl::Status ForgetLost(absl::Span<const ChunkId> ids);

  const std::string& dir() const;

  // Recomputes the in-memory accounting (per-segment live bytes, chunk and
  // byte counts) from the index and compares. For tests; call when no other
  // call is running. INTERNAL naming the first difference.
  absl::Status TEST_CheckConsistency();

  // The engine: defined in storage/chunk_store_internal.h, its methods spread
  // by responsibility over storage/chunk_store*.cc.
  class Impl;

 private:
  explicit ChunkStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace snapback::storage

#endif  // SNAPBACK_STORAGE_CHUNK_STORE_H_
