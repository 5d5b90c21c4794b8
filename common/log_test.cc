#include "common/log.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace snapback {
namespace {

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = GetLogLevel();
    SetLogSink([this](const LogMessage& m) {
      seen_.push_back(std::string(LogLevelName(m.level)) + ":" + std::string(m.text));
    });
  }
  void TearDown() override {
    SetLogSink(nullptr);
    SetLogLevel(saved_);
  }
  LogLevel saved_;
  std::vector<std::string> seen_;
};

TEST_F(LogTest, SinkReceivesFormattedMessagesAtOrAboveTheLevel) {
  SetLogLevel(LogLevel::kWarning);
  SNAPBACK_LOG(Info, "dropped %d", 1);
  SNAPBACK_LOG(Warning, "segment %s skipped: %d", "000007.seg", 5);
  SNAPBACK_LOG(Error, "failed");
  EXPECT_EQ(seen_, (std::vector<std::string>{"warning:segment 000007.seg skipped: 5",
                                             "error:failed"}));
}

TEST_F(LogTest, OffSilencesEverythingAndArgumentsAreNotEvaluated) {
  SetLogLevel(LogLevel::kOff);
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  SNAPBACK_LOG(Error, "%d", count());
  EXPECT_TRUE(seen_.empty());
  EXPECT_EQ(evaluated, 0);
}

TEST_F(LogTest, ParseLogLevelAcceptsNamesCaseInsensitively) {
  LogLevel level = LogLevel::kInfo;
  EXPECT_TRUE(ParseLogLevel("DEBUG", &level));
  EXPECT_EQ(level, LogLevel::kDebug);
  EXPECT_TRUE(ParseLogLevel("warn", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
  EXPECT_TRUE(ParseLogLevel("off", &level));
  EXPECT_EQ(level, LogLevel::kOff);
  EXPECT_FALSE(ParseLogLevel("loud", &level));
  EXPECT_EQ(level, LogLevel::kOff);  // unchanged on failure
}

TEST_F(LogTest, NullSinkRestoresStderr) {
  SetLogLevel(LogLevel::kInfo);
  SetLogSink(nullptr);
  ::testing::internal::CaptureStderr();
  SNAPBACK_LOG(Warning, "to stderr %s", "now");
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find(" W snapback: to stderr now\n"), std::string::npos) << err;
  EXPECT_TRUE(seen_.empty());
}

}  // namespace
}  // namespace snapback
