// CoordinatorStore: garbage collection. Retention and lease expiry decide
// which checkpoints go; chunks nobody references or claims are deleted from
// the tier after their grace period, in bounded batches under the writer
// lock (see "The GC race" in coordinator_store.h).
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_store.h"
#include "coordinator/keys.h"
#include "coordinator/txn.h"

namespace snapback::coordinator {

using internal::CheckpointKey, internal::FromRocks, internal::GetBE, internal::JobKey,
    internal::RefKey, internal::Sl, internal::View, internal::ZeroKey,
    internal::kZeroPrefix;
using v1::CheckpointInfo;
using v1::JobInfo;

absl::StatusOr<v1::CollectGarbageResponse> CoordinatorStore::CollectGarbage() {
  v1::CollectGarbageResponse out;
  {
    absl::MutexLock lock(&mu_);
    SNAPBACK_RETURN_IF_ERROR(ApplyRetention(&out));
  }
  SNAPBACK_RETURN_IF_ERROR(DeleteUnreferencedChunks(&out));
  return out;
}

absl::Status CoordinatorStore::ApplyRetention(v1::CollectGarbageResponse* out) {
  const int64_t now = NowMs();
  const int64_t lease_ms = absl::ToInt64Milliseconds(options_.checkpoint_lease);
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<JobInfo> jobs, LoadJobs());
  for (JobInfo& job : jobs) {
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts,
                              LoadCheckpoints(job.job_id()));
    const v1::RetentionPolicy& policy = job.retention();
    // Committed steps, newest first, for keep_last.
    std::vector<int64_t> committed;
    for (const CheckpointInfo& c : ckpts) {
      if (c.state() == v1::COMMITTED) committed.push_back(c.step());
    }
    std::sort(committed.rbegin(), committed.rend());
    absl::flat_hash_set<int64_t> newest;
    for (size_t i = 0; i < committed.size() && i < policy.keep_last(); ++i) {
      newest.insert(committed[i]);
    }
    Txn txn(this);
    bool job_changed = false;
    for (CheckpointInfo& c : ckpts) {
      switch (c.state()) {
        case v1::COMMITTED: {
          const bool keep =
              policy.keep_last() == 0 || newest.contains(c.step()) || c.pinned() ||
              c.step() == job.restore_target() ||
              (policy.keep_every_n_steps() > 0 &&
               c.step() % static_cast<int64_t>(policy.keep_every_n_steps()) == 0);
          if (keep) break;
          SNAPBACK_RETURN_IF_ERROR(DeleteCommittedInTxn(&txn, c, &job));
          job_changed = true;
          out->set_checkpoints_deleted(out->checkpoints_deleted() + 1);
          break;
        }
        case v1::WRITING:
          if (now - c.last_activity_unix_ms() < lease_ms) break;
          SNAPBACK_RETURN_IF_ERROR(
              AbortInTxn(&txn, std::move(c),
                         absl::StrCat("lease expired: no activity for ",
                                      absl::FormatDuration(options_.checkpoint_lease))));
          out->set_checkpoints_aborted(out->checkpoints_aborted() + 1);
          break;
        default:
          // ABORTED: remembered for one lease so that late calls of its ranks
          // get ABORTED, then forgotten.
          if (now - c.last_activity_unix_ms() >= lease_ms) {
            txn.batch.Delete(CheckpointKey(c.job_id(), c.step()));
          }
          break;
      }
    }
    if (job_changed) txn.batch.Put(JobKey(job.job_id()), job.SerializeAsString());
    if (!txn.empty()) SNAPBACK_RETURN_IF_ERROR(txn.Write());
  }
  return absl::OkStatus();
}

absl::Status CoordinatorStore::DeleteUnreferencedChunks(v1::CollectGarbageResponse* out) {
  const int64_t cutoff_ms = absl::ToUnixMillis(clock_->Now() - options_.gc_grace);
  // Claimed chunks stay in the queue; the cursor moves past them.
  std::string cursor(kZeroPrefix);
  for (;;) {
    // Decision, tier deletion and metadata removal of one batch happen under
    // one hold of the writer lock, which ClaimChunks also takes: a claim
    // cannot slip in between the decision and the deletion.
    absl::MutexLock lock(&mu_);
    std::vector<ChunkId> victims;
    std::vector<int64_t> zero_since;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(cursor); it->Valid() && it->key().starts_with(Sl(kZeroPrefix));
         it->Next()) {
      absl::string_view key = View(it->key());
      if (key.size() != kZeroPrefix.size() + 8 + 32) {
        return absl::DataLossError("malformed GC queue key");
      }
      const int64_t since =
          static_cast<int64_t>(GetBE(key.substr(kZeroPrefix.size()), 8));
      if (since > cutoff_ms) break;  // the queue is ordered by time
      cursor = absl::StrCat(key, absl::string_view("\0", 1));
      const ChunkId id = *ChunkId::FromBytes(key.substr(kZeroPrefix.size() + 8));
      if (claims_.contains(id)) continue;
      victims.push_back(id);
      zero_since.push_back(since);
      if (static_cast<int>(victims.size()) >= options_.gc_batch_chunks) break;
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    if (victims.empty()) return absl::OkStatus();
    // Tier first: if the metadata went first and we crashed, the chunks
    // would be stranded on the tier with nothing left to collect them.
    ++gc_generation_;
    SNAPBACK_RETURN_IF_ERROR(tier_->Delete(victims).status());
    Txn txn(this);
    for (size_t i = 0; i < victims.size(); ++i) {
      txn.batch.Delete(RefKey(victims[i]));
      txn.batch.Delete(ZeroKey(zero_since[i], victims[i]));
    }
    SNAPBACK_RETURN_IF_ERROR(txn.Write());
    out->set_chunks_deleted(out->chunks_deleted() + victims.size());
  }
}

}  // namespace snapback::coordinator
