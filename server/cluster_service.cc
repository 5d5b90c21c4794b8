#include "server/cluster_service.h"

#include <utility>

namespace snapback::server {

using rpc::Fill;

grpc::ServerUnaryReactor* ClusterServiceImpl::RegisterNode(
    grpc::CallbackServerContext* ctx, const v1::RegisterNodeRequest* req,
    v1::RegisterNodeResponse* resp) {
  return rpc::RunOnPool(ctx, membership_pool_, &calls_, "RegisterNode",
                        [this, req, resp] {
                          absl::StatusOr<v1::NodeMap> map = tier_->Register(req->node());
                          if (!map.ok()) return map.status();
                          *resp->mutable_map() = *std::move(map);
                          return absl::OkStatus();
                        });
}

grpc::ServerUnaryReactor* ClusterServiceImpl::NodeHeartbeat(
    grpc::CallbackServerContext* ctx, const v1::NodeHeartbeatRequest* req,
    v1::NodeHeartbeatResponse* resp) {
  return rpc::RunOnPool(ctx, membership_pool_, &calls_, "NodeHeartbeat",
                        [this, req, resp] { return Fill(tier_->Heartbeat(*req), resp); });
}

grpc::ServerUnaryReactor* ClusterServiceImpl::ListNodes(grpc::CallbackServerContext* ctx,
                                                        const v1::ListNodesRequest* req,
                                                        v1::NodeMap* resp) {
  (void)req;
  return rpc::RunOnPool(ctx, membership_pool_, &calls_, "ListNodes", [this, resp] {
    *resp = tier_->Map();
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ClusterServiceImpl::SetNodeState(
    grpc::CallbackServerContext* ctx, const v1::SetNodeStateRequest* req,
    v1::NodeInfo* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "SetNodeState", [this, req, resp] {
    return Fill(tier_->SetNodeState(req->node_id(), req->state()), resp);
  });
}

grpc::ServerUnaryReactor* ClusterServiceImpl::GetReplicaState(
    grpc::CallbackServerContext* ctx, const v1::GetReplicaStateRequest* req,
    v1::ReplicaState* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "GetReplicaState", [this, req, resp] {
    return Fill(tier_->ReplicaState(*req), resp);
  });
}

grpc::ServerUnaryReactor* ClusterServiceImpl::ScrubNodes(grpc::CallbackServerContext* ctx,
                                                         const v1::ScrubNodesRequest* req,
                                                         v1::ScrubNodesResponse* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "ScrubNodes", [this, req, resp] {
    return Fill(tier_->Scrub(req->node_id()), resp);
  });
}

grpc::ServerUnaryReactor* ClusterServiceImpl::ReportBadReplica(
    grpc::CallbackServerContext* ctx, const v1::ReportBadReplicaRequest* req,
    v1::ReportBadReplicaResponse* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "ReportBadReplica", [this, req, resp] {
    return Fill(tier_->ReportBadReplica(*req), resp);
  });
}

}  // namespace snapback::server
