// CoordinatorStore: the write path of one rank, Begin -> Claim* -> (upload)
// -> CommitRank, the global commit when the last rank commits, and
// AbortCheckpoint. The GC race these calls close is described in
// coordinator_store.h.
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_store.h"
#include "coordinator/keys.h"
#include "coordinator/manifest_validation.h"
#include "coordinator/txn.h"

namespace snapback::coordinator {

namespace {

// Tier checks CommitRank makes before giving up on a GC that keeps deleting
// chunks in between (UNAVAILABLE: retry the commit).
constexpr int kCommitAttempts = 3;

}  // namespace

using internal::AbortedError, internal::CheckpointKey, internal::CheckpointName,
    internal::ClaimKey, internal::DecodeTensorInfo, internal::DeletePrefix,
    internal::Dims, internal::EncodeTensorInfo, internal::FromRocks, internal::GetBE,
    internal::JobKey, internal::ListIds, internal::ManifestKey, internal::PutBE,
    internal::Quote, internal::RefRecord, internal::Region, internal::RegionPrefix,
    internal::Sl, internal::StepPrefix, internal::TensorInfo, internal::TensorInfoKey,
    internal::ValidManifest, internal::ValidRankRef, internal::ValidStep, internal::View,
    internal::kClaimNamed;
using v1::CheckpointInfo;
using v1::JobInfo;
using v1::RankManifest;
using v1::TensorEntry;

absl::StatusOr<int> CoordinatorStore::ReplicationFor(const JobInfo& job) {
  if (!tier_->clustered()) return tier_->replication();
  const int writable = static_cast<int>(tier_->WritableNodes().size());
  const int want =
      job.replication() > 0 ? job.replication() : tier_->DefaultReplication();
  if (writable == 0) {
    return absl::UnavailableError(
        "no storage node can take chunks (none is UP with free space); start storage "
        "nodes with `snapback-server --role storage --coordinator HOST:PORT` or free "
        "space on them, then retry");
  }
  if (want > writable && job.replication() == 0) {
    // A member node is restarting or being reconciled: wait for it rather
    // than commit this checkpoint to fewer copies for good.
    return absl::UnavailableError(absl::StrCat(
        "only ", writable, " storage node(s) can take chunks now and this job keeps ",
        want, " copies; a node is restarting or being checked: retry the save shortly"));
  }
  if (want > writable) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job.job_id(), " wants ", want, " copies of every chunk but only ",
        writable,
        " storage node(s) can take chunks; add nodes or register the job with "
        "a smaller replication"));
  }
  return want;
}

absl::StatusOr<v1::BeginCheckpointResponse> CoordinatorStore::BeginCheckpoint(
    const v1::BeginCheckpointRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  const v1::RankRef& ref = req.rank();
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadFencedJob(ref));
  const int64_t now = NowMs();
  absl::StatusOr<CheckpointInfo> ckpt = LoadCheckpoint(ref.job_id(), req.step());
  bool write = false;
  if (!ckpt.ok()) {
    if (!absl::IsNotFound(ckpt.status())) return ckpt.status();
    ckpt = CheckpointInfo();
    write = true;
  } else if (ckpt->state() == v1::COMMITTED) {
    return absl::AlreadyExistsError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " is already COMMITTED; nothing to save for this step"));
  } else if (ckpt->state() == v1::ABORTED) {
    if (ckpt->incarnation() >= ref.incarnation()) return AbortedError(*ckpt);
    // Left over from a previous run (its manifests and claims went with the
    // abort): this run saves the step afresh.
    ckpt = CheckpointInfo();
    write = true;
  } else {
    // Renewing a lease costs a synced write; skip it while the lease is
    // fresh, so W ranks joining one checkpoint do not cost W syncs.
    write = now - ckpt->last_activity_unix_ms() >=
            absl::ToInt64Milliseconds(options_.checkpoint_lease / 16);
  }
  if (write) {
    if (ckpt->job_id().empty()) {
      ckpt->set_job_id(ref.job_id());
      ckpt->set_step(req.step());
      ckpt->set_state(v1::WRITING);
      ckpt->set_incarnation(ref.incarnation());
      ckpt->set_created_unix_ms(now);
      SNAPBACK_ASSIGN_OR_RETURN(const int copies, ReplicationFor(job));
      ckpt->set_replication(copies);
    }
    ckpt->set_last_activity_unix_ms(now);
    Txn txn(this);
    txn.batch.Put(CheckpointKey(ref.job_id(), req.step()), ckpt->SerializeAsString());
    SNAPBACK_RETURN_IF_ERROR(txn.Write());
  }
  v1::BeginCheckpointResponse out;
  for (const std::string& e : tier_->endpoints()) out.add_storage_endpoints(e);
  out.set_replication(std::max(1, ckpt->replication()));
  if (tier_->clustered()) {
    for (v1::NodeInfo& n : tier_->WritableNodes()) *out.add_nodes() = std::move(n);
    out.set_node_map_version(tier_->MapVersion());
  }
  return out;
}

