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

}  // namespace snapback::coordinator
