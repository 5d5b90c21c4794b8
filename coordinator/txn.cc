#include "coordinator/txn.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace snapback::coordinator {
namespace internal {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  static constexpr internal_rocksdb::DbLabel kMeta = {
      "coordinator metadata",
      "the metadata database is corrupt: restore DATA_DIR/meta from a backup"};
  return internal_rocksdb::FromRocks(s, what, kMeta);
}

absl::Status DeletePrefix(rocksdb::DB* db, rocksdb::WriteBatch* batch,
                          absl::string_view prefix) {
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  const rocksdb::Slice p(prefix.data(), prefix.size());
  for (it->Seek(p); it->Valid() && it->key().starts_with(p); it->Next()) {
    batch->Delete(it->key());
  }
  return FromRocks(it->status(), "scan");
}

}  // namespace internal

using internal::DecodeRef, internal::EncodeRef, internal::FromRocks, internal::RefKey,
    internal::RefRecord, internal::ZeroKey;

absl::StatusOr<RefRecord*> CoordinatorStore::Txn::Ref(const ChunkId& id) {
  auto it = refs_.find(id);
  if (it != refs_.end()) return &it->second.now;
  std::string value;
  rocksdb::Status s = store_->db_->Get(rocksdb::ReadOptions(), RefKey(id), &value);
  RefRecord r;
  if (s.ok()) {
    if (!DecodeRef(value, &r)) {
      return absl::DataLossError(
          absl::StrCat("malformed reference record for chunk ", id.ToHex()));
    }
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "read");
  }
  return &refs_.emplace(id, Entry{r, r}).first->second.now;
}

int CoordinatorStore::Txn::Claims(const ChunkId& id) {
  store_->mu_.AssertHeld();
  auto it = store_->claims_.find(id);
  int n = it == store_->claims_.end() ? 0 : it->second;
  auto d = claim_deltas_.find(id);
  return n + (d == claim_deltas_.end() ? 0 : d->second);
}

absl::Status CoordinatorStore::Txn::ClaimReleased(const ChunkId& id, int64_t now_ms) {
  if (Claims(id) > 0) return absl::OkStatus();
  SNAPBACK_ASSIGN_OR_RETURN(RefRecord * r, Ref(id));
  // Unreferenced and now unclaimed too: the grace period restarts, even
  // for a chunk that was unreferenced before the claim was taken.
  if (!r->exists || r->count == 0) *r = RefRecord{true, 0, now_ms};
  return absl::OkStatus();
}

absl::Status CoordinatorStore::Txn::Write() {
  store_->mu_.AssertHeld();
  for (auto& [id, e] : refs_) {
    const RefRecord& was = e.was;
    const RefRecord& now = e.now;
    if (was == now) continue;
    const bool was_zero = was.exists && was.count == 0;
    const bool now_zero = now.exists && now.count == 0;
    if (was_zero && (!now_zero || now.zero_since_ms != was.zero_since_ms)) {
      batch.Delete(ZeroKey(was.zero_since_ms, id));
    }
    if (now_zero && (!was_zero || now.zero_since_ms != was.zero_since_ms)) {
      batch.Put(ZeroKey(now.zero_since_ms, id), "");
    }
    if (now.exists) {
      RefRecord stored = now;
      if (stored.count > 0) stored.zero_since_ms = 0;
      batch.Put(RefKey(id), EncodeRef(stored));
    } else if (was.exists) {
      batch.Delete(RefKey(id));
    }
  }
  if (batch.Count() > 0) {
    rocksdb::WriteOptions write_options;
    write_options.sync = true;
    SNAPBACK_RETURN_IF_ERROR(
        FromRocks(store_->db_->Write(write_options, &batch), "write"));
  }
  for (const auto& [id, delta] : claim_deltas_) {
    int& n = store_->claims_[id];
    n += delta;
    if (n <= 0) store_->claims_.erase(id);
  }
  if (!deleted_checkpoints.empty()) {
    // Their catalogue records on the tier go too (queued, not a network
    // call under the lock).
    store_->tier_->RetractCatalog(
        std::vector<std::string>(deleted_checkpoints.begin(), deleted_checkpoints.end()));
  }
  return absl::OkStatus();
}

}  // namespace snapback::coordinator
