#include "testing/server_fixture.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace snapback::testing {

server::ServerOptions EmbeddedServerOptions(const std::string& data_dir) {
  server::ServerOptions o;
  o.data_dir = data_dir;
  o.listen = "127.0.0.1:0";
  return o;
}

absl::StatusOr<std::unique_ptr<server::Server>> StartEmbeddedServer(
    const std::string& data_dir) {
  return server::Server::Start(EmbeddedServerOptions(data_dir));
}

bool HaveCommand(const std::string& command) {
  return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
}

bool HaveOpenssl() { return HaveCommand("openssl version"); }

absl::Status MakeSelfSignedCert(const std::string& dir, const std::string& name,
                                const std::string& common_name) {
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
      "-subj /CN=",
      common_name, " -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ", dir,
      "/", name, ".key -out ", dir, "/", name, ".crt");
  if (!HaveCommand(cmd)) return absl::InternalError(absl::StrCat("failed: ", cmd));
  return absl::OkStatus();
}

}  // namespace snapback::testing
