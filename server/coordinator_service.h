// CoordinatorServiceImpl: the gRPC face of the CoordinatorStore
// (proto/snapback/v1/coordinator.proto).
//
// Callback API, one handler per RPC. Every call does blocking work (synced
// RocksDB writes, tier lookups that may be RPCs to storage nodes), so no
// handler runs it on a gRPC thread: each schedules its store call on a
// ThreadPool owned by the caller and finishes the reactor from there. A call
// whose deadline has passed, or that the client cancelled, before its turn
// on the pool fails with DEADLINE_EXCEEDED / CANCELLED without touching the
// store. (Once a store call has started it runs to completion: a commit is
// never half-applied because its caller went away; the client learns the
// outcome by retrying, which is idempotent.)
//
// absl::Status -> grpc::Status only through rpc/unary.h (rpc/grpc_status.h).
//
// Thread-safe. The store and the pool must outlive the service, and the
// service must outlive the grpc::Server it is registered with; WaitIdle()
// tells when the last call is gone.
#ifndef SNAPBACK_SERVER_COORDINATOR_SERVICE_H_
#define SNAPBACK_SERVER_COORDINATOR_SERVICE_H_

#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/thread_pool.h"
#include "coordinator/coordinator_store.h"
#include "rpc/unary.h"
#include "snapback/v1/coordinator.grpc.pb.h"

namespace snapback::server {

class CoordinatorServiceImpl final
    : public snapback::v1::CoordinatorService::CallbackService {
 public:
  // Neither pointer is owned.
  CoordinatorServiceImpl(coordinator::CoordinatorStore* store, ThreadPool* pool)
      : store_(store), pool_(pool) {}
  // Must not run while calls are alive (see WaitIdle).
  ~CoordinatorServiceImpl() override = default;

  grpc::ServerUnaryReactor* RegisterJob(grpc::CallbackServerContext* ctx,
                                        const v1::RegisterJobRequest* req,
                                        v1::RegisterJobResponse* resp) override;
  grpc::ServerUnaryReactor* DescribeJob(grpc::CallbackServerContext* ctx,
                                        const v1::DescribeJobRequest* req,
                                        v1::JobInfo* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const v1::ListJobsRequest* req,
                                     v1::ListJobsResponse* resp) override;
  grpc::ServerUnaryReactor* BeginCheckpoint(grpc::CallbackServerContext* ctx,
                                            const v1::BeginCheckpointRequest* req,
                                            v1::BeginCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* ClaimChunks(grpc::CallbackServerContext* ctx,
                                        const v1::ClaimChunksRequest* req,
                                        v1::ClaimChunksResponse* resp) override;
  grpc::ServerUnaryReactor* CommitRank(grpc::CallbackServerContext* ctx,
                                       const v1::CommitRankRequest* req,
                                       v1::CommitRankResponse* resp) override;
  grpc::ServerUnaryReactor* AbortCheckpoint(grpc::CallbackServerContext* ctx,
                                            const v1::AbortCheckpointRequest* req,
                                            v1::AbortCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* GetLatest(grpc::CallbackServerContext* ctx,
                                      const v1::GetLatestRequest* req,
                                      v1::GetLatestResponse* resp) override;
  grpc::ServerUnaryReactor* GetManifest(grpc::CallbackServerContext* ctx,
                                        const v1::GetManifestRequest* req,
                                        v1::GetManifestResponse* resp) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* ctx,
                                            const v1::ListCheckpointsRequest* req,
                                            v1::ListCheckpointsResponse* resp) override;
  grpc::ServerUnaryReactor* PinCheckpoint(grpc::CallbackServerContext* ctx,
                                          const v1::PinCheckpointRequest* req,
                                          v1::CheckpointInfo* resp) override;
  grpc::ServerUnaryReactor* UnpinCheckpoint(grpc::CallbackServerContext* ctx,
                                            const v1::PinCheckpointRequest* req,
                                            v1::CheckpointInfo* resp) override;
  grpc::ServerUnaryReactor* DeleteCheckpoint(grpc::CallbackServerContext* ctx,
                                             const v1::DeleteCheckpointRequest* req,
                                             v1::DeleteCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* SetRestoreTarget(grpc::CallbackServerContext* ctx,
                                             const v1::SetRestoreTargetRequest* req,
                                             v1::JobInfo* resp) override;
  grpc::ServerUnaryReactor* ClearRestoreTarget(grpc::CallbackServerContext* ctx,
                                               const v1::DescribeJobRequest* req,
                                               v1::JobInfo* resp) override;
  grpc::ServerUnaryReactor* CollectGarbage(grpc::CallbackServerContext* ctx,
                                           const v1::CollectGarbageRequest* req,
                                           v1::CollectGarbageResponse* resp) override;
  grpc::ServerUnaryReactor* ListAudit(grpc::CallbackServerContext* ctx,
                                      const v1::ListAuditRequest* req,
                                      v1::ListAuditResponse* resp) override;
  // Server-streaming (verify_service.cc): the verification runs batch by
  // batch (coordinator/verify.h), each batch its own task on the pool, so
  // other calls are served between batches and a long verification holds
  // no thread while it waits for its turn. Progress is coalesced (a slow
  // reader gets the latest, not a backlog); a client that goes away stops
  // the verification after the batch in flight.
  grpc::ServerWriteReactor<v1::VerifyProgress>* VerifyCheckpoint(
      grpc::CallbackServerContext* ctx, const v1::VerifyCheckpointRequest* req) override;

  // Called (on a pool thread) after each CommitRank that leaves its
  // checkpoint COMMITTED; the failure detector uses it for the restart-loop
  // guard. Set before the service is registered.
  void SetCommitListener(std::function<void(const std::string&, int64_t)> f) {
    on_commit_ = std::move(f);
  }
  // Called (on a pool thread) after every successful CommitRank, with the
  // request and the answer (metrics). Set before the service is registered.
  void SetCommitObserver(
      std::function<void(const v1::CommitRankRequest&, const v1::CommitRankResponse&)>
          f) {
    on_commit_rank_ = std::move(f);
  }

  // Blocks until no call is alive or `deadline` passes. True when idle.
  bool WaitIdle(absl::Time deadline = absl::InfiniteFuture());
  // Calls alive right now, for tests.
  int TEST_ActiveCalls();

 private:
  // Runs `work` on the pool (unless the call is already cancelled or past
  // its deadline) and finishes the call with its status.
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* ctx, absl::string_view rpc,
                                std::function<absl::Status()> work);

  coordinator::CoordinatorStore* const store_;
  ThreadPool* const pool_;
  std::function<void(const std::string&, int64_t)> on_commit_;
  std::function<void(const v1::CommitRankRequest&, const v1::CommitRankResponse&)>
      on_commit_rank_;
  rpc::CallTracker calls_;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_COORDINATOR_SERVICE_H_
