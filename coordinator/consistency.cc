// CoordinatorStore::CheckConsistency: a full scan of the metadata that
// recomputes every invariant (refcounts from the manifests, claims, the GC
// queue, latest_committed, restore targets). For tests and operators.
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_store.h"
#include "coordinator/keys.h"
#include "coordinator/manifest_validation.h"
#include "coordinator/txn.h"

namespace snapback::coordinator {

using internal::AddChunkIds, internal::CheckpointName, internal::DecodeRef,
    internal::FromRocks, internal::ListIds, internal::ParseStepKey, internal::PutBE,
    internal::RefRecord, internal::Sl, internal::View, internal::ZeroKey,
    internal::kClaimNamed, internal::kClaimPrefix, internal::kRefPrefix,
    internal::kZeroPrefix;
using v1::CheckpointInfo;
using v1::JobInfo;
using v1::RankManifest;

absl::StatusOr<ConsistencyReport> CoordinatorStore::CheckConsistency(bool check_tier) {
  absl::ReaderMutexLock lock(&mu_);
  ConsistencyReport report;
  std::vector<std::string> problems;
  auto problem = [&](std::string p) {
    if (problems.size() < 10) problems.push_back(std::move(p));
  };

  absl::flat_hash_map<std::string, JobInfo> jobs;
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<JobInfo> job_list, LoadJobs());
  for (JobInfo& j : job_list) jobs[j.job_id()] = std::move(j);
  report.jobs = jobs.size();

