#include "server/coordinator_service.h"

#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/audit.h"

namespace snapback::server {

using rpc::Fill;

grpc::ServerUnaryReactor* CoordinatorServiceImpl::Run(
    grpc::CallbackServerContext* ctx, absl::string_view rpc,
    std::function<absl::Status()> work) {
  return rpc::RunOnPool(ctx, pool_, &calls_, rpc, std::move(work));
}

bool CoordinatorServiceImpl::WaitIdle(absl::Time deadline) {
  return calls_.WaitIdle(deadline);
}

int CoordinatorServiceImpl::TEST_ActiveCalls() { return calls_.active(); }

grpc::ServerUnaryReactor* CoordinatorServiceImpl::RegisterJob(
    grpc::CallbackServerContext* ctx, const v1::RegisterJobRequest* req,
    v1::RegisterJobResponse* resp) {
  return Run(ctx, "RegisterJob",
             [this, req, resp] { return Fill(store_->RegisterJob(*req), resp); });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::DescribeJob(
    grpc::CallbackServerContext* ctx, const v1::DescribeJobRequest* req,
    v1::JobInfo* resp) {
  return Run(ctx, "DescribeJob", [this, req, resp] {
    return Fill(store_->DescribeJob(req->job_id()), resp);
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::ListJobs(
    grpc::CallbackServerContext* ctx, const v1::ListJobsRequest* req,
    v1::ListJobsResponse* resp) {
  (void)req;
  return Run(ctx, "ListJobs", [this, resp] { return Fill(store_->ListJobs(), resp); });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::BeginCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::BeginCheckpointRequest* req,
    v1::BeginCheckpointResponse* resp) {
  return Run(ctx, "BeginCheckpoint",
             [this, req, resp] { return Fill(store_->BeginCheckpoint(*req), resp); });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::ClaimChunks(
    grpc::CallbackServerContext* ctx, const v1::ClaimChunksRequest* req,
    v1::ClaimChunksResponse* resp) {
  return Run(ctx, "ClaimChunks",
             [this, req, resp] { return Fill(store_->ClaimChunks(*req), resp); });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::CommitRank(
    grpc::CallbackServerContext* ctx, const v1::CommitRankRequest* req,
    v1::CommitRankResponse* resp) {
  return Run(ctx, "CommitRank", [this, req, resp] {
    absl::Status s = Fill(store_->CommitRank(*req), resp);
    if (s.ok() && resp->checkpoint_committed() && on_commit_) {
      on_commit_(req->rank().job_id(), req->step());
    }
    if (s.ok() && on_commit_rank_) on_commit_rank_(*req, *resp);
    return s;
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::AbortCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::AbortCheckpointRequest* req,
    v1::AbortCheckpointResponse* resp) {
  return Run(ctx, "AbortCheckpoint",
             [this, req, resp] { return Fill(store_->AbortCheckpoint(*req), resp); });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::GetLatest(
    grpc::CallbackServerContext* ctx, const v1::GetLatestRequest* req,
    v1::GetLatestResponse* resp) {
  return Run(ctx, "GetLatest",
             [this, req, resp] { return Fill(store_->GetLatest(req->job_id()), resp); });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::GetManifest(
    grpc::CallbackServerContext* ctx, const v1::GetManifestRequest* req,
    v1::GetManifestResponse* resp) {
  return Run(ctx, "GetManifest",
             [this, req, resp] { return Fill(store_->GetManifest(*req), resp); });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::ListCheckpoints(
    grpc::CallbackServerContext* ctx, const v1::ListCheckpointsRequest* req,
    v1::ListCheckpointsResponse* resp) {
  return Run(ctx, "ListCheckpoints", [this, req, resp] {
    return Fill(store_->ListCheckpoints(req->job_id()), resp);
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::PinCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::PinCheckpointRequest* req,
    v1::CheckpointInfo* resp) {
  return Run(ctx, "PinCheckpoint", [this, req, resp, who = Caller(ctx)] {
    absl::Status s = Fill(store_->PinCheckpoint(req->job_id(), req->step(), true), resp);
    Audit(store_, who, "pin", req->job_id(), req->step(), req->reason(), s);
    return s;
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::UnpinCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::PinCheckpointRequest* req,
    v1::CheckpointInfo* resp) {
  return Run(ctx, "UnpinCheckpoint", [this, req, resp, who = Caller(ctx)] {
    absl::Status s = Fill(store_->PinCheckpoint(req->job_id(), req->step(), false), resp);
    Audit(store_, who, "unpin", req->job_id(), req->step(), req->reason(), s);
    return s;
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::DeleteCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::DeleteCheckpointRequest* req,
    v1::DeleteCheckpointResponse* resp) {
  return Run(ctx, "DeleteCheckpoint", [this, req, resp, who = Caller(ctx)] {
    absl::Status s = Fill(store_->DeleteCheckpoint(req->job_id(), req->step()), resp);
    Audit(store_, who, "delete", req->job_id(), req->step(), req->reason(), s);
    return s;
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::SetRestoreTarget(
    grpc::CallbackServerContext* ctx, const v1::SetRestoreTargetRequest* req,
    v1::JobInfo* resp) {
  return Run(ctx, "SetRestoreTarget", [this, req, resp, who = Caller(ctx)] {
    absl::Status s = Fill(store_->SetRestoreTarget(req->job_id(), req->step()), resp);
    Audit(store_, who, "set-restore-target", req->job_id(), req->step(), req->reason(),
          s);
    return s;
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::ClearRestoreTarget(
    grpc::CallbackServerContext* ctx, const v1::DescribeJobRequest* req,
    v1::JobInfo* resp) {
  return Run(ctx, "ClearRestoreTarget", [this, req, resp, who = Caller(ctx)] {
    absl::Status s = Fill(store_->ClearRestoreTarget(req->job_id()), resp);
    Audit(store_, who, "clear-restore-target", req->job_id(), -1, req->reason(), s);
    return s;
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::CollectGarbage(
    grpc::CallbackServerContext* ctx, const v1::CollectGarbageRequest* req,
    v1::CollectGarbageResponse* resp) {
  return Run(ctx, "CollectGarbage", [this, req, resp, who = Caller(ctx)] {
    absl::Status s = Fill(store_->CollectGarbage(), resp);
    Audit(store_, who, "gc", "", -1, req->reason(), s);
    return s;
  });
}

grpc::ServerUnaryReactor* CoordinatorServiceImpl::ListAudit(
    grpc::CallbackServerContext* ctx, const v1::ListAuditRequest* req,
    v1::ListAuditResponse* resp) {
  return Run(ctx, "ListAudit", [this, req, resp]() -> absl::Status {
    absl::StatusOr<std::vector<v1::AuditEntry>> entries = store_->ListAudit(req->limit());
    if (!entries.ok()) return entries.status();
    for (v1::AuditEntry& e : *entries) *resp->add_entries() = std::move(e);
    return absl::OkStatus();
  });
}

}  // namespace snapback::server
