// CoordinatorStore: jobs, the failure detector's incidents, and incarnation
// fencing.
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_store.h"
#include "coordinator/keys.h"
#include "coordinator/manifest_validation.h"
#include "coordinator/txn.h"

namespace snapback::coordinator {

using internal::CheckRankInRange, internal::FromRocks, internal::IncidentPrefix,
    internal::JobRunPrefix, internal::JobKey, internal::PutBE, internal::Quote,
    internal::Sl, internal::ValidJobId, internal::ValidWorldSize;
using v1::CheckpointInfo;
using v1::JobInfo;

absl::StatusOr<v1::RegisterJobResponse> CoordinatorStore::RegisterJob(
    const v1::RegisterJobRequest& req) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(req.job_id()));
  SNAPBACK_RETURN_IF_ERROR(ValidWorldSize(req.world_size()));
  if (req.replication() < 0 || req.replication() > kMaxReplication) {
    return absl::InvalidArgumentError(
        absl::StrCat("replication ", req.replication(), " is out of range; use 1..",
                     kMaxReplication, ", or 0 for the default (min(2, storage nodes))"));
  }
  absl::MutexLock lock(&mu_);
  v1::RegisterJobResponse out;
  absl::StatusOr<JobInfo> existing = LoadJob(req.job_id());
  if (existing.ok()) {
    if (existing->world_size() != req.world_size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", req.job_id(), " exists with world_size ", existing->world_size(),
          ", not ", req.world_size(),
          "; a job's world size never changes: register a new job id (resharding "
          "happens when restoring)"));
    }
    if (!req.scheduler().empty() &&
        (req.scheduler() != existing->scheduler() ||
         req.scheduler_job_id() != existing->scheduler_job_id())) {
      // The job now runs under another launcher or scheduler job: the
      // detector must restart it through that one.
      existing->set_scheduler(req.scheduler());
      existing->set_scheduler_job_id(req.scheduler_job_id());
      Txn txn(this);
      txn.batch.Put(JobKey(existing->job_id()), existing->SerializeAsString());
      SNAPBACK_RETURN_IF_ERROR(txn.Write());
    }
    *out.mutable_job() = *std::move(existing);
    out.set_created(false);
    return out;
  }
  if (!absl::IsNotFound(existing.status())) return existing.status();

  JobInfo job;
  job.set_job_id(req.job_id());
  job.set_world_size(req.world_size());
  if (req.has_retention()) {
    *job.mutable_retention() = req.retention();
  } else {
    job.mutable_retention()->set_keep_last(options_.default_keep_last);
  }
  job.set_incarnation(0);
  job.set_restore_target(-1);
  job.set_latest_committed(-1);
  job.set_scheduler(req.scheduler());
  job.set_scheduler_job_id(req.scheduler_job_id());
  job.set_replication(req.replication());
  Txn txn(this);
  txn.batch.Put(JobKey(job.job_id()), job.SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  *out.mutable_job() = std::move(job);
  out.set_created(true);
  return out;
}

absl::StatusOr<JobInfo> CoordinatorStore::DescribeJob(absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  return LoadJob(job_id);
}

absl::StatusOr<JobInfo> CoordinatorStore::AdvanceIncarnation(absl::string_view job_id,
                                                             int64_t at_least) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::MutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(job_id));
  v1::RankRef ref;
  ref.set_job_id(std::string(job_id));
  ref.set_incarnation(std::max<int64_t>(job.incarnation() + 1, at_least));
  SNAPBACK_RETURN_IF_ERROR(Fence(ref, &job));
  return job;
}

namespace {

// The per-job logs of numbered records (incidents, runs): "<prefix><n:8>".
// Writes record `n` (synced); the caller holds the store's lock.
absl::Status PutNumbered(rocksdb::DB* db, std::string key, int64_t n,
                         const google::protobuf::Message& record,
                         absl::string_view what) {
  if (n < 0)
    return absl::InvalidArgumentError(absl::StrCat(what, " number must be >= 0"));
  PutBE(&key, static_cast<uint64_t>(n), 8);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(db->Put(wo, Sl(key), record.SerializeAsString()),
                   absl::StrCat("write ", what));
}

// Every record under `prefix`, in order; the caller holds the store's lock.
template <typename Proto>
absl::StatusOr<std::vector<Proto>> ListNumbered(rocksdb::DB* db,
                                                const std::string& prefix,
                                                absl::string_view what,
                                                absl::string_view job_id) {
  std::vector<Proto> out;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    Proto record;
    if (!record.ParseFromArray(it->value().data(),
                               static_cast<int>(it->value().size()))) {
      return absl::DataLossError(
          absl::StrCat("malformed ", what, " record of job ", Quote(job_id)));
    }
    out.push_back(std::move(record));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), absl::StrCat("scan ", what, "s")));
  return out;
}

}  // namespace

absl::Status CoordinatorStore::PutIncident(const v1::Incident& incident) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(incident.job_id()));
  absl::MutexLock lock(&mu_);
  return PutNumbered(db_.get(), IncidentPrefix(incident.job_id()), incident.seq(),
                     incident, "incident");
}

absl::StatusOr<std::vector<v1::Incident>> CoordinatorStore::ListIncidents(
    absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  return ListNumbered<v1::Incident>(db_.get(), IncidentPrefix(job_id), "incident",
                                    job_id);
}

