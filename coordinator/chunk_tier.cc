#include "coordinator/chunk_tier.h"

#include <utility>

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

}  // namespace snapback::coordinator
