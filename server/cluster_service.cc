#include "server/cluster_service.h"

#include <utility>

#include "server/server_metrics.h"

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
  return rpc::RunOnPool(
      ctx, membership_pool_, &calls_, "NodeHeartbeat", [this, req, resp] {
        absl::Status s = Fill(tier_->Heartbeat(*req), resp);
        if (s.ok() && metrics_ != nullptr && resp->lost_acknowledged() > 0) {
          metrics_->lost_reported->WithLabels({req->node_id()})
              ->Inc(resp->lost_acknowledged());
        }
        return s;
      });
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
    absl::Status s = Fill(tier_->Scrub(req->node_id()), resp);
    if (s.ok() && metrics_ != nullptr) {
      metrics_->scrub_checked->Inc(static_cast<double>(resp->checked()));
      metrics_->scrub_bad->Inc(static_cast<double>(resp->bad()));
      metrics_->scrub_repaired->Inc(static_cast<double>(resp->repaired()));
    }
    return s;
  });
}

grpc::ServerUnaryReactor* ClusterServiceImpl::ReportBadReplica(
    grpc::CallbackServerContext* ctx, const v1::ReportBadReplicaRequest* req,
    v1::ReportBadReplicaResponse* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "ReportBadReplica", [this, req, resp] {
    absl::Status s = Fill(tier_->ReportBadReplica(*req), resp);
    if (s.ok() && metrics_ != nullptr)
      metrics_->bad_replica_reports->Inc(resp->confirmed());
    return s;
  });
}

}  // namespace snapback::server
