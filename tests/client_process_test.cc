// Ranks as separate processes (tests/rank_main.cc) against a real embedded
// server: 8-process save/restore, SIGKILL of a rank in the middle of a save,
// and the staging memory cap measured as peak RSS.
#include <signal.h>

#include <memory>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "snapback/client.h"
#include "testing/server_fixture.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using testing::Subprocess;

class ClientProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::StartEmbeddedServer(dir_.path() + "/node");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Subprocess> Rank(const std::string& job, int rank, int world,
                                   int incarnation, std::vector<std::string> extra) {
    std::vector<std::string> argv = {Subprocess::BinPath("snapback-test-rank"),
                                     "--endpoint",
                                     server_->address(),
                                     "--job",
                                     job,
                                     "--rank",
                                     std::to_string(rank),
                                     "--world",
                                     std::to_string(world),
                                     "--incarnation",
                                     std::to_string(incarnation)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Subprocess>(argv);
  }

  std::optional<int64_t> Latest(const std::string& job, int world) {
    auto client = Client::Connect({.endpoint = server_->address()});
    auto ck = (*client)->NewCheckpointer(
        {.job_id = job, .rank = 0, .world_size = world, .incarnation = 0});
    EXPECT_TRUE(ck.ok()) << ck.status();
    auto latest = (*ck)->LatestStep();
    EXPECT_TRUE(latest.ok()) << latest.status();
    return latest.ok() ? *latest : std::nullopt;
  }

  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
};

TEST_F(ClientProcessTest, EightRankProcessesSaveAndRestoreBitExact) {
  constexpr int kWorld = 8;
  std::vector<std::unique_ptr<Subprocess>> ranks;
  for (int r = 0; r < kWorld; ++r) {
    ranks.push_back(Rank("procs8", r, kWorld, 1,
                         {"--steps", "1,2,3", "--mib", "3", "--chunk-kib", "512"}));
  }
  for (int r = 0; r < kWorld; ++r) EXPECT_EQ(ranks[r]->Wait(absl::Seconds(120)), 0) << r;
  EXPECT_EQ(Latest("procs8", kWorld), 3);
  ranks.clear();
  for (int r = 0; r < kWorld; ++r) {
    ranks.push_back(Rank("procs8", r, kWorld, 2, {"--restore-check", "--mib", "3"}));
  }
  for (int r = 0; r < kWorld; ++r) {
    auto line = ranks[r]->WaitForLine("restored", absl::Seconds(120));
    ASSERT_TRUE(line.has_value()) << "rank " << r;
    EXPECT_EQ(*line, "restored 3");
    EXPECT_EQ(ranks[r]->Wait(absl::Seconds(60)), 0);
  }
}

TEST_F(ClientProcessTest, RankKilledMidSaveNeverMakesThatStepLatest) {
  constexpr int kWorld = 4;
  // Step 1 commits everywhere.
  {
    std::vector<std::unique_ptr<Subprocess>> ranks;
    for (int r = 0; r < kWorld; ++r) {
      ranks.push_back(Rank("killed", r, kWorld, 1, {"--steps", "1", "--mib", "2"}));
    }
    for (auto& p : ranks) ASSERT_EQ(p->Wait(absl::Seconds(120)), 0);
  }
  ASSERT_EQ(Latest("killed", kWorld), 1);
  // Step 2: ranks 0-2 complete their part; rank 3 is SIGKILLed while it is
  // saving a large tensor (staging capped at 8 MiB so the save streams).
  std::vector<std::unique_ptr<Subprocess>> ranks;
  for (int r = 0; r < kWorld - 1; ++r) {
    ranks.push_back(Rank("killed", r, kWorld, 1, {"--steps", "2", "--mib", "2"}));
  }
  auto victim = Rank("killed", kWorld - 1, kWorld, 1,
                     {"--steps", "2", "--mib", "512", "--staging-mib", "8"});
  ASSERT_TRUE(victim->WaitForLine("saving 2", absl::Seconds(120)).has_value());
  victim->Kill(SIGKILL);
  EXPECT_EQ(victim->Wait(absl::Seconds(30)), 128 + SIGKILL);
  for (auto& p : ranks) ASSERT_EQ(p->Wait(absl::Seconds(120)), 0);
  EXPECT_EQ(Latest("killed", kWorld), 1) << "a step with a killed rank became latest";

  // The job restarts as incarnation 2: every rank restores step 1 verified.
  ranks.clear();
  for (int r = 0; r < kWorld; ++r) {
    ranks.push_back(Rank("killed", r, kWorld, 2, {"--restore-check", "--mib", "2"}));
  }
  for (int r = 0; r < kWorld; ++r) {
    auto line = ranks[r]->WaitForLine("restored", absl::Seconds(120));
    ASSERT_TRUE(line.has_value()) << "rank " << r;
    EXPECT_EQ(*line, "restored 1");
  }
}

TEST_F(ClientProcessTest, StagingCapBoundsPeakMemoryOfASaveFourTimesLarger) {
  // 128 MiB saved with a 32 MiB cap. The process holds the tensor itself,
  // the cap (staging copies + encoded chunks in flight) and a fixed
  // allowance for gRPC's transport buffers and the allocator (measured
  // ~31 MiB, independent of the cap and of the checkpoint's size). Without
  // the cap, a save holds a staging copy and an encoded copy of everything:
  // 256 MiB more.
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "ASan's quarantine and shadow memory make RSS meaningless; this test "
                  "runs in the plain build";
#endif
  constexpr uint64_t kTensorMib = 128, kCapMib = 32, kAllowanceMib = 48;
  auto p = Rank("rss", 0, 1, 1,
                {"--steps", "1", "--mib", std::to_string(kTensorMib), "--staging-mib",
                 std::to_string(kCapMib)});
  auto line = p->WaitForLine("rss", absl::Seconds(300));
  ASSERT_TRUE(line.has_value());
  std::vector<std::string> parts = absl::StrSplit(*line, ' ');
  ASSERT_EQ(parts.size(), 3u);
  uint64_t base = 0, peak = 0;
  ASSERT_TRUE(absl::SimpleAtoi(parts[1], &base) && absl::SimpleAtoi(parts[2], &peak));
  const uint64_t grown_mib = (peak - base) >> 10;
  std::printf("peak RSS grew by %llu MiB for a %llu MiB save with a %llu MiB cap\n",
              static_cast<unsigned long long>(grown_mib),
              static_cast<unsigned long long>(kTensorMib),
              static_cast<unsigned long long>(kCapMib));
  EXPECT_LE(grown_mib, kTensorMib + kCapMib + kAllowanceMib);
  EXPECT_EQ(p->Wait(absl::Seconds(60)), 0);
}

}  // namespace
}  // namespace snapback
