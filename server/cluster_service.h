// ClusterServiceImpl: the gRPC face of the coordinator's ClusterTier
// (proto/snapback/v1/cluster.proto). Registration, heartbeats and the map
// run on `membership_pool` (short calls that must never wait behind long
// ones); replica state, scrub and reports on `pool`.
//
// Thread-safe. The tier and the pool must outlive the service; WaitIdle()
// tells when the last call is gone.
#ifndef SNAPBACK_SERVER_CLUSTER_SERVICE_H_
#define SNAPBACK_SERVER_CLUSTER_SERVICE_H_

#include "common/thread_pool.h"
#include "coordinator/cluster_tier.h"
#include "rpc/unary.h"
#include "snapback/v1/cluster.grpc.pb.h"

namespace snapback::server {

struct ClusterMetrics;  // server_metrics.h

class ClusterServiceImpl final : public v1::ClusterService::CallbackService {
 public:
  ClusterServiceImpl(coordinator::ClusterTier* tier, ThreadPool* membership_pool,
                     ThreadPool* pool)
      : tier_(tier), membership_pool_(membership_pool), pool_(pool) {}
  // Counts scrub results, confirmed bad replicas and lost copies reported
  // by nodes into `metrics` (not owned; outlives the service). Before the
  // service is registered.
  // Default: nullptr (not counted)
  void SetMetrics(ClusterMetrics* metrics) { metrics_ = metrics; }

  grpc::ServerUnaryReactor* RegisterNode(grpc::CallbackServerContext* ctx,
                                         const v1::RegisterNodeRequest* req,
                                         v1::RegisterNodeResponse* resp) override;
  grpc::ServerUnaryReactor* NodeHeartbeat(grpc::CallbackServerContext* ctx,
                                          const v1::NodeHeartbeatRequest* req,
                                          v1::NodeHeartbeatResponse* resp) override;
  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* ctx,
                                      const v1::ListNodesRequest* req,
                                      v1::NodeMap* resp) override;
  grpc::ServerUnaryReactor* SetNodeState(grpc::CallbackServerContext* ctx,
                                         const v1::SetNodeStateRequest* req,
                                         v1::NodeInfo* resp) override;
  grpc::ServerUnaryReactor* GetReplicaState(grpc::CallbackServerContext* ctx,
                                            const v1::GetReplicaStateRequest* req,
                                            v1::ReplicaState* resp) override;
  grpc::ServerUnaryReactor* ScrubNodes(grpc::CallbackServerContext* ctx,
                                       const v1::ScrubNodesRequest* req,
                                       v1::ScrubNodesResponse* resp) override;
  grpc::ServerUnaryReactor* ReportBadReplica(grpc::CallbackServerContext* ctx,
                                             const v1::ReportBadReplicaRequest* req,
                                             v1::ReportBadReplicaResponse* resp) override;

  bool WaitIdle(absl::Time deadline = absl::InfiniteFuture()) {
    return calls_.WaitIdle(deadline);
  }

 private:
  coordinator::ClusterTier* const tier_;
  ThreadPool* const membership_pool_;
  ThreadPool* const pool_;
  ClusterMetrics* metrics_ = nullptr;
  rpc::CallTracker calls_;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_CLUSTER_SERVICE_H_
