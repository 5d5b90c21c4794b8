// CoordinatorStore: the read path (GetLatest, GetManifest, ListCheckpoints),
// the operator calls (pin, delete, restore target), and the two ways a
// checkpoint ends early: abort (WRITING) and delete (COMMITTED).
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
#include "coordinator/manifest_validation.h"
#include "coordinator/txn.h"

namespace snapback::coordinator {

using internal::AddChunkIds, internal::CheckpointKey, internal::CheckpointName,
    internal::DeletePrefix, internal::FromRocks, internal::JobKey, internal::ManifestKey,
    internal::RefRecord, internal::StateName, internal::StepPrefix, internal::ValidJobId,
    internal::ValidStep, internal::View, internal::kMaxReasonBytes;
using v1::CheckpointInfo;
using v1::JobInfo;
using v1::RankManifest;

absl::Status CoordinatorStore::ReleaseClaimsInTxn(Txn* txn, absl::string_view job_id,
                                                  int64_t step) {
  const std::string prefix = StepPrefix("k", job_id, step);
  const int64_t now = NowMs();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    const ChunkId id = *ChunkId::FromBytes(View(it->key()).substr(prefix.size()));
    txn->batch.Delete(it->key());
    txn->AddClaim(id, -1);
    SNAPBACK_RETURN_IF_ERROR(txn->ClaimReleased(id, now));
  }
  return FromRocks(it->status(), "scan");
}

absl::Status CoordinatorStore::AbortInTxn(Txn* txn, CheckpointInfo ckpt,
                                          absl::string_view reason) {
  const std::string& job = ckpt.job_id();
  const int64_t step = ckpt.step();
  SNAPBACK_RETURN_IF_ERROR(
      DeletePrefix(db_.get(), &txn->batch, StepPrefix("m", job, step)));
  SNAPBACK_RETURN_IF_ERROR(
      DeletePrefix(db_.get(), &txn->batch, StepPrefix("s", job, step)));
  SNAPBACK_RETURN_IF_ERROR(
      DeletePrefix(db_.get(), &txn->batch, StepPrefix("t", job, step)));
  SNAPBACK_RETURN_IF_ERROR(ReleaseClaimsInTxn(txn, job, step));
  ckpt.set_state(v1::ABORTED);
  ckpt.set_abort_reason(std::string(reason.substr(0, kMaxReasonBytes)));
  ckpt.set_last_activity_unix_ms(NowMs());
  txn->batch.Put(CheckpointKey(job, step), ckpt.SerializeAsString());
  return absl::OkStatus();
}

absl::Status CoordinatorStore::DeleteCommittedInTxn(Txn* txn, const CheckpointInfo& ckpt,
                                                    JobInfo* job) {
  const std::string& job_id = ckpt.job_id();
  const int64_t step = ckpt.step();
  const int64_t now = NowMs();
  // One reference per distinct chunk of the checkpoint, as CommitRank added.
  absl::flat_hash_set<ChunkId> ids;
  const std::string prefix = StepPrefix("m", job_id, step);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    RankManifest m;
    if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("malformed manifest in checkpoint ",
                                              CheckpointName(job_id, step)));
    }
    AddChunkIds(m, &ids);
    txn->batch.Delete(it->key());
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  for (const ChunkId& id : ids) {
    SNAPBACK_ASSIGN_OR_RETURN(RefRecord * r, txn->Ref(id));
    if (!r->exists || r->count == 0) {
      return absl::DataLossError(absl::StrCat(
          "chunk ", id.ToHex(), " of committed checkpoint ", CheckpointName(job_id, step),
          " has no reference; the metadata is inconsistent (run a consistency check)"));
    }
    if (--r->count == 0) r->zero_since_ms = now;
  }
  const std::string key = CheckpointKey(job_id, step);
  txn->batch.Delete(key);
  txn->deleted_checkpoints.insert(key);
  if (job->latest_committed() == step) {
    int64_t latest = -1;
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts, LoadCheckpoints(job_id));
    for (const CheckpointInfo& c : ckpts) {
      if (c.state() == v1::COMMITTED &&
          !txn->deleted_checkpoints.contains(CheckpointKey(job_id, c.step()))) {
        latest = std::max(latest, c.step());
      }
    }
    job->set_latest_committed(latest);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::GetLatestResponse> CoordinatorStore::GetLatest(
    absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  v1::GetLatestResponse out;
  if (job.restore_target() >= 0) {
    out.set_step(job.restore_target());
    out.set_is_restore_target(true);
  } else if (job.latest_committed() >= 0) {
    out.set_step(job.latest_committed());
  } else {
    return absl::NotFoundError(absl::StrCat(
        "job ", job_id, " has no committed checkpoint yet: start training from scratch"));
  }
  return out;
}