absl::Status CoordinatorStore::PutJobRun(const v1::JobRun& run) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(run.job_id()));
  absl::MutexLock lock(&mu_);
  return PutNumbered(db_.get(), JobRunPrefix(run.job_id()), run.run(), run, "job run");
}

absl::StatusOr<std::vector<v1::JobRun>> CoordinatorStore::ListJobRuns(
    absl::string_view job_id) {
  SNAPBACK_RETURN_IF_ERROR(ValidJobId(job_id));
  absl::ReaderMutexLock lock(&mu_);
  return ListNumbered<v1::JobRun>(db_.get(), JobRunPrefix(job_id), "job run", job_id);
}

absl::Status CoordinatorStore::AppendAudit(v1::AuditEntry entry) {
  constexpr absl::string_view kAuditPrefix = "a/";
  if (entry.reason().size() > 1024) entry.mutable_reason()->resize(1024);
  if (entry.outcome().size() > 1024) entry.mutable_outcome()->resize(1024);
  absl::MutexLock lock(&mu_);
  // The next sequence number: one past the last key of the table.
  uint64_t seq = 0;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    it->SeekForPrev("a0");  // '0' sorts right after '/': the table's end
    if (it->Valid() && it->key().starts_with(Sl(kAuditPrefix)) &&
        it->key().size() == 10) {
      seq = internal::GetBE(absl::string_view(it->key().data() + 2, 8), 8) + 1;
    }
    SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan audit log"));
  }
  entry.set_seq(static_cast<int64_t>(seq));
  std::string key(kAuditPrefix);
  PutBE(&key, seq, 8);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(db_->Put(wo, Sl(key), entry.SerializeAsString()), "write audit log");
}

absl::StatusOr<std::vector<v1::AuditEntry>> CoordinatorStore::ListAudit(int limit) {
  if (limit <= 0) limit = 1000;
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::AuditEntry> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekForPrev("a0");
       it->Valid() && it->key().starts_with("a/") && static_cast<int>(out.size()) < limit;
       it->Prev()) {
    v1::AuditEntry e;
    if (!e.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError("malformed audit record");
    }
    out.push_back(std::move(e));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan audit log"));
  std::reverse(out.begin(), out.end());
  return out;
}

absl::StatusOr<v1::ListJobsResponse> CoordinatorStore::ListJobs() {
  absl::ReaderMutexLock lock(&mu_);
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<JobInfo> jobs, LoadJobs());
  v1::ListJobsResponse out;
  for (JobInfo& job : jobs) *out.add_jobs() = std::move(job);
  return out;
}

// ---------------------------------------------------------------------------
// Fencing (abort and delete: checkpoints.cc).

absl::StatusOr<JobInfo> CoordinatorStore::LoadFencedJob(const v1::RankRef& ref) {
  SNAPBACK_ASSIGN_OR_RETURN(JobInfo job, LoadJob(ref.job_id()));
  SNAPBACK_RETURN_IF_ERROR(CheckRankInRange(ref, job));
  SNAPBACK_RETURN_IF_ERROR(Fence(ref, &job));
  return job;
}

absl::Status CoordinatorStore::Fence(const v1::RankRef& ref, JobInfo* job) {
  if (ref.incarnation() < job->incarnation()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stale incarnation ", ref.incarnation(), "; the job is at incarnation ",
        job->incarnation(), ": this process belongs to a previous run and must exit"));
  }
  if (ref.incarnation() == job->incarnation()) return absl::OkStatus();
  // A newer run of the job: its predecessor's unfinished checkpoints can
  // never complete (their ranks are gone or fenced), so release their claims
  // now rather than one lease later.
  Txn txn(this);
  job->set_incarnation(ref.incarnation());
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<CheckpointInfo> ckpts,
                            LoadCheckpoints(job->job_id()));
  // A run that restores an operator's target rolls the job back: the older
  // runs' committed checkpoints after the target belong to an abandoned
  // timeline. They are retired (deleted, pinned ones kept), so the new run's
  // saves of those steps do not collide with them and "latest" can never
  // name one again once the target is cleared.
  const int64_t target = job->restore_target();
  std::vector<int64_t> retired;
  for (CheckpointInfo& ckpt : ckpts) {
    if (ckpt.state() == v1::WRITING && ckpt.incarnation() < ref.incarnation()) {
      SNAPBACK_RETURN_IF_ERROR(
          AbortInTxn(&txn, std::move(ckpt),
                     absl::StrCat("superseded by incarnation ", ref.incarnation())));
    } else if (target >= 0 && ckpt.state() == v1::COMMITTED && ckpt.step() > target &&
               ckpt.incarnation() < ref.incarnation() && !ckpt.pinned()) {
      SNAPBACK_RETURN_IF_ERROR(DeleteCommittedInTxn(&txn, ckpt, job));
      retired.push_back(ckpt.step());
    }
  }
  txn.batch.Put(JobKey(job->job_id()), job->SerializeAsString());
  SNAPBACK_RETURN_IF_ERROR(txn.Write());
  if (!retired.empty()) {
    SNAPBACK_LOG(Info,
                 "job %s: incarnation %d restores the operator's target step %d; retired "
                 "the later checkpoints of the abandoned timeline: steps %s",
                 job->job_id(), ref.incarnation(), target, absl::StrJoin(retired, ", "));
  }
  return absl::OkStatus();
}

}  // namespace snapback::coordinator
