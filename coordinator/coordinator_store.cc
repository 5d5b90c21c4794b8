// CoordinatorStore: opening the metadata database, rebuilding the in-memory
// claims, and the loaders every other part uses. The rest of the class is
// defined by responsibility across coordinator/ (see coordinator_store.h).
#include "coordinator/coordinator_store.h"

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>

#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/rocksdb_util.h"
#include "common/status_macros.h"
#include "coordinator/keys.h"
#include "coordinator/manifest_validation.h"
#include "coordinator/txn.h"

namespace snapback::coordinator {

using internal::CheckpointKey, internal::CheckpointName, internal::DecodeRef,
    internal::FromRocks, internal::JobCheckpointPrefix, internal::JobKey, internal::Quote,
    internal::RefKey, internal::RefRecord, internal::Sl, internal::View,
    internal::kClaimPrefix, internal::kFormatKey, internal::kFormatVersion;
using v1::CheckpointInfo;
using v1::JobInfo;

CoordinatorStore::CoordinatorStore(std::string dir, ChunkTier* tier,
                                   CoordinatorOptions options)
    : dir_(std::move(dir)),
      tier_(tier),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : RealClock()) {}

CoordinatorStore::~CoordinatorStore() {
  if (db_) (void)db_->Close();
}

absl::StatusOr<std::unique_ptr<CoordinatorStore>> CoordinatorStore::Open(
    const std::string& dir, ChunkTier* tier, CoordinatorOptions options) {
  if (tier == nullptr) return absl::InvalidArgumentError("no chunk tier");
  SNAPBACK_RETURN_IF_ERROR(ValidateCoordinatorOptions(options));
  std::unique_ptr<CoordinatorStore> store(
      new CoordinatorStore(dir, tier, std::move(options)));
  SNAPBACK_RETURN_IF_ERROR(store->Init());
  return store;
}

absl::Status CoordinatorStore::Init() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", dir_, ": ", ec.message()));
  }
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.paranoid_checks = true;
  // Small WAL/MANIFEST preallocation, info log through SNAPBACK_LOG.
  internal_rocksdb::ApplyCommonOptions(&db_options, "meta");
  // Same reasoning as the chunk index (storage/chunk_store.cc): the default
  // mode silently drops everything after a damaged WAL record, which here
  // would forget acknowledged commits and reference counts.
  db_options.wal_recovery_mode =
      options_.recovery == storage::IndexRecovery::kDropTornTail
          ? rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords
          : rocksdb::WALRecoveryMode::kAbsoluteConsistency;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir_, &db);
  if (!s.ok()) {
    if (s.IsCorruption()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "coordinator metadata in ", dir_, " is corrupt (", s.ToString(),
          "); refusing to open rather than forget committed checkpoints. Restore it "
          "from a backup; only if this machine lost power, restart once with "
          "--index-recovery=drop-torn-tail to drop an incomplete last WAL record"));
    }
    return FromRocks(s, "open");
  }
  db_.reset(db);

  std::string format;
  s = db_->Get(rocksdb::ReadOptions(), Sl(kFormatKey), &format);
  if (s.IsNotFound()) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    it->SeekToFirst();
    if (it->Valid()) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir_,
          " holds data without a snapback metadata format marker; it is not a "
          "coordinator metadata directory"));
    }
    rocksdb::WriteOptions write_options;
    write_options.sync = true;
    SNAPBACK_RETURN_IF_ERROR(
        FromRocks(db_->Put(write_options, Sl(kFormatKey), Sl(kFormatVersion)), "write"));
  } else if (!s.ok()) {
    return FromRocks(s, "read");
  } else if (format != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("coordinator metadata in ", dir_, " has format ", Quote(format),
                     "; this build reads format ", kFormatVersion,
                     ": run the snapback version that wrote it"));
  }

  // Claims are kept by checkpoint on disk; GC asks by chunk, so mirror them.
  absl::MutexLock lock(&mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(Sl(kClaimPrefix)); it->Valid() && it->key().starts_with(Sl(kClaimPrefix));
       it->Next()) {
    absl::string_view key = View(it->key());
    if (key.size() < 32) return absl::DataLossError("malformed claim key");
    ++claims_[*ChunkId::FromBytes(key.substr(key.size() - 32))];
  }
  return FromRocks(it->status(), "scan");
}

int64_t CoordinatorStore::NowMs() { return absl::ToUnixMillis(clock_->Now()); }

// ---------------------------------------------------------------------------
// Reads.

absl::StatusOr<JobInfo> CoordinatorStore::LoadJob(absl::string_view job_id) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), JobKey(job_id), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("job ", job_id, " is not registered; call RegisterJob first"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
  JobInfo job;
  if (!job.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("malformed job record for ", job_id));
  }
  return job;
}

absl::StatusOr<CheckpointInfo> CoordinatorStore::LoadCheckpoint(absl::string_view job_id,
                                                                int64_t step) {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), CheckpointKey(job_id, step), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", CheckpointName(job_id, step), " does not exist"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(s, "read"));
  CheckpointInfo ckpt;
  if (!ckpt.ParseFromString(value)) {
    return absl::DataLossError(
        absl::StrCat("malformed checkpoint record for ", CheckpointName(job_id, step)));
  }
  return ckpt;
}

absl::StatusOr<std::vector<CheckpointInfo>> CoordinatorStore::LoadCheckpoints(
    absl::string_view job_id) {
  std::vector<CheckpointInfo> out;
  const std::string prefix = JobCheckpointPrefix(job_id);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    CheckpointInfo& ckpt = out.emplace_back();
    if (!ckpt.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(
          absl::StrCat("malformed checkpoint record in job ", job_id));
    }
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  return out;
}

absl::StatusOr<std::vector<JobInfo>> CoordinatorStore::LoadJobs() {
  std::vector<JobInfo> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("j/"); it->Valid() && it->key().starts_with("j/"); it->Next()) {
    JobInfo& job = out.emplace_back();
    if (!job.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError("malformed job record");
    }
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  return out;
}

int64_t CoordinatorStore::TEST_Refcount(const ChunkId& id) {
  absl::ReaderMutexLock lock(&mu_);
  std::string value;
  RefRecord r;
  if (!db_->Get(rocksdb::ReadOptions(), RefKey(id), &value).ok() ||
      !DecodeRef(value, &r)) {
    return -1;
  }
  return static_cast<int64_t>(r.count);
}

int CoordinatorStore::TEST_Claims(const ChunkId& id) {
  absl::ReaderMutexLock lock(&mu_);
  auto it = claims_.find(id);
  return it == claims_.end() ? 0 : it->second;
}

}  // namespace snapback::coordinator
