// How the coordinator's metadata engine writes: CoordinatorStore::Txn, one
// synced WriteBatch plus the in-memory changes that go with it, and the
// RocksDB helpers every part of the store uses. Internal to coordinator/.
#ifndef SNAPBACK_COORDINATOR_TXN_H_
#define SNAPBACK_COORDINATOR_TXN_H_

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/hash.h"
#include "common/rocksdb_util.h"
#include "coordinator/coordinator_store.h"
#include "coordinator/keys.h"

namespace snapback::coordinator {
namespace internal {

using internal_rocksdb::Sl;
using internal_rocksdb::View;

// rocksdb::Status -> absl::Status for the metadata database ("coordinator
// metadata <what>: ..."); see internal_rocksdb::FromRocks for the codes.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what);

// Adds to `batch` the deletion of every key that starts with `prefix` (as
// stored; not keys added to the same batch).
absl::Status DeletePrefix(rocksdb::DB* db, rocksdb::WriteBatch* batch,
                          absl::string_view prefix);

}  // namespace internal

// One synced WriteBatch plus the in-memory changes that go with it. Tracks
// chunk reference records and claim counts changed so far in the batch, so
// that code adding to the batch reads its own writes. Nothing reaches the
// database or the store's memory until Write().
//
// Thread-safety: used only while holding the store's writer lock (asserted
// where it matters; the thread-safety analysis cannot name the lock through
// store_). Not thread-safe itself.
class CoordinatorStore::Txn {
 public:
  explicit Txn(CoordinatorStore* store) : store_(store) {}

  rocksdb::WriteBatch batch;
  // Checkpoint keys deleted in this batch (for latest_committed).
  absl::flat_hash_set<std::string> deleted_checkpoints;

  // The chunk's reference record as of this batch; changes through the
  // returned pointer are written by Write(). DATA_LOSS for a malformed
  // stored record.
  absl::StatusOr<internal::RefRecord*> Ref(const ChunkId& id);

  // Checkpoints claiming `id` as of this batch.
  int Claims(const ChunkId& id);
  void AddClaim(const ChunkId& id, int delta) { claim_deltas_[id] += delta; }

  // A claim of the checkpoint was dropped: when nothing else protects the
  // chunk, its grace period starts now. (A chunk nobody ever referenced has
  // no record yet; creating one is what lets GC find it.)
  absl::Status ClaimReleased(const ChunkId& id, int64_t now_ms);

  // Nothing to write.
  bool empty() const { return batch.Count() == 0 && refs_.empty(); }

  // Adds the reference changes (and their GC queue entries) to the batch,
  // writes it with a synced WAL, and only then applies the claim changes in
  // memory. On error nothing is applied in memory.
  absl::Status Write();

 private:
  struct Entry {
    internal::RefRecord was;
    internal::RefRecord now;
  };
  CoordinatorStore* const store_;
  absl::flat_hash_map<ChunkId, Entry> refs_;
  absl::flat_hash_map<ChunkId, int> claim_deltas_;
};

}  // namespace snapback::coordinator

#endif  // SNAPBACK_COORDINATOR_TXN_H_
