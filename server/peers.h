// Peers: the other storage nodes this node may talk to — forward chunks to
// (the cluster write path) and copy chunks from (repair). The set is the
// coordinator's node map, refreshed by the node agent's heartbeats, so a
// client cannot make a node connect to an arbitrary address. Without a
// coordinator (embedded or static storage nodes) the set is empty and
// forwarding is refused.
//
// Thread-safe.
#ifndef SNAPBACK_SERVER_PEERS_H_
#define SNAPBACK_SERVER_PEERS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "rpc/storage_client.h"

namespace snapback::server {

class Peers {
 public:
  explicit Peers(internal_client::StorageClientOptions options)
      : options_(std::move(options)) {}

  // Replaces the allowed addresses (the map's nodes) and this node's own.
  void SetMap(const std::vector<std::string>& addresses, const std::string& self) {
    absl::MutexLock lock(&mu_);
    allowed_ = absl::flat_hash_set<std::string>(addresses.begin(), addresses.end());
    self_ = self;
  }
  // Called (without the lock, at most every 200 ms) when a peer is not in
  // the map: the node agent fetches the current map, so a node that joined
  // since the last heartbeat is accepted at once.
  void SetRefresh(std::function<void()> refresh) {
    absl::MutexLock lock(&mu_);
    refresh_ = std::move(refresh);
  }
  // INVALID_ARGUMENT unless `address` is another node of the map.
  absl::Status Check(const std::string& address) {
    if (!Allowed(address)) {
      // One refresh at a time; a caller that waited re-checks first.
      absl::MutexLock refresh_lock(&refresh_mu_);
      std::function<void()> refresh;
      {
        absl::MutexLock lock(&mu_);
        if (!allowed_.contains(address) && refresh_ &&
            absl::Now() - last_refresh_ > absl::Milliseconds(50)) {
          refresh = refresh_;
        }
      }
      if (refresh) {
        refresh();
        absl::MutexLock lock(&mu_);
        last_refresh_ = absl::Now();
      }
    }
    absl::MutexLock lock(&mu_);
    if (allowed_.empty()) {
      return absl::InvalidArgumentError(
          "this storage node is not part of a cluster (no --coordinator), so it "
          "forwards and copies from no peer");
    }
    if (address == self_) {
      return absl::InvalidArgumentError("a node cannot forward to or copy from itself");
    }
    if (!allowed_.contains(address)) {
      // Not INVALID_ARGUMENT: a map that is a moment old (a node just
      // removed or added) is not the caller's fault; it fails over.
      return absl::FailedPreconditionError(
          "peer " + address.substr(0, 256) +
          " is not a storage node of this cluster's map");
    }
    return absl::OkStatus();
  }
  bool Allowed(const std::string& address) {
    absl::MutexLock lock(&mu_);
    return allowed_.contains(address);
  }
  // A client for a checked peer (cached).
  absl::StatusOr<internal_client::StorageClient*> Client(const std::string& address) {
    absl::Status ok = Check(address);
    if (!ok.ok()) return ok;
    absl::MutexLock lock(&mu_);
    auto it = clients_.find(address);
    if (it != clients_.end()) return it->second.get();
    auto client = internal_client::StorageClient::Connect(address, options_);
    if (!client.ok()) return client.status();
    internal_client::StorageClient* raw = client->get();
    clients_[address] = *std::move(client);
    return raw;
  }

 private:
  const internal_client::StorageClientOptions options_;
  absl::Mutex refresh_mu_;  // serialises refreshes; taken before mu_
  absl::Mutex mu_;
  absl::flat_hash_set<std::string> allowed_ ABSL_GUARDED_BY(mu_);
  std::string self_ ABSL_GUARDED_BY(mu_);
  std::function<void()> refresh_ ABSL_GUARDED_BY(mu_);
  absl::Time last_refresh_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::map<std::string, std::unique_ptr<internal_client::StorageClient>> clients_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_PEERS_H_
