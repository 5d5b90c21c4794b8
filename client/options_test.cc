#include "client/options.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <map>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "snapback/client.h"

namespace snapback::internal_client {
namespace {

// Every variable the options read; each test starts with none set and ends
// with the process's own values back.
constexpr const char* kVars[] = {"SNAPBACK_ENDPOINT",    "SNAPBACK_TLS_CA",
                                 "SNAPBACK_JOB",         "SNAPBACK_RANK",
                                 "SNAPBACK_WORLD_SIZE",  "SNAPBACK_INCARNATION",
                                 "SNAPBACK_HEARTBEAT_MS"};

class OptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVars) {
      if (const char* v = getenv(name)) saved_[name] = v;
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const char* name : kVars) {
      auto it = saved_.find(name);
      if (it == saved_.end()) {
        unsetenv(name);
      } else {
        setenv(name, it->second.c_str(), 1);
      }
    }
  }
  static void Set(const char* name, const char* value) { setenv(name, value, 1); }

 private:
  std::map<std::string, std::string> saved_;
};

TEST_F(OptionsTest, EnvOrTreatsEmptyAsUnset) {
  EXPECT_EQ(EnvOr("SNAPBACK_JOB", "fallback"), "fallback");
  Set("SNAPBACK_JOB", "");
  EXPECT_EQ(EnvOr("SNAPBACK_JOB", "fallback"), "fallback");
  Set("SNAPBACK_JOB", "train-7");
  EXPECT_EQ(EnvOr("SNAPBACK_JOB", "fallback"), "train-7");
}

TEST_F(OptionsTest, EnvIntParsesOrLeavesTheValue) {
  int64_t v = 17;
  EXPECT_TRUE(EnvInt("SNAPBACK_RANK", &v).ok());
  EXPECT_EQ(v, 17);
  Set("SNAPBACK_RANK", "-3");
  EXPECT_TRUE(EnvInt("SNAPBACK_RANK", &v).ok());
  EXPECT_EQ(v, -3);
  Set("SNAPBACK_RANK", "2x");
  absl::Status s = EnvInt("SNAPBACK_RANK", &v);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "environment variable SNAPBACK_RANK='2x' is not an integer");
}

TEST_F(OptionsTest, ClientDefaultsAndEnvironment) {
  ClientOptions o;
  ResolveClientOptions(&o);
  EXPECT_EQ(o.endpoint, "127.0.0.1:7420");
  EXPECT_EQ(o.tls_root_ca_file, "");

  Set("SNAPBACK_ENDPOINT", "coord:9000");
  Set("SNAPBACK_TLS_CA", "/etc/snapback/ca.pem");
  ClientOptions from_env;
  ResolveClientOptions(&from_env);
  EXPECT_EQ(from_env.endpoint, "coord:9000");
  EXPECT_EQ(from_env.tls_root_ca_file, "/etc/snapback/ca.pem");

  ClientOptions explicit_options{.endpoint = "other:1", .tls_root_ca_file = "mine.pem"};
  ResolveClientOptions(&explicit_options);
  EXPECT_EQ(explicit_options.endpoint, "other:1");
  EXPECT_EQ(explicit_options.tls_root_ca_file, "mine.pem");
}

TEST_F(OptionsTest, CheckpointerNeedsAJobId) {
  CheckpointerOptions o;
  absl::Status s = ResolveCheckpointerOptions(&o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("SNAPBACK_JOB"), absl::string_view::npos) << s;
}

TEST_F(OptionsTest, CheckpointerDefaultsWithoutEnvironment) {
  CheckpointerOptions o;
  o.job_id = "j";
  ASSERT_TRUE(ResolveCheckpointerOptions(&o).ok());
  EXPECT_EQ(o.job_id, "j");
  EXPECT_EQ(o.rank, 0);
  EXPECT_EQ(o.world_size, 1);
  EXPECT_EQ(o.incarnation, -1);  // the coordinator's, decided at registration
  EXPECT_EQ(o.heartbeat_interval, absl::Seconds(1));
}

TEST_F(OptionsTest, CheckpointerTakesUnsetFieldsFromEnvironment) {
  Set("SNAPBACK_JOB", "train");
  Set("SNAPBACK_RANK", "3");
  Set("SNAPBACK_WORLD_SIZE", "4");
  Set("SNAPBACK_INCARNATION", "5");
  Set("SNAPBACK_HEARTBEAT_MS", "250");
  CheckpointerOptions o;
  ASSERT_TRUE(ResolveCheckpointerOptions(&o).ok());
  EXPECT_EQ(o.job_id, "train");
  EXPECT_EQ(o.rank, 3);
  EXPECT_EQ(o.world_size, 4);
  EXPECT_EQ(o.incarnation, 5);
  EXPECT_EQ(o.heartbeat_interval, absl::Milliseconds(250));

  // Fields the caller set win over the environment.
  CheckpointerOptions mine;
  mine.job_id = "mine";
  mine.rank = 1;
  mine.world_size = 2;
  mine.incarnation = 9;
  mine.heartbeat_interval = absl::ZeroDuration();
  ASSERT_TRUE(ResolveCheckpointerOptions(&mine).ok());
  EXPECT_EQ(mine.job_id, "mine");
  EXPECT_EQ(mine.rank, 1);
  EXPECT_EQ(mine.world_size, 2);
  EXPECT_EQ(mine.incarnation, 9);
  EXPECT_EQ(mine.heartbeat_interval, absl::ZeroDuration());
}

TEST_F(OptionsTest, NegativeHeartbeatFromEnvironmentTurnsItOff) {
  Set("SNAPBACK_HEARTBEAT_MS", "-5");
  CheckpointerOptions o;
  o.job_id = "j";
  ASSERT_TRUE(ResolveCheckpointerOptions(&o).ok());
  EXPECT_EQ(o.heartbeat_interval, absl::ZeroDuration());
}

TEST_F(OptionsTest, CheckpointerRejectsBadValues) {
  auto resolve = [](CheckpointerOptions o) {
    o.job_id = "j";
    return ResolveCheckpointerOptions(&o);
  };
  CheckpointerOptions o;
  o.rank = 2;
  o.world_size = 2;
  absl::Status s = resolve(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "rank 2 is outside [0, 2); check SNAPBACK_RANK");

  o = {};
  o.chunk_bytes = 4095;
  EXPECT_EQ(resolve(o).message(), "chunk_bytes 4095 must be in [4 KiB, 16 MiB]");
  o.chunk_bytes = (16u << 20) + 1;
  EXPECT_EQ(resolve(o).code(), absl::StatusCode::kInvalidArgument);
  o.chunk_bytes = 4096;
  EXPECT_TRUE(resolve(o).ok());
  o.chunk_bytes = 16u << 20;
  EXPECT_TRUE(resolve(o).ok());

  for (int field = 0; field < 5; ++field) {
    SCOPED_TRACE(field);
    CheckpointerOptions z;
    int* counts[] = {&z.copy_threads, &z.pipeline_threads, &z.upload_streams,
                     &z.max_inflight, &z.restore_threads};
    *counts[field] = 0;
    EXPECT_EQ(resolve(z).code(), absl::StatusCode::kInvalidArgument);
  }

  Set("SNAPBACK_WORLD_SIZE", "many");
  s = resolve({});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "environment variable SNAPBACK_WORLD_SIZE='many' is not an integer");
}

}  // namespace
}  // namespace snapback::internal_client
