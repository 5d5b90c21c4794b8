#include "coordinator/chunk_tier.h"

#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace snapback::coordinator {

absl::StatusOr<std::vector<bool>> LocalChunkTier::Has(absl::Span<const ChunkId> ids,
                                                      int /*copies*/) {
  return store_->Has(ids);
}

absl::StatusOr<uint64_t> LocalChunkTier::Delete(absl::Span<const ChunkId> ids) {
  SNAPBACK_ASSIGN_OR_RETURN(int deleted, store_->Delete(ids));
  return static_cast<uint64_t>(deleted);
}

absl::StatusOr<std::vector<ChunkCheck>> LocalChunkTier::Verify(
    absl::Span<const ChunkId> ids, absl::Duration /*deadline*/) {
  // ScrubChunks quarantines what fails (DATA_LOSS): the next verification
  // finds it missing, which is as bad.
  storage::ScrubResult scrub = store_->ScrubChunks(ids);
  absl::flat_hash_map<ChunkId, ChunkCheck> found;
  for (const auto& [id, status] : scrub.bad) {
    // An I/O error says nothing about the bytes: not a reason to call the
    // checkpoint damaged.
    const bool bytes_bad = absl::IsDataLoss(status) || absl::IsInvalidArgument(status);
    found[id] = {bytes_bad ? ChunkCheck::kBad : ChunkCheck::kUnverified,
                 absl::StrCat(bytes_bad ? "failed verification: " : "could not be read: ",
                              status.message())};
  }
  for (const ChunkId& id : scrub.missing) {
    found[id] = {ChunkCheck::kBad,
                 "not in the chunk store (lost to damage found earlier, or deleted)"};
  }
  std::vector<ChunkCheck> out(ids.size(), ChunkCheck{ChunkCheck::kGood, ""});
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = found.find(ids[i]);
    if (it != found.end()) out[i] = it->second;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<RemoteChunkTier>> RemoteChunkTier::Connect(
    const std::vector<std::string>& endpoints,
    const internal_client::StorageClientOptions& options) {
  if (endpoints.empty()) {
    return absl::InvalidArgumentError(
        "no storage endpoints: pass --storage-endpoints HOST:PORT[,HOST:PORT...]");
  }
  absl::flat_hash_set<std::string> seen;
  std::vector<std::unique_ptr<internal_client::StorageClient>> clients;
  for (const std::string& endpoint : endpoints) {
    if (endpoint.empty()) {
      return absl::InvalidArgumentError(
          "empty entry in --storage-endpoints; use HOST:PORT[,HOST:PORT...]");
    }
    if (!seen.insert(endpoint).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage endpoint ", endpoint, " is listed twice"));
    }
    SNAPBACK_ASSIGN_OR_RETURN(auto client,
                              internal_client::StorageClient::Connect(endpoint, options));
    clients.push_back(std::move(client));
  }
  return std::unique_ptr<RemoteChunkTier>(
      new RemoteChunkTier(endpoints, std::move(clients)));
}

absl::StatusOr<std::vector<bool>> RemoteChunkTier::Has(absl::Span<const ChunkId> ids,
                                                       int /*copies*/) {
  std::vector<bool> present(ids.size(), false);
  // Replication 1: any node holding the chunk makes it durable.
  for (const auto& client : clients_) {
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> here, client->Has(ids));
    for (size_t i = 0; i < ids.size(); ++i) present[i] = present[i] || here[i];
  }
  return present;
}

absl::StatusOr<uint64_t> RemoteChunkTier::Delete(absl::Span<const ChunkId> ids) {
  uint64_t deleted = 0;
  for (const auto& client : clients_) {
    SNAPBACK_ASSIGN_OR_RETURN(int n, client->Delete(ids));
    deleted += static_cast<uint64_t>(n);
  }
  return deleted;
}

absl::StatusOr<std::vector<ChunkCheck>> RemoteChunkTier::Verify(
    absl::Span<const ChunkId> ids, absl::Duration deadline) {
  std::vector<int> good(ids.size(), 0);
  std::vector<std::string> problems(ids.size());
  for (const auto& client : clients_) {
    SNAPBACK_ASSIGN_OR_RETURN(v1::VerifyChunksResponse v, client->Verify(ids, deadline));
    absl::flat_hash_set<std::string> bad(v.bad_ids().begin(), v.bad_ids().end());
    absl::flat_hash_set<std::string> missing(v.missing_ids().begin(),
                                             v.missing_ids().end());
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string key(ids[i].AsBytes());
      if (bad.contains(key)) {
        absl::StrAppend(&problems[i], problems[i].empty() ? "" : "; ", "the copy on ",
                        client->endpoint(), " failed verification");
      } else if (!missing.contains(key)) {
        ++good[i];
      }
    }
  }
  std::vector<ChunkCheck> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (good[i] > 0) {
      out[i] = {ChunkCheck::kGood, problems[i]};
    } else {
      out[i] = {ChunkCheck::kBad, problems[i].empty()
                                      ? "no storage node has a copy"
                                      : absl::StrCat(problems[i], "; no other copy")};
    }
  }
  return out;
}

}  // namespace snapback::coordinator
