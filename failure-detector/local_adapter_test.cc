#include "failure-detector/local_adapter.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace snapback::detector {
namespace {

// Records the orders; a job is connected when it is in `connected`.
class FakeLink final : public LauncherLink {
 public:
  absl::Status SendStart(const std::string& job_id, int64_t incarnation,
                         absl::string_view reason) override {
    if (!connected.contains(job_id)) return absl::UnavailableError("no launcher");
    orders.push_back(absl::StrCat(job_id, " start ", incarnation, " ", reason));
    return absl::OkStatus();
  }
  absl::Status SendCancel(const std::string& job_id, absl::string_view reason) override {
    if (!connected.contains(job_id)) return absl::UnavailableError("no launcher");
    orders.push_back(absl::StrCat(job_id, " cancel ", reason));
    return absl::OkStatus();
  }
  bool IsConnected(const std::string& job_id) override {
    return connected.contains(job_id);
  }

  std::map<std::string, bool> connected;
  std::vector<std::string> orders;
};

TEST(LocalAdapter, OrdersGoToTheJobsLauncher) {
  FakeLink link;
  link.connected["j"] = true;
  LocalAdapter adapter(&link);
  EXPECT_EQ(adapter.name(), "local");
  const JobBinding job{.job_id = "j",
                       .world_size = 2,
                       .scheduler = "local",
                       .scheduler_job_id = "host:123"};
  ASSERT_TRUE(adapter.Restart(job, 4, "rank 1 exited").ok());
  ASSERT_TRUE(adapter.Cancel(job, "gave up").ok());
  EXPECT_EQ(link.orders,
            (std::vector<std::string>{"j start 4 rank 1 exited", "j cancel gave up"}));
  absl::StatusOr<SchedulerStatus> s = adapter.Status(job);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->state, SchedulerJobState::kRunning);
  EXPECT_EQ(s->detail, "snapback-launch connected");
}

TEST(LocalAdapter, NoLauncherIsUnavailableAndUnknown) {
  FakeLink link;
  LocalAdapter adapter(&link);
  const JobBinding job{.job_id = "gone",
                       .world_size = 1,
                       .scheduler = "local",
                       .scheduler_job_id = "host:1"};
  EXPECT_TRUE(absl::IsUnavailable(adapter.Restart(job, 2, "x")));
  EXPECT_TRUE(absl::IsUnavailable(adapter.Cancel(job, "x")));
  absl::StatusOr<SchedulerStatus> s = adapter.Status(job);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->state, SchedulerJobState::kUnknown);
  EXPECT_EQ(s->detail, "no snapback-launch connected");
}

}  // namespace
}  // namespace snapback::detector
