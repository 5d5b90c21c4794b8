// HttpServer: a small HTTP/1.1 server for the read-only operator endpoints
// of snapback-server (/metrics for Prometheus, the index page, reports).
//
// Built on cpp-httplib (Debian's libcpp-httplib-dev); this header keeps
// httplib.h out of every file that includes it. Plaintext only, so Start()
// refuses a non-loopback address unless allow_insecure_remote is set — the
// same rule as the gRPC port (server.h, "Transport security").
//
// Connections are served by a fixed pool of threads; when every thread is
// busy and the queue is full, the accept loop waits (the kernel's backlog
// holds further connections), so a flood cannot grow memory or threads.
// Reads and writes time out (options below), so a stalled client holds a
// thread only that long.
//
// Handlers run on the pool's threads and may run concurrently; they must be
// thread-safe. Only GET (and HEAD) requests are routed; a path with no
// handler is 404.
//
// Thread-safe: Handle() before or after Start; Stop() from any thread.
#ifndef SNAPBACK_SERVER_HTTP_SERVER_H_
#define SNAPBACK_SERVER_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace snapback::server {

struct HttpRequest {
  // The path without the query string, e.g. "/metrics".
  std::string path;
  // Query parameters, decoded; a repeated name keeps its first value.
  std::map<std::string, std::string> params;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

struct HttpServerOptions {
  // Serve plaintext on a non-loopback address.
  // Default: false (Start fails with FAILED_PRECONDITION)
  bool allow_insecure_remote = false;
  // Threads serving connections.
  // Default: 4
  int threads = 4;
  // Connections accepted but waiting for a thread before accept() waits.
  // Default: 64
  int max_queued = 64;
  // Longest wait for a request's bytes, and for the client to take the
  // response's.
  // Default: 10 s
  absl::Duration io_timeout = absl::Seconds(10);
};

class HttpServer {
 public:
  // Binds `listen` ("HOST:PORT", "[V6]:PORT"; port 0 = any free port) and
  // starts serving. INVALID_ARGUMENT for an address without a port;
  // FAILED_PRECONDITION for a non-loopback host without
  // allow_insecure_remote; UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& listen, HttpServerOptions options = {});
  // Stop()s.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound TCP port.
  int port() const { return port_; }
  // "HOST:PORT" with the bound port (IPv6 hosts in brackets).
  const std::string& address() const { return address_; }

  // Routes GET `path` (exact match, e.g. "/metrics") to `handler`, replacing
  // an earlier handler of the same path.
  void Handle(const std::string& path,
              std::function<HttpResponse(const HttpRequest&)> handler);
  // The paths with a handler, sorted.
  std::vector<std::string> Paths();

  // Stops accepting, lets requests in progress finish, joins the threads.
  // Idempotent; handlers are not called afterwards.
  void Stop();

 private:
  HttpServer() = default;
  HttpResponse Dispatch(const HttpRequest& req);

  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
  int port_ = 0;
  std::string address_;

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<std::function<HttpResponse(const HttpRequest&)>>>
      handlers_ ABSL_GUARDED_BY(mu_);
  absl::Mutex stop_mu_;  // serialises Stop()
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_HTTP_SERVER_H_
