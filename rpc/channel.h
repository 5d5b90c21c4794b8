// One factory for gRPC channels and credentials: every client of a snapback
// server (the client library, the internal storage client, snapback-launch,
// the coordinator's channels to storage nodes) and every server builds its
// transport security here, so TLS works the same way everywhere.
#ifndef SNAPBACK_RPC_CHANNEL_H_
#define SNAPBACK_RPC_CHANNEL_H_

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace snapback::rpc {

// How a client reaches a server.
struct ChannelOptions {
  // PEM file of the CA that signed the server's certificate. Set = TLS.
  // Default: "" (plaintext)
  std::string tls_root_ca_file;
  // PEM certificate chain and key presented to servers that require client
  // certificates (mTLS). Both or neither; only with tls_root_ca_file.
  // Default: "" (no client certificate)
  std::string tls_client_cert_file;
  std::string tls_client_key_file;
  // Name checked in the server's certificate instead of the endpoint's host.
  // Default: "" (the endpoint's host)
  std::string tls_server_name;
  // Largest message the channel accepts / sends; -1 = unlimited.
  // Default: 4 MiB / unlimited (gRPC's defaults)
  int max_receive_bytes = 4 << 20;
  int max_send_bytes = -1;
};

// A channel to `endpoint` ("HOST:PORT"). The channel connects lazily: an
// unreachable server shows up as UNAVAILABLE on the first call.
// INVALID_ARGUMENT for an empty endpoint or an incomplete client
// certificate; NOT_FOUND / PERMISSION_DENIED / FAILED_PRECONDITION when a TLS
// file cannot be read (the message names the file).
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& endpoint,
                                                           const ChannelOptions& options);

// How a server proves who it is and whom it lets in.
struct ServerCredentialsOptions {
  // The address the server listens on; plaintext is refused unless it is a
  // loopback address or allow_insecure_remote is set.
  std::string listen;
  // PEM certificate chain and key; both set = TLS.
  // Default: "" (plaintext)
  std::string tls_cert_file;
  std::string tls_key_file;
  // Require client certificates signed by this CA (mTLS).
  // Default: "" (no client certificates asked for)
  std::string tls_client_ca_file;
  // Serve plaintext on a non-loopback address.
  // Default: false
  bool allow_insecure_remote = false;
};

// Server credentials for `options`: INVALID_ARGUMENT for a half-given
// cert/key pair or a client CA without TLS; FAILED_PRECONDITION for
// plaintext on an address other machines can reach; the file's error when a
// PEM file cannot be read or is empty.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerCredentialsOptions& options);

// Splits "HOST:PORT" / "[V6]:PORT" into host and port text; false when
// there is no port.
bool SplitHostPort(absl::string_view address, std::string* host, std::string* port);

// True when `listen` ("HOST:PORT", "[V6]:PORT") names a loopback address
// (127.0.0.0/8, ::1, localhost).
bool IsLoopbackListenAddress(absl::string_view listen);

}  // namespace snapback::rpc

#endif  // SNAPBACK_RPC_CHANNEL_H_
