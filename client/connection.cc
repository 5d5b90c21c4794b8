#include "client/connection.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "rpc/grpc_status.h"

namespace snapback::internal_client {

absl::Status Rpc(const grpc::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  absl::Status st = FromGrpcStatus(s);
  return absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
}

Connection::Connection(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(::snapback::v1::CoordinatorService::NewStub(channel_)),
      cluster_stub_(::snapback::v1::ClusterService::NewStub(channel_)) {}

std::unique_ptr<grpc::ClientContext> Connection::Context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_deadline));
  return ctx;
}

absl::StatusOr<StorageClient*> Connection::Storage(const std::string& endpoint) {
  const std::string& ep = endpoint.empty() ? options_.endpoint : endpoint;
  absl::MutexLock lock(&mu_);
  auto it = storage_.find(ep);
  if (it != storage_.end()) return it->second.get();
  StorageClientOptions so;
  so.tls_root_ca_file = options_.tls_root_ca_file;
  so.deadline = options_.bulk_deadline;
  so.verify_reads = false;  // Restore verifies the decoded bytes itself
  SNAPBACK_ASSIGN_OR_RETURN(auto client, StorageClient::Connect(ep, so));
  StorageClient* raw = client.get();
  storage_[ep] = std::move(client);
  return raw;
}

void Connection::ReportBadReplica(const std::string& endpoint,
                                  const std::vector<ChunkId>& ids) {
  ::snapback::v1::ReportBadReplicaRequest req;
  req.set_address(endpoint);
  for (const ChunkId& id : ids) req.add_ids(std::string(id.AsBytes()));
  ::snapback::v1::ReportBadReplicaResponse resp;
  auto ctx = Context();
  grpc::Status s = cluster_stub_->ReportBadReplica(ctx.get(), req, &resp);
  if (!s.ok()) {
    SNAPBACK_LOG(Warning, "could not report %d bad chunk copies on %s: %s", ids.size(),
                 endpoint, s.error_message());
  }
}

}  // namespace snapback::internal_client
