#include "coordinator/rebuild.h"

#include <map>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace snapback::coordinator {

absl::StatusOr<RebuildReport> RebuildFromTier(
    CoordinatorStore* store, const std::vector<std::string>& nodes,
    const internal_client::StorageClientOptions& options) {
  SNAPBACK_ASSIGN_OR_RETURN(v1::ListJobsResponse existing, store->ListJobs());
  if (existing.jobs_size() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the coordinator's metadata already holds ", existing.jobs_size(),
        " job(s); rebuild only into an empty --data-dir (move the old one away)"));
  }
  RebuildReport report;
  std::map<std::string, std::string> records;  // key -> value (first copy read)
  absl::flat_hash_set<ChunkId> held;
  absl::Status last;
  for (const std::string& address : nodes) {
    auto client = internal_client::StorageClient::Connect(address, options);
    if (!client.ok()) {
      last = client.status();
      continue;
    }
    auto entries = (*client)->ListCatalog("");
    if (!entries.ok()) {
      last = entries.status();
      SNAPBACK_LOG(Warning, "rebuild: cannot read the catalogue of %s: %s", address,
                   last.ToString());
      continue;
    }
    std::string after;
    bool listed = true;
    for (;;) {
      auto page = (*client)->List(after, 4096);
      if (!page.ok()) {
        last = page.status();
        listed = false;
        break;
      }
      for (const std::string& b : page->ids()) {
        absl::StatusOr<ChunkId> id = ChunkId::FromBytes(b);
        if (id.ok()) held.insert(*id);
      }
      if (page->done() || page->ids().empty()) break;
      after = page->ids(page->ids_size() - 1);
    }
    if (!listed) continue;
    ++report.nodes_read;
    for (auto& [k, v] : *entries) records.emplace(std::move(k), std::move(v));
    SNAPBACK_LOG(Info, "rebuild: read %s (%d catalogue records so far, %d chunks)",
                 address, records.size(), held.size());
  }
  if (report.nodes_read * 2 < static_cast<int>(nodes.size()) || report.nodes_read == 0) {
    return absl::UnavailableError(
        absl::StrCat("rebuild read only ", report.nodes_read, " of ", nodes.size(),
                     " storage nodes (last error: ", last.message(),
                     "); start the nodes and run the rebuild again"));
  }
  report.records = static_cast<int>(records.size());
  report.chunks_on_nodes = held.size();
  absl::flat_hash_set<std::string> jobs;
  for (const auto& [key, value] : records) {
    v1::CatalogRecord record;
    if (!record.ParseFromString(value)) {
      SNAPBACK_LOG(Warning, "rebuild: skipping a malformed catalogue record");
      continue;
    }
    bool complete = true;
    for (const v1::RankManifest& m : record.manifests()) {
      auto check = [&](const auto& refs) {
        for (const v1::ChunkRef& r : refs) {
          absl::StatusOr<ChunkId> id = ChunkId::FromBytes(r.id());
          if (!id.ok() || !held.contains(*id)) complete = false;
        }
      };
      for (const auto& t : m.tensors()) check(t.chunks());
      for (const auto& b : m.blobs()) check(b.chunks());
    }
    if (!complete) {
      ++report.skipped_missing;
      continue;
    }
    absl::StatusOr<bool> imported = store->ImportCommitted(record);
    if (!imported.ok()) {
      SNAPBACK_LOG(Warning, "rebuild: %s step %d not imported: %s", record.job().job_id(),
                   record.checkpoint().step(), imported.status().ToString());
      continue;
    }
    if (*imported) {
      ++report.imported;
      jobs.insert(record.job().job_id());
    }
  }
  report.jobs = static_cast<int>(jobs.size());
  SNAPBACK_LOG(
      Info,
      "rebuild: %d of %d checkpoint records imported (%d jobs); %d skipped because "
      "chunks they name are on no node",
      report.imported, report.records, report.jobs, report.skipped_missing);
  return report;
}

}  // namespace snapback::coordinator
