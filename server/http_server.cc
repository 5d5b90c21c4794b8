#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "rpc/channel.h"

namespace snapback::server {
namespace {

// httplib's own pool has an unbounded queue; this one makes the accept loop
// wait while `max_queued` connections are already waiting for a thread.
class BoundedPool final : public httplib::TaskQueue {
 public:
  BoundedPool(int threads, int max_queued) : max_queued_(std::max(1, max_queued)) {
    for (int i = 0; i < std::max(1, threads); ++i) {
      threads_.emplace_back([this] { Work(); });
    }
  }
  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return jobs_.size() < max_queued_ || shutdown_; });
    jobs_.push_back(std::move(fn));
    not_empty_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutdown_ = true;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        not_empty_.wait(lock, [&] { return !jobs_.empty() || shutdown_; });
        // Queued connections are still served on shutdown: each job owns
        // (and closes) its socket.
        if (jobs_.empty()) return;
        fn = std::move(jobs_.front());
        jobs_.pop_front();
        not_full_.notify_one();
      }
      fn();
    }
  }

  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<std::function<void()>> jobs_;
  bool shutdown_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                              HttpServerOptions options) {
  std::string host, port_text;
  int port = 0;
  if (!rpc::SplitHostPort(listen, &host, &port_text) || host.empty() ||
      !absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HTTP listen address '", listen, "' is not HOST:PORT (e.g. 127.0.0.1:7421)"));
  }
  if (!options.allow_insecure_remote && !rpc::IsLoopbackListenAddress(listen)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve HTTP (plaintext) on ", listen,
        ", which other machines can reach; listen on 127.0.0.1 (and scrape through a "
        "proxy or tunnel), or pass --allow-insecure-remote inside a trusted network"));
  }
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->http_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *server->http_;
  // httplib sets SO_REUSEPORT by default, which would let a second server
  // bind the same port and split the scrapes between them.
  http.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  const int threads = options.threads, queued = options.max_queued;
  http.new_task_queue = [threads, queued] { return new BoundedPool(threads, queued); };
  const int64_t timeout_us = absl::ToInt64Microseconds(options.io_timeout);
  http.set_read_timeout(timeout_us / 1000000, timeout_us % 1000000);
  http.set_write_timeout(timeout_us / 1000000, timeout_us % 1000000);
  http.set_keep_alive_timeout(5);
  http.set_keep_alive_max_count(100);
  http.set_payload_max_length(64 << 10);  // GET only: no bodies worth reading
  http.Get(R"(/.*)",
           [s = server.get()](const httplib::Request& req, httplib::Response& res) {
             HttpRequest r;
             r.path = req.path;
             for (const auto& [k, v] : req.params) r.params.emplace(k, v);
             HttpResponse out = s->Dispatch(r);
             res.status = out.status;
             res.set_content(std::move(out.body), out.content_type.c_str());
           });

  if (port == 0) {
    port = http.bind_to_any_port(host);
  } else if (!http.bind_to_port(host, port)) {
    port = -1;
  }
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for HTTP on ", listen,
        ": the address is invalid, not local, or in use; pick another --http-listen"));
  }
  server->port_ = port;
  server->address_ = absl::StrCat(absl::StrContains(host, ':') ? "[" : "", host,
                                  absl::StrContains(host, ':') ? "]" : "", ":", port);
  server->listener_ = std::thread([s = server.get()] { s->http_->listen_after_bind(); });
  // Stop() only interrupts a listener that is running: wait until it is, so
  // a Stop() right after Start() cannot miss it. Takes microseconds.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!http.is_running()) {
    if (absl::Now() > deadline) {
      server->Stop();
      return absl::InternalError("the HTTP server's listener thread did not start");
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  return server;
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Handle(const std::string& path,
                        std::function<HttpResponse(const HttpRequest&)> handler) {
  auto h = std::make_shared<std::function<HttpResponse(const HttpRequest&)>>(
      std::move(handler));
  absl::MutexLock lock(&mu_);
  handlers_[path] = std::move(h);
}

std::vector<std::string> HttpServer::Paths() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [path, h] : handlers_) out.push_back(path);
  return out;
}

HttpResponse HttpServer::Dispatch(const HttpRequest& req) {
  std::shared_ptr<std::function<HttpResponse(const HttpRequest&)>> handler;
  {
    absl::MutexLock lock(&mu_);
    auto it = handlers_.find(req.path);
    if (it != handlers_.end()) handler = it->second;
  }
  if (handler == nullptr) {
    return HttpResponse{.status = 404,
                        .body = absl::StrCat("no such page: ", req.path,
                                             "; see / for the list of endpoints\n")};
  }
  return (*handler)(req);
}

void HttpServer::Stop() {
  absl::MutexLock lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  if (http_ != nullptr) http_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace snapback::server
