// Connection: what one Client holds open — the coordinator channel and
// stub, and a cache of storage-node clients. Shared (std::shared_ptr) by the
// Client and every Checkpointer it made, so either may be destroyed first.
//
// Internal to the client library.
#ifndef SNAPBACK_CLIENT_CONNECTION_H_
#define SNAPBACK_CLIENT_CONNECTION_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/hash.h"
#include "rpc/storage_client.h"
#include "snapback/client.h"
#include "snapback/v1/cluster.grpc.pb.h"
#include "snapback/v1/coordinator.grpc.pb.h"

namespace snapback::internal_client {

// `s` as an absl::Status whose message starts with `what` ("register job
// j at host:port: ..."); OK when `s` is.
absl::Status Rpc(const grpc::Status& s, absl::string_view what);

// Thread-safe.
class Connection {
 public:
  // `options` must be resolved (endpoint set); `channel` reaches
  // options.endpoint.
  Connection(ClientOptions options, std::shared_ptr<grpc::Channel> channel);

  const ClientOptions& options() const { return options_; }
  // The coordinator channel (the heartbeat stream runs on it too).
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  ::snapback::v1::CoordinatorService::Stub* stub() { return stub_.get(); }

  // A context for one metadata RPC, with options().rpc_deadline from now.
  std::unique_ptr<grpc::ClientContext> Context() const;

  // A client of storage node `endpoint` ("" = the coordinator's address,
  // the embedded single-process default), with options().bulk_deadline per
  // stream. Made on first use and cached for the Connection's lifetime; the
  // pointer stays valid as long as the Connection. The error of
  // StorageClient::Connect when it cannot be made (e.g. a bad TLS CA).
  absl::StatusOr<StorageClient*> Storage(const std::string& endpoint);

  // Tells the coordinator that storage node `endpoint` served bad bytes for
  // `ids` (it re-verifies and repairs them). Best effort: a failure is only
  // logged.
  void ReportBadReplica(const std::string& endpoint, const std::vector<ChunkId>& ids);

 private:
  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<::snapback::v1::CoordinatorService::Stub> stub_;
  std::unique_ptr<::snapback::v1::ClusterService::Stub> cluster_stub_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<StorageClient>> storage_ ABSL_GUARDED_BY(mu_);
};

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_CONNECTION_H_
