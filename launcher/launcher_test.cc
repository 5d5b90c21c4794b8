// Launcher::Run in this process against an embedded server (coordinator +
// detector) on loopback, plaintext, TLS and mTLS, with certificates made by
// the openssl CLI at test time. The ranks are small shell scripts that check
// the environment the launcher gives them and exit: 0 (done) when it is
// right, 78 (do not restart: the job is cancelled) when it is not.
#include "launcher/launcher.h"

#include <signal.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "testing/server_fixture.h"
#include "testing/test_util.h"

namespace snapback::launcher {
namespace {

class LauncherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Run() blocks SIGINT/SIGTERM in this thread and leaves them blocked.
    pthread_sigmask(SIG_SETMASK, nullptr, &mask_);
  }
  void TearDown() override { pthread_sigmask(SIG_SETMASK, &mask_, nullptr); }

  void StartServer(const std::string& cert = "", const std::string& key = "",
                   const std::string& client_ca = "") {
    server::ServerOptions o = testing::EmbeddedServerOptions(dir_.path() + "/node");
    o.tls_cert_file = cert;
    o.tls_key_file = key;
    o.tls_client_ca_file = client_ca;
    auto server = server::Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A self-signed certificate for localhost and 127.0.0.1 in DIR/NAME.crt,
  // its key in DIR/NAME.key.
  void MakeCert(const std::string& name) {
    const absl::Status made = testing::MakeSelfSignedCert(dir_.path(), name, name);
    ASSERT_TRUE(made.ok()) << made;
  }
  std::string File(const std::string& name) { return dir_.path() + "/" + name; }

  // Two ranks that exit 0 when SNAPBACK_TLS_CA is `ca` ("" = unset) and
  // the rest of their environment is there, 78 otherwise.
  LauncherOptions Options(const std::string& job, const std::string& ca) {
    LauncherOptions o;
    o.job_id = job;
    o.nproc = 2;
    o.endpoint = server_->address();
    o.channel.tls_root_ca_file = ca;
    o.connect_timeout = absl::Seconds(10);
    o.stop_grace = absl::Seconds(1);
    o.argv = {
        "/bin/sh", "-c",
        absl::StrCat("[ \"$SNAPBACK_TLS_CA\" = '", ca, "' ] && [ \"$SNAPBACK_JOB\" = '",
                     job, "' ] && [ \"$SNAPBACK_ENDPOINT\" = '", server_->address(),
                     "' ] && [ \"$SNAPBACK_WORLD_SIZE\" = 2 ] || exit 78")};
    return o;
  }

  std::string State(const std::string& job) {
    auto h = server_->TEST_detector()->Health(job);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? h->state() : "";
  }

  sigset_t mask_;
  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
};

TEST_F(LauncherTest, RanksThatFinishEndTheLaunchWithZero) {
  unsetenv("SNAPBACK_TLS_CA");
  StartServer();
  absl::StatusOr<int> rc = Launcher::Run(Options("plain", ""));
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, kExitFinished);
  EXPECT_EQ(State("plain"), "FINISHED");
}

TEST_F(LauncherTest, ADoNotRestartExitCancelsTheLaunch) {
  StartServer();
  LauncherOptions o = Options("cancel", "");
  o.argv = {"/bin/sh", "-c", "exit 78"};
  absl::StatusOr<int> rc = Launcher::Run(o);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, kExitCancelled);
  EXPECT_EQ(State("cancel"), "GAVE_UP");
}

TEST_F(LauncherTest, OverTlsTheRanksGetTheCa) {
  if (!testing::HaveOpenssl()) GTEST_SKIP() << "openssl CLI not found";
  MakeCert("server");
  StartServer(File("server.crt"), File("server.key"));
  absl::StatusOr<int> rc = Launcher::Run(Options("tls", File("server.crt")));
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, kExitFinished);
  EXPECT_EQ(State("tls"), "FINISHED");

  // Plaintext to a TLS server never connects.
  LauncherOptions plain = Options("tls-plain", "");
  plain.connect_timeout = absl::Milliseconds(500);
  rc = Launcher::Run(plain);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, kExitUnavailable);
}

TEST_F(LauncherTest, MutualTlsNeedsTheLaunchersClientCertificate) {
  if (!testing::HaveOpenssl()) GTEST_SKIP() << "openssl CLI not found";
  MakeCert("server");
  MakeCert("client");
  StartServer(File("server.crt"), File("server.key"), File("client.crt"));
  LauncherOptions o = Options("mtls", File("server.crt"));
  o.channel.tls_client_cert_file = File("client.crt");
  o.channel.tls_client_key_file = File("client.key");
  absl::StatusOr<int> rc = Launcher::Run(o);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, kExitFinished);

  LauncherOptions anonymous = Options("mtls-anonymous", File("server.crt"));
  anonymous.connect_timeout = absl::Milliseconds(500);
  rc = Launcher::Run(anonymous);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, kExitUnavailable);
}

TEST_F(LauncherTest, BadOptionsStartNothing) {
  LauncherOptions o;
  EXPECT_EQ(Launcher::Run(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.job_id = "j";
  o.nproc = 4097;
  o.argv = {"true"};
  EXPECT_EQ(Launcher::Run(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.nproc = 1;
  o.heartbeat_ms = 5;
  EXPECT_EQ(Launcher::Run(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.heartbeat_ms = 0;
  o.channel.tls_root_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(Launcher::Run(o).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace snapback::launcher
