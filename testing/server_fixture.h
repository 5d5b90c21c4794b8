// What the service tests share to stand up a server: the options of an
// embedded snapback-server (storage + coordinator + detector) on a free
// loopback port, and self-signed certificates made by the openssl CLI for
// the TLS and mTLS tests.
#ifndef SNAPBACK_TESTING_SERVER_FIXTURE_H_
#define SNAPBACK_TESTING_SERVER_FIXTURE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/server.h"

namespace snapback::testing {

// An embedded server keeping its data in `data_dir`, listening on
// 127.0.0.1 with a port picked by the kernel (read it back with port()).
server::ServerOptions EmbeddedServerOptions(const std::string& data_dir);

// Server::Start(EmbeddedServerOptions(data_dir)).
absl::StatusOr<std::unique_ptr<server::Server>> StartEmbeddedServer(
    const std::string& data_dir);

// Whether `command` runs and exits 0 (its output discarded).
bool HaveCommand(const std::string& command);

// Whether the openssl CLI is there (the TLS tests skip without it).
bool HaveOpenssl();

// Writes DIR/NAME.crt and DIR/NAME.key: a self-signed P-256 certificate with
// common name `common_name` valid for DNS:localhost and IP:127.0.0.1, for a
// day. The error names the openssl command that failed.
absl::Status MakeSelfSignedCert(const std::string& dir, const std::string& name,
                                const std::string& common_name);

}  // namespace snapback::testing

#endif  // SNAPBACK_TESTING_SERVER_FIXTURE_H_