absl::StatusOr<v1::GetManifestResponse> CoordinatorStore::GetManifest(
    const v1::GetManifestRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(req.job_id()));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(req.step()));
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(req.job_id()));
  if (req.rank() < 0 || req.rank() >= job.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", req.rank(),
                                                   " is out of range: job ", req.job_id(),
                                                   " has world_size ", job.world_size()));
  }
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt,
                            LoadCheckpoint(req.job_id(), req.step()));
  if (ckpt.state() != v1::COMMITTED) {
    return absl::NotFoundError(absl::StrCat(
        "checkpoint ", CheckpointName(req.job_id(), req.step()), " is ",
        StateName(ckpt.state()), " (", ckpt.ranks_committed(), " of ", job.world_size(),
        " ranks committed); only COMMITTED checkpoints can be read: ask GetLatest "
        "which step to restore"));
  }
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(),
                               ManifestKey(req.job_id(), req.step(), req.rank()), &value);
  v1::GetManifestResponse out;
  if (s.IsNotFound() || (s.ok() && !out.mutable_manifest()->ParseFromString(value))) {
    return absl::DataLossError(
        absl::StrCat("manifest of rank ", req.rank(), " of committed checkpoint ",
                     CheckpointName(req.job_id(), req.step()),
                     " is missing or malformed; the metadata is damaged"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
  out.set_world_size(job.world_size());
  for (const std::string& e : tier_->endpoints()) out.add_storage_endpoints(e);
  if (tier_->clustered()) {
    for (v1::NodeInfo& n : tier_->ReadableNodes()) *out.add_nodes() = std::move(n);
  }
  return out;
}

absl::StatusOr<v1::ListCheckpointsResponse> CoordinatorStore::ListCheckpoints(
    absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_RETURN_IF_ERROR(LoadJob(job_id).status());
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts, LoadCheckpoints(job_id));
  v1::ListCheckpointsResponse out;
  for (CheckpointInfo& c : ckpts) *out.add_checkpoints() = std::move(c);
  return out;
}

absl::StatusOr<CheckpointInfo> CoordinatorStore::PinCheckpoint(absl::string_view job_id,
                                                               int64_t step,
                                                               bool pinned) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(step));
  absl::MutexLock lock(&mu_);
  SNAPBACK_RETURN_IF_ERROR(LoadJob(job_id).status());
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
  if (pinned && ckpt.state() != v1::COMMITTED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", CheckpointName(job_id, step), " is ", StateName(ckpt.state()),
        "; only COMMITTED checkpoints can be pinned"));
  }
  if (ckpt.pinned() == pinned) return ckpt;
  ckpt.set_pinned(pinned);
  Txn txn(this);
  txn.batch.Put(CheckpointKey(job_id, step), ckpt.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return ckpt;
}

absl::StatusOr<v1::DeleteCheckpointResponse> CoordinatorStore::DeleteCheckpoint(
    absl::string_view job_id, int64_t step) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(step));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
  if (ckpt.pinned()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", CheckpointName(job_id, step), " is pinned; unpin first"));
  }
  if (job.restore_target() == step) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", CheckpointName(job_id, step),
                     " is the job's restore target; clear the restore target first"));
  }
  Txn txn(this);
  switch (ckpt.state()) {
    case v1::COMMITTED:
      SNAPBACK_RETURN_IF_ERROR(DeleteCommittedInTxn(&txn, ckpt, &job));
      txn.batch.Put(JobKey(job_id), job.SerializeAsString());
      break;
    case v1::WRITING:
      SNAPBACK_RETURN_IF_ERROR(
          AbortInTxn(&txn, std::move(ckpt), "deleted by an operator while WRITING"));
      break;
    default:  // ABORTED: nothing left but the record
      txn.batch.Delete(CheckpointKey(job_id, step));
      break;
  }
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return v1::DeleteCheckpointResponse();
}