absl::StatusOr<v1::ClaimChunksResponse> CoordinatorStore::ClaimChunks(
    const v1::ClaimChunksRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  if (req.ids_size() > options_.max_claim_ids) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClaimChunks names ", req.ids_size(), " ids; the limit is ",
                     options_.max_claim_ids, ": split them over several calls"));
  }
  std::vector<ChunkId> ids;
  ids.reserve(req.ids_size());
  for (int i = 0; i < req.ids_size(); ++i) {
    absl::StatusOr<ChunkId> id = ChunkId::FromBytes(req.ids(i));
    if (!id.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ids[", i, "] is ", req.ids(i).size(),
                       " bytes; a chunk id is the 32-byte SHA-256 of its raw bytes"));
    }
    ids.push_back(*id);
  }
  const v1::RankRef& ref = req.rank();
  int copies = 1;
  {
    absl::MutexLock lock(&mu_);
    SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadFencedJob(ref));
    absl::StatusOr<CheckpointInfo> ckpt = LoadCheckpoint(ref.job_id(), req.step());
    if (absl::IsNotFound(ckpt.status())) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                       " was not begun: call BeginCheckpoint first"));
    }
    SNAPBACK_RETURN_IF_ERROR(ckpt.status());
    if (ckpt->state() == v1::ABORTED) return AbortedError(*ckpt);
    if (ckpt->state() == v1::COMMITTED) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                       " is already COMMITTED; its chunks need no claim"));
    }
    // The claims are durable before the tier is asked: from here on GC
    // cannot delete these chunks, so "present" stays true.
    Txn txn(this);
    absl::flat_hash_set<ChunkId> seen;
    for (const ChunkId& id : ids) {
      if (!seen.insert(id).second) continue;
      const std::string key = ClaimKey(ref.job_id(), req.step(), id);
      std::string value;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &value);
      if (s.IsNotFound()) {
        txn.batch.Put(key, "");
        txn.AddClaim(id, +1);
      } else {
        SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
      }
    }
    const int64_t now = NowMs();
    if (txn.batch.Count() > 0 ||
        now - ckpt->last_activity_unix_ms() >=
            absl::ToInt64Milliseconds(options_.checkpoint_lease / 16)) {
      ckpt->set_last_activity_unix_ms(now);
      txn.batch.Put(CheckpointKey(ref.job_id(), req.step()), ckpt->SerializeAsString());
    }
    SNAPBACK_RETURN_IF_ERROR(txn.Write());
    copies = std::max(1, ckpt->replication());
  }
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> present, tier_->Has(ids, copies));
  v1::ClaimChunksResponse out;
  for (bool p : present) out.add_present(p);
  return out;
}

