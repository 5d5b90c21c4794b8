// SaveHandle::State: the shared state behind a SaveHandle (the future of one
// Save()). The checkpointer's save path writes it (figures, snapshot done,
// final status); any number of SaveHandle copies read and wait on it.
//
// Internal to the client library; include/snapback/client.h only declares
// it.
//
// Thread-safe: every field is guarded by `mu`.
#ifndef SNAPBACK_CLIENT_SAVE_HANDLE_STATE_H_
#define SNAPBACK_CLIENT_SAVE_HANDLE_STATE_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "snapback/client.h"

namespace snapback {

struct SaveHandle::State {
  // A save of `step`, neither snapshotted nor finished.
  explicit State(int64_t step) { stats.step = step; }

  mutable absl::Mutex mu;
  // Set once the snapshot copy is complete (or the save ended without one).
  bool snapshot_done ABSL_GUARDED_BY(mu) = false;
  absl::Status snapshot_status ABSL_GUARDED_BY(mu);
  // Set once the save has committed, failed or been skipped.
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  // Filled in stage by stage; final once `done`.
  SaveStats stats ABSL_GUARDED_BY(mu);

  // Marks the snapshot complete with `s`. Only the first call counts.
  void FinishSnapshot(absl::Status s);
  // Marks the save finished with `s` (and the snapshot too, with the same
  // status, if it was not already). Only the first call counts.
  void Finish(absl::Status s);
};

}  // namespace snapback

#endif  // SNAPBACK_CLIENT_SAVE_HANDLE_STATE_H_
