#include "rpc/unary.h"

#include <grpcpp/server_context.h>

#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc/grpc_status.h"

namespace snapback::rpc {

void CallTracker::Started() {
  absl::MutexLock lock(&mu_);
  ++active_;
}

void CallTracker::Ended() {
  absl::MutexLock lock(&mu_);
  --active_;
}

bool CallTracker::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(
                                   +[](int* calls) { return *calls == 0; }, &active_),
                               deadline);
}

int CallTracker::active() {
  absl::MutexLock lock(&mu_);
  return active_;
}

grpc::ServerUnaryReactor* RunOnPool(grpc::CallbackServerContext* ctx, ThreadPool* pool,
                                    CallTracker* calls, absl::string_view rpc,
                                    std::function<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  calls->Started();
  pool->Schedule([ctx, reactor, calls, rpc = std::string(rpc), work = std::move(work)] {
    absl::Status status;
    // Calls may queue behind others (a store serializes its mutations); one
    // whose caller gave up is not started at all.
    if (ctx->deadline() <= std::chrono::system_clock::now()) {
      status = absl::DeadlineExceededError(
          absl::StrCat(rpc, ": the deadline passed before the call could run"));
    } else if (ctx->IsCancelled()) {
      status = absl::CancelledError(absl::StrCat(rpc, " cancelled by the client"));
    } else {
      status = work();
    }
    reactor->Finish(ToGrpcStatus(status));
    calls->Ended();
  });
  return reactor;
}

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* ctx,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace snapback::rpc