absl::StatusOr<JobInfo> CoordinatorStore::SetRestoreTarget(absl::string_view job_id,
                                                           int64_t step) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  SNAPBACK_RETURN_IF_ERROR(ValidStep(step));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
  if (ckpt.state() != v1::COMMITTED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", CheckpointName(job_id, step), " is ", StateName(ckpt.state()),
        "; only a COMMITTED checkpoint can be the restore target"));
  }
  if (job.restore_target() == step) return job;
  job.set_restore_target(step);
  Txn txn(this);
  txn.batch.Put(JobKey(job_id), job.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return job;
}

absl::StatusOr<JobInfo> CoordinatorStore::ClearRestoreTarget(absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  if (job.restore_target() < 0) return job;
  job.set_restore_target(-1);
  Txn txn(this);
  txn.batch.Put(JobKey(job_id), job.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return job;
}

absl::StatusOr<std::vector<VerifyTarget>> CoordinatorStore::VerifyTargets(
    absl::string_view job_id, int64_t step) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  if (step != -1) SNAPBACK_RETURN_IF_ERROR(ValidStep(step));
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  std::vector<CheckpointInfo> ckpts;
  if (step >= 0) {
    SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
    if (ckpt.state() != v1::COMMITTED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", CheckpointName(job_id, step), " is ", StateName(ckpt.state()),
          "; only COMMITTED checkpoints can be verified"));
    }
    ckpts.push_back(std::move(ckpt));
  } else {
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> all, LoadCheckpoints(job_id));
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (it->state() == v1::COMMITTED) ckpts.push_back(std::move(*it));
    }
    if (ckpts.empty()) {
      return absl::NotFoundError(
          absl::StrCat("job ", job_id, " has no committed checkpoint to verify"));
    }
  }
  std::vector<VerifyTarget> out;
  for (CheckpointInfo& ckpt : ckpts) {
    VerifyTarget& t = out.emplace_back();
    absl::flat_hash_set<ChunkId> seen;
    for (int32_t rank = 0; rank < job.world_size(); ++rank) {
      std::string value;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(),
                                   ManifestKey(job_id, ckpt.step(), rank), &value);
      RankManifest m;
      if (s.IsNotFound() || (s.ok() && !m.ParseFromString(value))) {
        return absl::DataLossError(absl::StrCat(
            "manifest of rank ", rank, " of committed checkpoint ",
            CheckpointName(job_id, ckpt.step()),
            " is missing or malformed; the metadata is damaged (run a consistency "
            "check)"));
      }
      SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
      auto add = [&](const std::string& name,
                     const google::protobuf::RepeatedPtrField<v1::ChunkRef>& chunks) {
        const int32_t entry = static_cast<int32_t>(t.entries.size());
        t.entries.push_back(name);
        for (int i = 0; i < chunks.size(); ++i) {
          absl::StatusOr<ChunkId> id = ChunkId::FromBytes(chunks[i].id());
          if (!id.ok() || !seen.insert(*id).second) continue;
          t.chunks.push_back({*id, chunks[i].length(), rank, entry, i});
        }
      };
      for (const v1::TensorEntry& e : m.tensors()) add(e.name(), e.chunks());
      for (const v1::BlobEntry& e : m.blobs()) add("blob:" + e.name(), e.chunks());
    }
    t.checkpoint = std::move(ckpt);
  }
  return out;
}

absl::StatusOr<CheckpointInfo> CoordinatorStore::RecordVerification(
    const CheckpointInfo& verified, bool damaged, absl::string_view reason) {
  const std::string& job_id = verified.job_id();
  const int64_t step = verified.step();
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(CheckpointInfo ckpt, LoadCheckpoint(job_id, step));
  // Conditional: the verdict is about the chunks of the checkpoint that was
  // read, not of one that replaced it since.
  if (ckpt.state() != v1::COMMITTED || ckpt.incarnation() != verified.incarnation() ||
      ckpt.committed_unix_ms() != verified.committed_unix_ms()) {
    return absl::AbortedError(
        absl::StrCat("checkpoint ", CheckpointName(job_id, step),
                     " changed while it was verified; verify it again"));
  }
  ckpt.set_damaged(damaged);
  ckpt.set_damage_reason(damaged ? std::string(reason.substr(0, kMaxReasonBytes)) : "");
  ckpt.set_verified_unix_ms(damaged ? 0 : NowMs());
  Txn txn(this);
  txn.batch.Put(CheckpointKey(job_id, step), ckpt.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return ckpt;
}

}  // namespace snapback::coordinator
