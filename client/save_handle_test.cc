#include <gtest/gtest.h>

#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client/save_handle_state.h"
#include "snapback/client.h"

namespace snapback {
namespace {

TEST(SaveHandleTest, DefaultHandleIsAFinishedSaveOfNoStep) {
  SaveHandle h;
  EXPECT_TRUE(h.Done());
  EXPECT_TRUE(h.Wait().ok());
  EXPECT_TRUE(h.WaitFor(absl::ZeroDuration()).ok());
  EXPECT_TRUE(h.WaitSnapshot().ok());
  EXPECT_EQ(h.step(), -1);
  EXPECT_FALSE(h.stats().skipped);
}

TEST(SaveHandleTest, RunningSaveTimesOutWithItsStep) {
  auto state = std::make_shared<SaveHandle::State>(7);
  SaveHandle h(state);
  EXPECT_FALSE(h.Done());
  EXPECT_EQ(h.step(), 7);
  absl::Status s = h.WaitFor(absl::Milliseconds(20));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(s.message().find("save of step 7 still running"), absl::string_view::npos)
      << s;
}

TEST(SaveHandleTest, SnapshotFinishesBeforeTheSave) {
  auto state = std::make_shared<SaveHandle::State>(3);
  SaveHandle h(state);
  state->FinishSnapshot(absl::OkStatus());
  EXPECT_TRUE(h.WaitSnapshot().ok());
  EXPECT_FALSE(h.Done());
  state->Finish(absl::UnavailableError("storage node down"));
  EXPECT_TRUE(h.Done());
  EXPECT_EQ(h.Wait().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(h.WaitFor(absl::Seconds(1)).code(), absl::StatusCode::kUnavailable);
  // The snapshot's own status stays what it was.
  EXPECT_TRUE(h.WaitSnapshot().ok());
}

TEST(SaveHandleTest, FinishWithoutSnapshotFinishesTheSnapshotWithTheSameStatus) {
  auto state = std::make_shared<SaveHandle::State>(4);
  SaveHandle h(state);
  state->Finish(absl::InvalidArgumentError("bad view"));
  EXPECT_EQ(h.WaitSnapshot().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.Wait().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SaveHandleTest, OnlyTheFirstFinishCounts) {
  auto state = std::make_shared<SaveHandle::State>(5);
  SaveHandle h(state);
  state->FinishSnapshot(absl::AbortedError("first"));
  state->FinishSnapshot(absl::OkStatus());
  state->Finish(absl::OkStatus());
  state->Finish(absl::DataLossError("late"));
  EXPECT_EQ(h.WaitSnapshot().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(h.Wait().ok());
}

TEST(SaveHandleTest, CopiesShareStateAndStats) {
  auto state = std::make_shared<SaveHandle::State>(9);
  SaveHandle a(state);
  SaveHandle b = a;
  {
    absl::MutexLock lock(&state->mu);
    state->stats.chunks = 12;
    state->stats.skipped = true;
  }
  state->Finish(absl::OkStatus());
  EXPECT_TRUE(b.Done());
  EXPECT_EQ(b.stats().chunks, 12u);
  EXPECT_TRUE(b.stats().skipped);
  EXPECT_EQ(a.stats().step, 9);
}

TEST(SaveHandleTest, WaitAndWaitSnapshotBlockUntilFinished) {
  auto state = std::make_shared<SaveHandle::State>(1);
  SaveHandle h(state);
  absl::Notification snapshotted, waited;
  absl::Status snapshot_status, wait_status;
  std::thread snapshot_waiter([&] {
    snapshot_status = h.WaitSnapshot();
    snapshotted.Notify();
  });
  std::thread waiter([&] {
    wait_status = h.Wait();
    waited.Notify();
  });
  EXPECT_FALSE(snapshotted.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  EXPECT_FALSE(waited.HasBeenNotified());
  state->FinishSnapshot(absl::OkStatus());
  EXPECT_TRUE(snapshotted.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_FALSE(waited.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  state->Finish(absl::FailedPreconditionError("fenced"));
  EXPECT_TRUE(waited.WaitForNotificationWithTimeout(absl::Seconds(30)));
  snapshot_waiter.join();
  waiter.join();
  EXPECT_TRUE(snapshot_status.ok());
  EXPECT_EQ(wait_status.code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace snapback
