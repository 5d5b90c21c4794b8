// CheckpointerImpl: the Checkpointer of include/snapback/client.h.
//
// Save() plans and snapshots a save on the caller's thread (or, in overlap
// mode, snapshots it on a background thread) and queues it; one driver
// thread takes queued saves in step order and runs them through the
// SavePipeline (client/save_pipeline.h). At most max_inflight saves are
// queued or driving; a failure is kept until the next Save() or Flush()
// reports it. Restore() (client/restore.cc) reads a committed checkpoint
// back and makes it the base of the next incremental save. A Heartbeater
// tells the failure detector the rank's step and phase.
//
// Internal to the client library. Thread-safe; saves are meant to come from
// one training loop (concurrent Save() calls take turns).
#ifndef SNAPBACK_CLIENT_CHECKPOINTER_IMPL_H_
#define SNAPBACK_CLIENT_CHECKPOINTER_IMPL_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "client/connection.h"
#include "client/heartbeat.h"
#include "client/save_handle_state.h"
#include "client/save_job.h"
#include "client/save_pipeline.h"
#include "snapback/client.h"

namespace snapback::internal_client {

class CheckpointerImpl final : public Checkpointer {
 public:
  // `options` must be resolved (ResolveCheckpointerOptions) with a known
  // incarnation. Starts the driver thread and, unless heartbeat_interval is
  // zero, the heartbeat.
  CheckpointerImpl(std::shared_ptr<Connection> client, CheckpointerOptions options);
  // Close(), ignoring its status.
  ~CheckpointerImpl() override;

  absl::StatusOr<SaveHandle> Save(int64_t step, absl::Span<const TensorView> tensors,
                                  absl::Span<const BlobView> blobs) override;
  absl::Status WaitSnapshot() override;
  absl::Status Flush() override;
  absl::StatusOr<std::optional<int64_t>> LatestStep() override;
  absl::StatusOr<RestoreResult> Restore(std::optional<int64_t> step) override;
  absl::StatusOr<RestoreResult> RestoreInto(absl::Span<const MutableTensorView> targets,
                                            std::optional<int64_t> step) override;
  int64_t incarnation() const override { return options_.incarnation; }
  void ReportStep(int64_t step) override {
    if (heartbeat_ != nullptr) heartbeat_->SetStep(step);
  }
  absl::Status Close() override;

 private:
  // The failure of an earlier save not yet reported, cleared; OK if none.
  absl::Status TakePendingError() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a Save(step) may go ahead now: open, no unreported failure,
  // step after the last one.
  absl::Status SaveAllowed(int64_t step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The driver thread: drives queued saves one after another until closed
  // with an empty queue; a failed save is aborted at the coordinator (unless
  // its commit may have happened) and its error made pending before its
  // handle finishes.
  void DriverLoop();
  // Restore() / RestoreInto() without the heartbeat phase (restore.cc).
  absl::StatusOr<RestoreResult> RestoreImpl(absl::Span<const MutableTensorView> targets,
                                            std::optional<int64_t> step);

  const std::shared_ptr<Connection> client_;
  const CheckpointerOptions options_;
  SavePipeline pipeline_;

  absl::Mutex save_mu_;   // one Save() at a time
  absl::Mutex close_mu_;  // one Close() at a time
  absl::Mutex mu_;
  // Saves snapshotted (or snapshotting) and waiting for the driver.
  std::deque<std::shared_ptr<SaveJob>> queue_ ABSL_GUARDED_BY(mu_);
  // Saves queued or driving.
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status pending_error_ ABSL_GUARDED_BY(mu_);
  // The last step saved or restored; a Save() must be after it.
  int64_t last_step_ ABSL_GUARDED_BY(mu_) = -1;
  std::shared_ptr<SaveHandle::State> last_state_ ABSL_GUARDED_BY(mu_);
  // The heartbeat to the failure detector (null when turned off).
  std::unique_ptr<Heartbeater> heartbeat_;
  std::thread driver_;
};

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_CHECKPOINTER_IMPL_H_
