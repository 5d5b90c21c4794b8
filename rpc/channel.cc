#include "rpc/channel.h"

#include <arpa/inet.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace snapback::rpc {
namespace {

// The whole of a PEM file. The error names the file and what it was for.
absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    std::string message =
        absl::StrCat("cannot read ", what, " ", path, ": ", std::strerror(err),
                     "; check the path and its permissions");
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::FailedPreconditionError(message);
  }
  std::string out;
  char buf[8192];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read ", what, " ", path, ": I/O error"));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is empty"));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const std::string& endpoint, const ChannelOptions& options) {
  if (endpoint.empty()) {
    return absl::InvalidArgumentError("empty endpoint; use HOST:PORT");
  }
  const bool client_cert =
      !options.tls_client_cert_file.empty() || !options.tls_client_key_file.empty();
  if (client_cert &&
      (options.tls_client_cert_file.empty() || options.tls_client_key_file.empty() ||
       options.tls_root_ca_file.empty())) {
    return absl::InvalidArgumentError(
        "a client certificate needs its key and the server's root CA (TLS) as well");
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_receive_bytes);
  args.SetMaxSendMessageSize(options.max_send_bytes);
  // A server that restarts (a storage node back after a crash, a restarted
  // coordinator) is reachable again within a second: gRPC's default
  // reconnect backoff grows to 2 minutes, during which every call on the
  // channel fails at once.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  // (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS stays at its default: it is also the
  // connect timeout, and a slow handshake must not be cut short.)
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (options.tls_root_ca_file.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    SNAPBACK_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                              ReadPem(options.tls_root_ca_file, "TLS root CA"));
    if (client_cert) {
      SNAPBACK_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                                ReadPem(options.tls_client_cert_file, "TLS client cert"));
      SNAPBACK_ASSIGN_OR_RETURN(ssl.pem_private_key,
                                ReadPem(options.tls_client_key_file, "TLS client key"));
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(endpoint, credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to ", endpoint));
  }
  return channel;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerCredentialsOptions& options) {
  const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (tls && (options.tls_cert_file.empty() || options.tls_key_file.empty())) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate and a key: pass --tls-cert and --tls-key");
  }
  if (!options.tls_client_ca_file.empty() && !tls) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs the server's own --tls-cert and --tls-key");
  }
  if (!tls) {
    if (!options.allow_insecure_remote && !IsLoopbackListenAddress(options.listen)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "refusing to serve plaintext on ", options.listen,
          ", which other machines can reach; pass --tls-cert and --tls-key (or "
          "--allow-insecure-remote inside a trusted network), or listen on 127.0.0.1"));
    }
    return grpc::InsecureServerCredentials();
  }
  SNAPBACK_ASSIGN_OR_RETURN(
      std::string cert, ReadPem(options.tls_cert_file, "TLS certificate (--tls-cert)"));
  SNAPBACK_ASSIGN_OR_RETURN(std::string key,
                            ReadPem(options.tls_key_file, "TLS key (--tls-key)"));
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
  if (!options.tls_client_ca_file.empty()) {
    SNAPBACK_ASSIGN_OR_RETURN(
        ssl.pem_root_certs,
        ReadPem(options.tls_client_ca_file, "TLS client CA (--tls-client-ca)"));
    ssl.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

bool SplitHostPort(absl::string_view listen, std::string* host, std::string* port) {
  if (!listen.empty() && listen[0] == '[') {
    size_t close = listen.find(']');
    if (close == absl::string_view::npos || close + 1 >= listen.size() ||
        listen[close + 1] != ':') {
      return false;
    }
    *host = std::string(listen.substr(1, close - 1));
    *port = std::string(listen.substr(close + 2));
    return true;
  }
  size_t colon = listen.rfind(':');
  if (colon == absl::string_view::npos) return false;
  *host = std::string(listen.substr(0, colon));
  *port = std::string(listen.substr(colon + 1));
  return true;
}

bool IsLoopbackListenAddress(absl::string_view listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) {
    return true;
  }
  std::string host, port;
  if (!SplitHostPort(listen, &host, &port)) return false;
  if (absl::AsciiStrToLower(host) == "localhost") return true;
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;  // "", "0.0.0.0", "::", host names other than localhost
}

}  // namespace snapback::rpc