absl::Status CoordinatorStore::PrepareCommit(
    const v1::CommitRankRequest& req, const std::string& manifest_bytes, JobInfo* job,
    CheckpointInfo* ckpt, std::optional<v1::CommitRankResponse>* replay) {
  const v1::RankRef& ref = req.rank();
  replay->reset();
  SNAPBACK_ASSIGN_OR_RETURN(*job, LoadFencedJob(ref));
  absl::StatusOr<CheckpointInfo> loaded = LoadCheckpoint(ref.job_id(), req.step());
  if (absl::IsNotFound(loaded.status())) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " was not begun: call BeginCheckpoint first"));
  }
  SNAPBACK_RETURN_IF_ERROR(loaded.status());
  *ckpt = *std::move(loaded);
  std::string stored;
  rocksdb::Status s = db_->Get(
      rocksdb::ReadOptions(), ManifestKey(ref.job_id(), req.step(), ref.rank()), &stored);
  if (s.ok()) {
    if (stored == manifest_bytes) {
      // A retry after a lost response: answer as the commit did.
      v1::CommitRankResponse& out = replay->emplace();
      out.set_checkpoint_committed(ckpt->state() == v1::COMMITTED);
      out.set_ranks_committed(ckpt->ranks_committed());
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", ref.rank(), " already committed a different manifest for checkpoint ",
        CheckpointName(ref.job_id(), req.step()),
        "; a committed rank's manifest cannot change: save a later step"));
  }
  if (!s.IsNotFound()) return FromRocks(s, "read");
  if (ckpt->state() == v1::ABORTED) return AbortedError(*ckpt);
  if (ckpt->state() == v1::COMMITTED) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " is already COMMITTED without rank ", ref.rank()));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::CommitRankResponse> CoordinatorStore::CommitRank(
    const v1::CommitRankRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  std::vector<ChunkId> ids;
  uint64_t logical_bytes = 0;
  {
    absl::Status valid = ValidManifest(req.manifest(), options_, &ids, &logical_bytes);
    if (!valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rank ", req.rank().rank(), "'s manifest for ",
          CheckpointName(req.rank().job_id(), req.step()), ": ", valid.message()));
    }
  }
  const std::string manifest_bytes = req.manifest().SerializeAsString();
  // Each pass checks the checkpoint under the lock, and commits if the tier
  // confirmed every chunk in the previous pass and GC deleted nothing since
  // (gc_generation_ unchanged); otherwise it asks the tier, without the
  // lock, and goes round again: at most kCommitAttempts tier checks.
  std::optional<uint64_t> confirmed;  // gc_generation_ before the last check
  for (int attempt = 0;; ++attempt) {
    uint64_t generation;
    int copies = 1;
    {
      absl::ReleasableMutexLock lock(&mu_);
      JobInfo job;
      CheckpointInfo ckpt;
      std::optional<v1::CommitRankResponse> replay;
      SNAPBACK_RETURN_IF_ERROR(PrepareCommit(req, manifest_bytes, &job, &ckpt, &replay));
      if (replay.has_value()) return *std::move(replay);
      if (confirmed.has_value() && *confirmed == gc_generation_) {
        absl::StatusOr<v1::CommitRankResponse> done = FinishCommit(
            req, manifest_bytes, ids, logical_bytes, std::move(job), std::move(ckpt));
        if (done.ok() && done->checkpoint_committed() && tier_->clustered()) {
          lock.Release();
          // The catalogue record goes to the tier so that the checkpoint
          // survives the loss of this coordinator's metadata. The
          // checkpoint is committed either way; a failure is logged.
          absl::Status published = PublishCommitted(req.rank().job_id(), req.step());
          if (!published.ok()) {
            SNAPBACK_LOG(Warning, "catalogue record of %s not stored on the tier: %s",
                         CheckpointName(req.rank().job_id(), req.step()),
                         published.ToString());
          }
        }
        return done;
      }
      // GC deleted chunks since the tier was asked (or it was not asked yet).
      if (attempt == kCommitAttempts) break;
      generation = gc_generation_;
      copies = std::max(1, ckpt.replication());
    }
    // The tier is asked without the lock (it may be remote). GC may delete
    // chunks meanwhile only if they are unclaimed; the generation check
    // of the next pass notices that and asks again.
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> present,
                              tier_->EnsureCopies(ids, copies));
    std::vector<ChunkId> missing;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!present[i]) missing.push_back(ids[i]);
    }
    if (!missing.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          missing.size(), " of the ", ids.size(), " chunks named by rank ",
          req.rank().rank(), "'s manifest for ",
          CheckpointName(req.rank().job_id(), req.step()), " are not durable on ", copies,
          " storage node(s): ", ListIds(missing),
          "; upload them first, then commit again"));
    }
    confirmed = generation;
  }
  return absl::UnavailableError(
      "garbage collection kept deleting chunks while this rank committed; retry the "
      "commit");
}

