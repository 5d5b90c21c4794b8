// The shape every unary handler of a snapback service shares: count the call,
// run its work on a thread pool (never on one of gRPC's callback threads,
// which a blocking fsync or lock would starve), and finish the reactor with
// the work's status converted once, here.
#ifndef SNAPBACK_RPC_UNARY_H_
#define SNAPBACK_RPC_UNARY_H_

#include <grpcpp/support/server_callback.h>

#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/thread_pool.h"

namespace grpc {
class CallbackServerContext;
}  // namespace grpc

namespace snapback::rpc {

// The calls of one service that have started and not ended, so that a
// shutdown can wait for them before the objects they use go away.
// Thread-safe.
class CallTracker {
 public:
  void Started();
  void Ended();
  // Waits until no call is in flight or `deadline`; true when idle.
  bool WaitIdle(absl::Time deadline = absl::InfiniteFuture());
  int active();

 private:
  absl::Mutex mu_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;
};

// Runs `work` on `pool` and finishes the call with its status. A call that
// waited in the pool's queue past its deadline, or that its client
// cancelled, is not started: it ends DEADLINE_EXCEEDED / CANCELLED with a
// message naming `rpc`. `calls` counts the call from now until the reactor
// is finished. Returns the reactor for the handler to return.
grpc::ServerUnaryReactor* RunOnPool(grpc::CallbackServerContext* ctx, ThreadPool* pool,
                                    CallTracker* calls, absl::string_view rpc,
                                    std::function<absl::Status()> work);

// Finishes a call at once with `status` (a request refused before any work).
grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* ctx,
                                    const absl::Status& status);

// Moves a handler's result into its gRPC response; the status otherwise.
template <typename T>
absl::Status Fill(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return result.status();
  *response = *std::move(result);
  return absl::OkStatus();
}

}  // namespace snapback::rpc

#endif  // SNAPBACK_RPC_UNARY_H_
