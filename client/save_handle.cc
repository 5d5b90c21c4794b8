// SaveHandle (include/snapback/client.h) and its shared State.
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/save_handle_state.h"
#include "snapback/client.h"

namespace snapback {

void SaveHandle::State::FinishSnapshot(absl::Status s) {
  absl::MutexLock lock(&mu);
  if (!snapshot_done) {
    snapshot_done = true;
    snapshot_status = std::move(s);
  }
}

void SaveHandle::State::Finish(absl::Status s) {
  absl::MutexLock lock(&mu);
  if (!snapshot_done) {
    snapshot_done = true;
    snapshot_status = s;
  }
  if (!done) {
    done = true;
    status = std::move(s);
  }
}

// A default handle is a finished save of no step, so Wait() never blocks.
SaveHandle::SaveHandle() : state_(std::make_shared<State>(-1)) {
  state_->Finish(absl::OkStatus());
}
SaveHandle::SaveHandle(std::shared_ptr<State> state) : state_(std::move(state)) {}

absl::Status SaveHandle::Wait() const {
  absl::MutexLock lock(&state_->mu);
  state_->mu.Await(absl::Condition(&state_->done));
  return state_->status;
}

absl::Status SaveHandle::WaitFor(absl::Duration timeout) const {
  absl::MutexLock lock(&state_->mu);
  if (!state_->mu.AwaitWithTimeout(absl::Condition(&state_->done), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("save of step ", state_->stats.step,
                                                    " still running after ",
                                                    absl::FormatDuration(timeout)));
  }
  return state_->status;
}

bool SaveHandle::Done() const {
  absl::MutexLock lock(&state_->mu);
  return state_->done;
}

absl::Status SaveHandle::WaitSnapshot() const {
  absl::MutexLock lock(&state_->mu);
  state_->mu.Await(absl::Condition(&state_->snapshot_done));
  return state_->snapshot_status;
}

SaveStats SaveHandle::stats() const {
  absl::MutexLock lock(&state_->mu);
  return state_->stats;
}

int64_t SaveHandle::step() const { return stats().step; }

}  // namespace snapback
