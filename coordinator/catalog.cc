// CoordinatorStore as the cluster tier's CatalogView: which chunks committed
// checkpoints need (newest first) and which chunks are still wanted.
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_store.h"
#include "coordinator/keys.h"
#include "coordinator/manifest_validation.h"
#include "coordinator/txn.h"

namespace snapback::coordinator {

using internal::FromRocks, internal::RefKey, internal::StepPrefix;
using v1::CheckpointInfo;
using v1::JobInfo;
using v1::RankManifest;

absl::Status CoordinatorStore::ForEachCommittedChunk(
    const std::function<bool(const ChunkId&, uint32_t, int)>& fn) {
  // Collected under the lock, handed out without it (fn may be slow).
  struct Entry {
    ChunkId id;
    uint32_t length;
    int want;
  };
  std::vector<Entry> entries;
  {
    absl::ReaderMutexLock lock(&mu_);
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<JobInfo> jobs, LoadJobs());
    std::vector<CheckpointInfo> committed;
    for (const JobInfo& job : jobs) {
      SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts,
                                LoadCheckpoints(job.job_id()));
      for (CheckpointInfo& c : ckpts) {
        if (c.state() == v1::COMMITTED) committed.push_back(std::move(c));
      }
    }
    std::sort(committed.begin(), committed.end(),
              [](const CheckpointInfo& a, const CheckpointInfo& b) {
                return std::make_tuple(b.committed_unix_ms(), b.step(), b.job_id()) <
                       std::make_tuple(a.committed_unix_ms(), a.step(), a.job_id());
              });
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (const CheckpointInfo& c : committed) {
      const int want = std::max(1, c.replication());
      const std::string prefix = StepPrefix("m", c.job_id(), c.step());
      for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
        RankManifest m;
        if (!m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
          return absl::DataLossError(
              absl::StrCat("malformed manifest of ", c.job_id(), " step ", c.step()));
        }
        auto add = [&](const auto& refs) {
          for (const v1::ChunkRef& r : refs) {
            absl::StatusOr<ChunkId> id = ChunkId::FromBytes(r.id());
            if (id.ok()) entries.push_back({*id, r.length(), want});
          }
        };
        for (const auto& t : m.tensors()) add(t.chunks());
        for (const auto& b : m.blobs()) add(b.chunks());
      }
      SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
    }
  }
  for (const Entry& e : entries) {
    if (!fn(e.id, e.length, e.want)) break;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<bool>> CoordinatorStore::Wanted(
    absl::Span<const ChunkId> ids) {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<bool> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (claims_.contains(ids[i])) {
      out[i] = true;
      continue;
    }
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), RefKey(ids[i]), &value);
    if (s.ok()) {
      out[i] = true;
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "read");
    }
  }
  return out;
}

absl::Status CoordinatorStore::PublishCommitted(const std::string& job_id, int64_t step) {
  v1::CatalogRecord record;
  {
    absl::ReaderMutexLock lock(&mu_);
    SNAPBACK_ASSIGN_OR_RETURN(*record.mutable_job(), LoadJob(job_id));
    SNAPBACK_ASSIGN_OR_RETURN(*record.mutable_checkpoint(), LoadCheckpoint(job_id, step));
    if (record.checkpoint().state() != v1::COMMITTED) return absl::OkStatus();
    const std::string prefix = StepPrefix("m", job_id, step);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      if (!record.add_manifests()->ParseFromArray(it->value().data(),
                                                  static_cast<int>(it->value().size()))) {
        return absl::DataLossError("malformed manifest");
      }
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  }
  return tier_->PublishCatalog(internal::CheckpointKey(job_id, step),
                               record.SerializeAsString(),
                               std::max(1, record.checkpoint().replication()));
}

absl::StatusOr<bool> CoordinatorStore::ImportCommitted(const v1::CatalogRecord& record) {
  const JobInfo& in_job = record.job();
  const CheckpointInfo& in = record.checkpoint();
  SNAPBACK_RETURN_IF_ERROR(internal::ValidJobId(in_job.job_id()));
  SNAPBACK_RETURN_IF_ERROR(internal::ValidWorldSize(in_job.world_size()));
  if (in.job_id() != in_job.job_id() || in.state() != v1::COMMITTED || in.step() < 0 ||
      record.manifests_size() != in_job.world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("catalogue record of ", in.job_id(), " step ", in.step(),
                     " is inconsistent (job, state or manifest count)"));
  }
  absl::MutexLock lock(&mu_);
  absl::StatusOr<CheckpointInfo> existing = LoadCheckpoint(in.job_id(), in.step());
  if (existing.ok()) return false;
  if (!absl::IsNotFound(existing.status())) return existing.status();
  absl::StatusOr<JobInfo> job = LoadJob(in_job.job_id());
  if (absl::IsNotFound(job.status())) {
    job = in_job;
    job->set_restore_target(-1);
    job->set_latest_committed(-1);
  } else if (!job.ok()) {
    return job.status();
  }
  if (job->world_size() != in_job.world_size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", in_job.job_id(), " has checkpoints of two world sizes"));
  }
  job->set_incarnation(std::max(job->incarnation(), in_job.incarnation()));
  job->set_latest_committed(std::max(job->latest_committed(), in.step()));
  Txn txn(this);
  absl::flat_hash_set<ChunkId> ids;
  for (int r = 0; r < record.manifests_size(); ++r) {
    const RankManifest& m = record.manifests(r);
    txn.batch.Put(internal::ManifestKey(in.job_id(), in.step(), r),
                  m.SerializeAsString());
    internal::AddChunkIds(m, &ids);
  }
  for (const ChunkId& id : ids) {
    SNAPBACK_ASSIGN_OR_RETURN(internal::RefRecord * ref, txn.Ref(id));
    ref->exists = true;
    ++ref->count;
  }
  CheckpointInfo ckpt = in;
  ckpt.set_pinned(in.pinned());
  txn.batch.Put(internal::CheckpointKey(in.job_id(), in.step()),
                ckpt.SerializeAsString());
  txn.batch.Put(internal::JobKey(in_job.job_id()), job->SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  return true;
}

}  // namespace snapback::coordinator