  struct Ckpt {
    CheckpointInfo info;
    int manifests = 0;
    absl::flat_hash_set<ChunkId> named;  // chunks of its manifests
  };
  absl::flat_hash_map<std::string, Ckpt> ckpts;  // by "job\0step" key suffix
  auto id_of = [](absl::string_view job, int64_t step) {
    std::string k = absl::StrCat(job, absl::string_view("\0", 1));
    PutBE(&k, static_cast<uint64_t>(step), 8);
    return k;
  };
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("c/"); it->Valid() && it->key().starts_with("c/"); it->Next()) {
    std::string job;
    int64_t step;
    absl::string_view rest;
    Ckpt c;
    if (!ParseStepKey(View(it->key()), &job, &step, &rest) || !rest.empty() ||
        !c.info.ParseFromArray(it->value().data(),
                               static_cast<int>(it->value().size()))) {
      problem("malformed checkpoint record");
      continue;
    }
    if (!jobs.contains(job)) problem(absl::StrCat("checkpoint of unknown job ", job));
    ckpts[id_of(job, step)] = std::move(c);
  }
  report.checkpoints = ckpts.size();

  for (it->Seek("m/"); it->Valid() && it->key().starts_with("m/"); it->Next()) {
    std::string job;
    int64_t step;
    absl::string_view rest;
    RankManifest m;
    if (!ParseStepKey(View(it->key()), &job, &step, &rest) || rest.size() != 4 ||
        !m.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      problem("malformed manifest record");
      continue;
    }
    auto c = ckpts.find(id_of(job, step));
    if (c == ckpts.end()) {
      problem(
          absl::StrCat("manifest of a missing checkpoint ", CheckpointName(job, step)));
      continue;
    }
    ++c->second.manifests;
    ++report.manifests;
    AddChunkIds(m, &c->second.named);
  }

  absl::flat_hash_map<ChunkId, uint64_t> expected_refs;
  absl::flat_hash_map<std::string, int64_t> latest;
  for (auto& [key, c] : ckpts) {
    const CheckpointInfo& info = c.info;
    const std::string name = CheckpointName(info.job_id(), info.step());
    auto job = jobs.find(info.job_id());
    const int world = job == jobs.end() ? 0 : job->second.world_size();
    switch (info.state()) {
      case v1::COMMITTED:
        ++report.committed;
        if (c.manifests != world || info.ranks_committed() != world) {
          problem(absl::StrCat("COMMITTED ", name, " has ", c.manifests,
                               " manifests and ", info.ranks_committed(),
                               " ranks committed, world_size ", world));
        }
        for (const ChunkId& id : c.named) ++expected_refs[id];
        latest[info.job_id()] = std::max(latest[info.job_id()], info.step() + 1);
        break;
      case v1::WRITING:
        if (c.manifests != info.ranks_committed()) {
          problem(absl::StrCat("WRITING ", name, " has ", c.manifests, " manifests but ",
                               info.ranks_committed(), " ranks committed"));
        }
        break;
      case v1::ABORTED:
        if (c.manifests != 0) problem(absl::StrCat("ABORTED ", name, " has manifests"));
        break;
      default:
        problem(absl::StrCat(name, " has no state"));
    }
  }
  for (const auto& [id, job] : jobs) {
    const int64_t want = latest.contains(id) ? latest[id] - 1 : -1;
    if (job.latest_committed() != want) {
      problem(absl::StrCat("job ", id, " latest_committed ", job.latest_committed(),
                           ", highest COMMITTED step ", want));
    }
    if (job.restore_target() >= 0) {
      auto c = ckpts.find(id_of(id, job.restore_target()));
      if (c == ckpts.end() || c->second.info.state() != v1::COMMITTED) {
        problem(absl::StrCat("job ", id, " restore target ", job.restore_target(),
                             " is not COMMITTED"));
      }
    }
  }

  // Claims: only WRITING checkpoints hold them, each named chunk of a
  // committed rank is claimed as such, and memory agrees with the database.
  absl::flat_hash_map<ChunkId, int> claims;
  for (it->Seek(Sl(kClaimPrefix)); it->Valid() && it->key().starts_with(Sl(kClaimPrefix));
       it->Next()) {
    std::string job;
    int64_t step;
    absl::string_view rest;
    if (!ParseStepKey(View(it->key()), &job, &step, &rest) || rest.size() != 32) {
      problem("malformed claim key");
      continue;
    }
    const ChunkId id = *ChunkId::FromBytes(rest);
    ++claims[id];
    ++report.claims;
    auto c = ckpts.find(id_of(job, step));
    if (c == ckpts.end() || c->second.info.state() != v1::WRITING) {
      problem(absl::StrCat("claim of ", id.ShortHex(), " by ", CheckpointName(job, step),
                           ", which is not WRITING"));
    } else if (View(it->value()) == kClaimNamed) {
      c->second.named.erase(id);  // accounted for
    }
  }
  for (const auto& [key, c] : ckpts) {
    if (c.info.state() == v1::WRITING && !c.named.empty()) {
      problem(absl::StrCat("WRITING ", CheckpointName(c.info.job_id(), c.info.step()),
                           " has ", c.named.size(), " unclaimed manifest chunks"));
    }
  }
  if (claims != claims_) {
    problem(absl::StrCat("in-memory claims (", claims_.size(),
                         " chunks) differ from the database (", claims.size(), ")"));
  }

  // References and the GC queue.
  absl::flat_hash_map<ChunkId, uint64_t> refs;
  absl::flat_hash_set<std::string> zero_keys;
  for (it->Seek(Sl(kRefPrefix)); it->Valid() && it->key().starts_with(Sl(kRefPrefix));
       it->Next()) {
    RefRecord r;
    absl::string_view key = View(it->key());
    if (key.size() != kRefPrefix.size() + 32 || !DecodeRef(View(it->value()), &r)) {
      problem("malformed reference record");
      continue;
    }
    const ChunkId id = *ChunkId::FromBytes(key.substr(kRefPrefix.size()));
    if (r.count > 0) {
      refs[id] = r.count;
    } else {
      zero_keys.insert(ZeroKey(r.zero_since_ms, id));
    }
  }
  report.referenced_chunks = refs.size();
  if (refs != expected_refs) {
    int shown = 0;
    for (const auto& [id, n] : expected_refs) {
      auto r = refs.find(id);
      if ((r == refs.end() || r->second != n) && shown++ < 3) {
        problem(absl::StrCat("chunk ", id.ShortHex(), " refcount ",
                             r == refs.end() ? 0 : r->second, ", named by ", n,
                             " COMMITTED checkpoints"));
      }
    }
    for (const auto& [id, n] : refs) {
      if (!expected_refs.contains(id) && shown++ < 3) {
        problem(absl::StrCat("chunk ", id.ShortHex(), " refcount ", n,
                             " but no COMMITTED checkpoint names it"));
      }
    }
  }
  uint64_t queued = 0;
  for (it->Seek(Sl(kZeroPrefix)); it->Valid() && it->key().starts_with(Sl(kZeroPrefix));
       it->Next()) {
    ++queued;
    if (!zero_keys.contains(View(it->key()))) {
      problem("GC queue entry without a zero reference record");
    }
  }
  if (queued != zero_keys.size()) {
    problem(absl::StrCat(zero_keys.size(), " zero reference records but ", queued,
                         " GC queue entries"));
  }
  SNAPBACK_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));

  if (check_tier && !refs.empty()) {
    std::vector<ChunkId> ids;
    for (const auto& [id, n] : refs) ids.push_back(id);
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> present, tier_->Has(ids, 1));
    std::vector<ChunkId> missing;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!present[i]) missing.push_back(ids[i]);
    }
    if (!missing.empty()) {
      problem(absl::StrCat(
          missing.size(),
          " referenced chunks are missing from the tier: ", ListIds(missing)));
    }
  }
  if (!problems.empty()) {
    return absl::InternalError(absl::StrCat("coordinator metadata is inconsistent: ",
                                            absl::StrJoin(problems, "; ")));
  }
  return report;
}

}  // namespace snapback::coordinator