absl::StatusOr<v1::CommitRankResponse> CoordinatorStore::FinishCommit(
    const v1::CommitRankRequest& req, const std::string& manifest_bytes,
    const std::vector<ChunkId>& ids, uint64_t logical_bytes, JobInfo job,
    CheckpointInfo ckpt) {
  const v1::RankRef& ref = req.rank();
  const std::string& job_id = ref.job_id();
  const int64_t step = req.step();
  const RankManifest& manifest = req.manifest();
  const int64_t now = NowMs();
  const bool last = ckpt.ranks_committed() + 1 >= job.world_size();
  Txn txn(this);

  // Shards of one tensor name across ranks: the same dtype and global
  // shape, and regions that are identical (replicas) or disjoint. The index
  // ("t/" per name, "s/" per distinct region) lives only while WRITING, so
  // the last rank checks against it without adding to it.
  for (const TensorEntry& t : manifest.tensors()) {
    const std::string info_key = TensorInfoKey(job_id, step, t.name());
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), info_key, &value);
    TensorInfo info;
    const bool known = s.ok();
    if (known) {
      if (!DecodeTensorInfo(value, &info))
        return absl::DataLossError("malformed tensor info");
      const std::vector<int64_t> global(t.global_shape().begin(), t.global_shape().end());
      if (info.dtype != t.dtype() || info.global_shape != global) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", Quote(t.name()), " of checkpoint ", CheckpointName(job_id, step),
            ": rank ", ref.rank(), " has dtype ", t.dtype(), " and global_shape ",
            Dims(t.global_shape()), " but rank ", info.first_rank, " committed dtype ",
            info.dtype, " and global_shape [", absl::StrJoin(info.global_shape, ", "),
            "]; every shard of one tensor must agree"));
      }
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "read");
    } else {
      info.first_rank = ref.rank();
      info.dtype = t.dtype();
      info.global_shape.assign(t.global_shape().begin(), t.global_shape().end());
    }
    const int ndim = t.shape_size();
    bool empty = false;
    for (int64_t d : t.shape()) empty = empty || d == 0;
    bool replica = false;
    std::string region_key = RegionPrefix(job_id, step, t.name());
    if (!empty && ndim > 0) {
      for (int64_t o : t.global_offset()) PutBE(&region_key, static_cast<uint64_t>(o), 8);
      for (int64_t d : t.shape()) PutBE(&region_key, static_cast<uint64_t>(d), 8);
      // Only regions starting within max_extent0 before this one can reach
      // into it along dim 0, so the scan stays short for the usual dim-0
      // sharding however many ranks there are.
      const std::string prefix = RegionPrefix(job_id, step, t.name());
      const int64_t off0 = t.global_offset(0), end0 = off0 + t.shape(0);
      std::string seek = prefix;
      PutBE(&seek,
            static_cast<uint64_t>(std::max<int64_t>(0, off0 - info.max_extent0 + 1)), 8);
      std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
      for (it->Seek(seek); it->Valid() && it->key().starts_with(prefix); it->Next()) {
        absl::string_view r = View(it->key()).substr(prefix.size());
        if (r.size() != static_cast<size_t>(16 * ndim) || it->value().size() != 4) {
          return absl::DataLossError("malformed shard region record");
        }
        auto e_off = [&](int i) {
          return static_cast<int64_t>(GetBE(r.substr(8 * i), 8));
        };
        auto e_len = [&](int i) {
          return static_cast<int64_t>(GetBE(r.substr(8 * (ndim + i)), 8));
        };
        if (e_off(0) >= end0) break;
        bool same = true, disjoint = false;
        for (int i = 0; i < ndim; ++i) {
          const int64_t a0 = t.global_offset(i), a1 = a0 + t.shape(i);
          const int64_t b0 = e_off(i), b1 = b0 + e_len(i);
          same = same && a0 == b0 && a1 == b1;
          disjoint = disjoint || a1 <= b0 || b1 <= a0;
        }
        if (same) {
          replica = true;
          break;
        }
        if (!disjoint) {
          std::vector<int64_t> offs, lens;
          for (int i = 0; i < ndim; ++i) {
            offs.push_back(e_off(i));
            lens.push_back(e_len(i));
          }
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor ", Quote(t.name()), " of checkpoint ", CheckpointName(job_id, step),
              ": rank ", ref.rank(), "'s shard (", Region(t.global_offset(), t.shape()),
              ") partially overlaps rank ", GetBE(View(it->value()), 4),
              "'s shard (offset [", absl::StrJoin(offs, ", "), "], shape [",
              absl::StrJoin(lens, ", "),
              "]); shards of one tensor must be identical replicas or disjoint: fix "
              "global_offset/shape of one of them"));
        }
      }
      SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    } else if (!empty) {
      replica = known;  // a scalar: every copy is the same region
    }
    if (!last) {
      bool info_changed = !known;
      if (!empty && !replica) {
        std::string rank_value;
        PutBE(&rank_value, static_cast<uint32_t>(ref.rank()), 4);
        txn.batch.Put(region_key, rank_value);
        if (ndim > 0 && t.shape(0) > info.max_extent0) {
          info.max_extent0 = t.shape(0);
          info_changed = true;
        }
      }
      if (info_changed) txn.batch.Put(info_key, EncodeTensorInfo(info));
    }
  }

  txn.batch.Put(ManifestKey(job_id, step, ref.rank()), manifest_bytes);
  ckpt.set_ranks_committed(ckpt.ranks_committed() + 1);
  ckpt.set_logical_bytes(ckpt.logical_bytes() + logical_bytes);
  // The client's own account of what the save cost (informational).
  if (req.has_stats()) {
    // Figures past the checkpoint lease (a save idle that long is aborted)
    // are bogus or skewed: cut to it, so one rank cannot warp the report.
    v1::SaveStats st = req.stats();
    const int64_t max_us = absl::ToInt64Microseconds(options_.checkpoint_lease);
    st.set_blocked_us(std::clamp<int64_t>(st.blocked_us(), 0, max_us));
    st.set_to_durable_us(std::clamp<int64_t>(st.to_durable_us(), 0, max_us));
    ckpt.set_new_bytes(ckpt.new_bytes() + st.new_bytes());
    ckpt.set_sent_bytes(ckpt.sent_bytes() + st.sent_bytes());
    ckpt.set_max_blocked_us(
        std::max(ckpt.max_blocked_us(), std::max<int64_t>(0, st.blocked_us())));
    ckpt.set_max_to_durable_us(
        std::max(ckpt.max_to_durable_us(), std::max<int64_t>(0, st.to_durable_us())));
  }
  ckpt.set_last_activity_unix_ms(now);

  if (!last) {
    // The manifest's chunks are claimed (and marked as named by a committed
    // manifest) in the same batch, so GC leaves them alone from now on.
    for (const ChunkId& id : ids) {
      const std::string key = ClaimKey(job_id, step, id);
      std::string value;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &value);
      if (s.IsNotFound()) {
        txn.AddClaim(id, +1);
      } else {
        SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
      }
      if (!s.ok() || value != kClaimNamed) txn.batch.Put(key, Sl(kClaimNamed));
    }
  } else {
    // The global commit: every rank's chunks get one reference each, the
    // claims go, the shard index goes, latest moves — all in this batch.
    absl::flat_hash_set<ChunkId> named(ids.begin(), ids.end());
    std::vector<ChunkId> claimed;
    const std::string prefix = StepPrefix("k", job_id, step);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      const ChunkId id = *ChunkId::FromBytes(View(it->key()).substr(prefix.size()));
      if (View(it->value()) == kClaimNamed) named.insert(id);
      claimed.push_back(id);
      txn.batch.Delete(it->key());
      txn.AddClaim(id, -1);
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    for (const ChunkId& id : named) {
      SNAPBACK_ASSIGN_OR_RETURN(RefRecord * r, txn.Ref(id));
      r->exists = true;
      ++r->count;
    }
    for (const ChunkId& id : claimed) {
      SNAPBACK_RETURN_IF_ERROR(txn.ClaimReleased(id, now));
    }
    SNAPBACK_RETURN_IF_ERROR(
        DeletePrefix(db_.get(), &txn.batch, StepPrefix("s", job_id, step)));
    SNAPBACK_RETURN_IF_ERROR(
        DeletePrefix(db_.get(), &txn.batch, StepPrefix("t", job_id, step)));
    ckpt.set_state(v1::COMMITTED);
    ckpt.set_committed_unix_ms(now);
    if (step > job.latest_committed()) {
      job.set_latest_committed(step);
      txn.batch.Put(JobKey(job_id), job.SerializeAsString());
    }
  }
  txn.batch.Put(CheckpointKey(job_id, step), ckpt.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  v1::CommitRankResponse out;
  out.set_checkpoint_committed(last);
  out.set_ranks_committed(ckpt.ranks_committed());
  return out;
}

absl::StatusOr<v1::AbortCheckpointResponse> CoordinatorStore::AbortCheckpoint(
    const v1::AbortCheckpointRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidRankRef(req.rank()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  const v1::RankRef& ref = req.rank();
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadFencedJob(ref));
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt,
                            LoadCheckpoint(ref.job_id(), req.step()));
  if (ckpt.state() == v1::ABORTED) return v1::AbortCheckpointResponse();
  if (ckpt.state() == v1::COMMITTED) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(ref.job_id(), req.step()),
                     " is COMMITTED and cannot be aborted; an operator may delete it"));
  }
  Txn txn(this);
  SNAPBACK_RETURN_IF_ERROR(AbortInTxn(
      &txn, std::move(ckpt),
      absl::StrCat("aborted by rank ", ref.rank(),
                   req.reason().empty() ? "" : absl::StrCat(": ", req.reason()))));
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return v1::AbortCheckpointResponse();
}

}  // namespace snapback::coordinator
