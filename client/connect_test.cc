// Client::Connect without a server: the channel connects lazily, so only
// what Connect() itself checks can fail here.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "snapback/client.h"

namespace snapback {
namespace {

TEST(ConnectTest, PlaintextConnectsLazily) {
  auto client = Client::Connect({.endpoint = "127.0.0.1:1"});
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_NE(*client, nullptr);
}

TEST(ConnectTest, MissingTlsCaIsNotFound) {
  auto client = Client::Connect(
      {.endpoint = "127.0.0.1:1", .tls_root_ca_file = "/nonexistent/snapback-ca.pem"});
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound) << client.status();
  EXPECT_NE(client.status().message().find("/nonexistent/snapback-ca.pem"),
            absl::string_view::npos);
}

TEST(ConnectTest, MissingTlsCaFromEnvironmentIsNotFound) {
  const char* saved = getenv("SNAPBACK_TLS_CA");
  const std::string restore = saved != nullptr ? saved : "";
  setenv("SNAPBACK_TLS_CA", "/nonexistent/env-ca.pem", 1);
  auto client = Client::Connect({.endpoint = "127.0.0.1:1"});
  if (saved != nullptr) {
    setenv("SNAPBACK_TLS_CA", restore.c_str(), 1);
  } else {
    unsetenv("SNAPBACK_TLS_CA");
  }
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound) << client.status();
}

}  // namespace
}  // namespace snapback
