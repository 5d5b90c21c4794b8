#include "server/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "rpc/channel.h"
#include "storage/file_system.h"

namespace snapback::server {
absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  const std::string& role = options.role;
  if (!role.empty() && role != "storage" && role != "coordinator") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown role '", role, "'; use storage, coordinator, or no role for both"));
  }
  const bool run_storage = role != "coordinator";
  const bool run_coordinator = role != "storage";
  if (role != "storage" && !options.node.coordinator.empty()) {
    return absl::InvalidArgumentError(
        "--coordinator is for --role=storage (a node joining a coordinator's cluster)");
  }
  if (role != "coordinator" && !options.storage_endpoints.empty()) {
    return absl::InvalidArgumentError(
        "--storage-endpoints is only for --role=coordinator; this server stores "
        "chunks itself");
  }
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError(
        "no data directory: pass --data-dir, the directory where chunks and/or "
        "checkpoint metadata are stored");
  }
  if (options.listen.empty()) {
    return absl::InvalidArgumentError("empty listen address; use HOST:PORT");
  }
  SNAPBACK_RETURN_IF_ERROR(ValidateLimits(options.limits));
  SNAPBACK_RETURN_IF_ERROR(coordinator::ValidateCoordinatorOptions(options.coordinator));
  if (options.gc_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("gc_interval must not be negative");
  }
  // Before opening the store: a refused configuration must not touch disk.
  SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                            rpc::MakeServerCredentials({
                                .listen = options.listen,
                                .tls_cert_file = options.tls_cert_file,
                                .tls_key_file = options.tls_key_file,
                                .tls_client_ca_file = options.tls_client_ca_file,
                                .allow_insecure_remote = options.allow_insecure_remote,
                            }));
  if (!options.http_listen.empty() && !options.allow_insecure_remote &&
      !rpc::IsLoopbackListenAddress(options.http_listen)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve HTTP (plaintext) on ", options.http_listen,
        ", which other machines can reach; use --http-listen=127.0.0.1:PORT (and scrape "
        "through a proxy or tunnel), or --allow-insecure-remote inside a trusted "
        "network"));
  }

  std::unique_ptr<Server> server(new Server());
  server->role_ = role;
  server->metrics_ = std::make_unique<metrics::MetricsRegistry>();
  if (role == "coordinator" && !options.storage_endpoints.empty()) {
    SNAPBACK_ASSIGN_OR_RETURN(
        server->tier_, coordinator::RemoteChunkTier::Connect(options.storage_endpoints,
                                                             options.storage_client));
  } else if (role == "coordinator") {
    coordinator::ClusterOptions cluster = options.cluster;
    cluster.storage_client = options.storage_client;
    if (cluster.clock == nullptr) cluster.clock = options.coordinator.clock;
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir, ec);
    SNAPBACK_ASSIGN_OR_RETURN(
        std::unique_ptr<coordinator::ClusterTier> tier,
        coordinator::ClusterTier::Open(options.data_dir + "/tier", std::move(cluster)));
    server->cluster_ = tier.get();
    server->tier_ = std::move(tier);
  } else {
    options.store.verify_on_put = false;  // the service verifies; see ServerOptions
    SNAPBACK_ASSIGN_OR_RETURN(server->store_,
                              storage::ChunkStore::Open(options.data_dir, options.store));
    server->io_mode_ = server->store_->Stats().io_mode;
    server->tier_ = std::make_unique<coordinator::LocalChunkTier>(server->store_.get());
  }
  if (run_coordinator) {
    SNAPBACK_ASSIGN_OR_RETURN(
        server->coordinator_store_,
        coordinator::CoordinatorStore::Open(options.data_dir + "/meta",
                                            server->tier_.get(), options.coordinator));
    server->coordinator_pool_ =
        std::make_unique<ThreadPool>(std::max(1, options.coordinator_threads));
    server->coordinator_service_ = std::make_unique<CoordinatorServiceImpl>(
        server->coordinator_store_.get(), server->coordinator_pool_.get());
    server->job_directory_ =
        std::make_unique<StoreJobDirectory>(server->coordinator_store_.get());
    server->detector_ = std::make_unique<detector::Detector>(
        options.detector,
        options.coordinator.clock != nullptr ? options.coordinator.clock : RealClock(),
        server->job_directory_.get());
    server->detector_service_ = std::make_unique<DetectorServiceImpl>(
        server->detector_.get(), server->coordinator_store_.get(),
        server->coordinator_pool_.get());
    server->detector_->AddAdapter(server->detector_service_->local_adapter());
    for (const auto& adapter : options.scheduler_adapters) {
      server->detector_->AddAdapter(adapter);
    }
    if (!options.rebuild_from_tier.empty()) {
      if (server->cluster_ == nullptr) {
        return absl::InvalidArgumentError(
            "--rebuild-from-tier is for a coordinator of a storage cluster (--role "
            "coordinator without --storage-endpoints)");
      }
      // Before the tier may reconcile nodes against the catalogue: an empty
      // catalogue would make every chunk look unwanted.
      SNAPBACK_ASSIGN_OR_RETURN(coordinator::RebuildReport report,
                                coordinator::RebuildFromTier(
                                    server->coordinator_store_.get(),
                                    options.rebuild_from_tier, options.storage_client));
      SNAPBACK_RETURN_IF_ERROR(server->cluster_->MarkRebuilt());
      SNAPBACK_LOG(
          Info,
          "catalogue rebuilt from %d storage node(s): %d job(s), %d checkpoint(s) "
          "imported, %d skipped",
          report.nodes_read, report.jobs, report.imported, report.skipped_missing);
    }
    if (server->cluster_ != nullptr) {
      server->cluster_->SetCatalog(server->coordinator_store_.get());
      // Heartbeats and registrations on their own threads: a long scrub or
      // a commit waiting on a frozen node must not starve them (every node
      // would go DOWN).
      server->membership_pool_ = std::make_unique<ThreadPool>(2);
      server->cluster_service_ = std::make_unique<ClusterServiceImpl>(
          server->cluster_, server->membership_pool_.get(),
          server->coordinator_pool_.get());
    }
    server->coordinator_service_->SetCommitListener(
        [d = server->detector_.get()](const std::string& job, int64_t step) {
          d->OnCommitted(job, step);
        });
    server->coordinator_metrics_ = std::make_unique<CoordinatorMetrics>(
        server->metrics_.get(), server->coordinator_store_.get());
    server->coordinator_service_->SetCommitObserver(
        [m = server->coordinator_metrics_.get()](const v1::CommitRankRequest& req,
                                                 const v1::CommitRankResponse& resp) {
          m->OnCommitRank(req, resp);
        });
    AddCoordinatorCollectors(server->metrics_.get(), server->coordinator_store_.get(),
                             server->detector_.get());
    server->sla_targets_ = options.sla_targets;
    server->report_service_ = std::make_unique<ReportServiceImpl>(
        server->coordinator_store_.get(), server->detector_.get(), options.sla_targets,
        server->coordinator_pool_.get());
    AddReportCollectors(server->metrics_.get(), server->coordinator_store_.get(),
                        server->detector_.get(), options.sla_targets);
    if (server->cluster_service_ != nullptr) {
      server->cluster_metrics_ = std::make_unique<ClusterMetrics>(server->metrics_.get());
      server->cluster_service_->SetMetrics(server->cluster_metrics_.get());
      AddClusterCollectors(server->metrics_.get(), server->cluster_);
    }
  }
  if (run_storage) {
    int verify_threads = options.verify_threads;
    if (verify_threads <= 0) {
      verify_threads = std::max(1u, std::thread::hardware_concurrency());
    }
    server->verify_pool_ = std::make_unique<ThreadPool>(verify_threads);
    server->io_pool_ = std::make_unique<ThreadPool>(std::max(1, options.io_threads));
    ClusterHooks hooks;
    if (!options.node.coordinator.empty()) {
      server->peers_ = std::make_unique<Peers>(options.storage_client);
      SNAPBACK_ASSIGN_OR_RETURN(server->catalog_,
                                storage::CatalogStore::Open(options.data_dir));
      server->forward_pool_ = std::make_unique<ThreadPool>(8);
      hooks.peers = server->peers_.get();
      hooks.forward_pool = server->forward_pool_.get();
      hooks.catalog = server->catalog_.get();
      hooks.repair_bytes_per_sec = options.node_repair_bytes_per_sec;
    }
    server->service_ = std::make_unique<StorageServiceImpl>(
        server->store_.get(), server->verify_pool_.get(), server->io_pool_.get(),
        options.limits, std::move(hooks));
    server->storage_metrics_ = std::make_unique<StorageMetrics>(server->metrics_.get());
    server->service_->SetMetrics(server->storage_metrics_.get());
    AddChunkStoreCollectors(server->metrics_.get(), server->store_.get());
  }

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, credentials, &port);
  if (server->service_ != nullptr) builder.RegisterService(server->service_.get());
  if (server->coordinator_service_ != nullptr) {
    builder.RegisterService(server->coordinator_service_.get());
    builder.RegisterService(server->detector_service_.get());
    builder.RegisterService(server->report_service_.get());
  }
  if (server->cluster_service_ != nullptr) {
    builder.RegisterService(server->cluster_service_.get());
  }
  // gRPC's receive limit is per server, not per service. A storage node
  // lets gRPC refuse oversized frames; with the coordinator on the port the
  // limit must fit a manifest, and the storage service checks frames itself.
  uint64_t max_message = options.limits.max_frame_bytes;
  if (run_coordinator) {
    max_message = std::max<uint64_t>(max_message,
                                     options.coordinator.max_manifest_bytes + (1u << 20));
  }
  if (server->catalog_ != nullptr) {
    // A cluster node takes catalogue records (every rank's manifest of a
    // checkpoint) up to CatalogStore::kMaxValueBytes; PutChunks frames are
    // still held to max_frame_bytes by the service itself.
    max_message = std::max<uint64_t>(max_message,
                                     storage::CatalogStore::kMaxValueBytes + (1u << 20));
  }
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<uint64_t>(max_message, INT32_MAX)));
  // gRPC sets SO_REUSEPORT by default, which would let a second server bind
  // the same port silently and split the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen,
        ": the address is invalid, not local, or in use; pick another --listen"));
  }
  server->port_ = port;
  std::string host, port_text;
  if (rpc::SplitHostPort(options.listen, &host, &port_text) &&
      !absl::StartsWith(options.listen, "unix")) {
    server->address_ = absl::StrCat(absl::StrContains(host, ':') ? "[" : "", host,
                                    absl::StrContains(host, ':') ? "]" : "", ":", port);
  } else {
    server->address_ = options.listen;
  }
  if (server->peers_ != nullptr) {
    NodeAgentOptions node = options.node;
    if (node.advertise.empty()) node.advertise = server->address_;
    node.channel.tls_root_ca_file = options.storage_client.tls_root_ca_file;
    node.channel.tls_client_cert_file = options.storage_client.tls_client_cert_file;
    node.channel.tls_client_key_file = options.storage_client.tls_client_key_file;
    node.channel.tls_server_name = options.storage_client.tls_server_name;
    SNAPBACK_ASSIGN_OR_RETURN(
        server->node_agent_,
        NodeAgent::Start(std::move(node), options.data_dir, server->store_.get(),
                         server->peers_.get()));
  }
  if (!options.http_listen.empty()) {
    SNAPBACK_RETURN_IF_ERROR(server->StartHttp(options));
  }
  if (run_coordinator && options.gc_interval > absl::ZeroDuration()) {
    server->gc_thread_ = std::thread(
        [s = server.get(), interval = options.gc_interval] { s->GcLoop(interval); });
  }
  return server;
}

absl::Status Server::StartHttp(const ServerOptions& options) {
  SNAPBACK_ASSIGN_OR_RETURN(
      http_, HttpServer::Start(options.http_listen,
                               {.allow_insecure_remote = options.allow_insecure_remote}));
  http_->Handle("/metrics", [m = metrics_.get()](const HttpRequest&) {
    return HttpResponse{.content_type = metrics::MetricsRegistry::kContentType,
                        .body = m->Render()};
  });
  if (coordinator_store_ != nullptr) {
    http_->Handle("/report", [this](const HttpRequest& req) {
      return ReportPage(coordinator_store_.get(), detector_.get(), sla_targets_, req);
    });
  }
  http_->Handle("/", [h = http_.get(), role = role_](const HttpRequest&) {
    std::string body = absl::StrCat(
        "<!doctype html>\n<html><head><title>snapback-server</title></head><body>\n"
        "<h1>snapback-server</h1>\n<p>role ",
        role.empty() ? "storage+coordinator" : role, "</p>\n<ul>\n");
    for (const std::string& path : h->Paths()) {
      if (path == "/") continue;
      absl::StrAppend(&body, "<li><a href=\"", path, "\">", path, "</a></li>\n");
    }
    absl::StrAppend(&body, "</ul>\n</body></html>\n");
    return HttpResponse{.content_type = "text/html; charset=utf-8", .body = body};
  });
  return absl::OkStatus();
}

void Server::GcLoop(absl::Duration interval) {
  absl::MutexLock lock(&gc_mu_);
  for (;;) {
    // Only the schedule uses the real clock; every decision inside
    // CollectGarbage reads the store's injected clock.
    gc_mu_.AwaitWithTimeout(absl::Condition(&gc_stop_), interval);
    if (gc_stop_) return;
    gc_mu_.Unlock();
    absl::StatusOr<v1::CollectGarbageResponse> gc = coordinator_store_->CollectGarbage();
    if (!gc.ok()) {
      SNAPBACK_LOG(Warning, "garbage collection failed (retrying in %s): %s",
                   absl::FormatDuration(interval), gc.status().ToString());
    }
    gc_mu_.Lock();
  }
}

Server::~Server() { Shutdown(); }

void Server::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mu_);
  if (shutdown_done_.HasBeenNotified()) return;
  // No scrapes of a server shutting down (collectors read the stores).
  if (http_ != nullptr) http_->Stop();
  {
    absl::MutexLock gc_lock(&gc_mu_);
    gc_stop_ = true;
  }
  // Heartbeat and launcher streams last as long as their processes: end
  // them now rather than waiting out the grace period (the ranks reconnect
  // to the next coordinator), and stop the detector acting on their ends.
  // The detector first: with the heartbeats cut, it would soon declare
  // every job dead and fence and restart them all.
  if (node_agent_ != nullptr) node_agent_->Stop();
  if (cluster_ != nullptr) cluster_->Stop();
  if (detector_ != nullptr) detector_->Stop();
  if (detector_service_ != nullptr) detector_service_->BeginShutdown();
  // Calls in flight get up to `grace` to finish; then gRPC is shut down
  // with an immediate deadline, because its own graceful shutdown also
  // waits for idle client connections to go away (seconds, measured), which
  // a server with connected but idle clients must not.
  const absl::Time deadline = absl::Now() + grace;
  if (service_ != nullptr) service_->WaitIdle(deadline);
  if (coordinator_service_ != nullptr) coordinator_service_->WaitIdle(deadline);
  if (cluster_service_ != nullptr) cluster_service_->WaitIdle(deadline);
  if (detector_service_ != nullptr) detector_service_->WaitIdle(deadline);
  if (report_service_ != nullptr) report_service_->WaitIdle(deadline);
  if (grpc_server_ != nullptr) {
    grpc_server_->Shutdown(absl::ToChronoTime(absl::Now()));
  }
  // Cancelled calls still finish their pool work (e.g. a Put waiting for
  // fsync) before the pools and the stores may go away.
  if (service_ != nullptr) service_->WaitIdle();
  if (coordinator_service_ != nullptr) coordinator_service_->WaitIdle();
  if (cluster_service_ != nullptr) cluster_service_->WaitIdle();
  if (detector_service_ != nullptr) detector_service_->WaitIdle();
  if (report_service_ != nullptr) report_service_->WaitIdle();
  if (gc_thread_.joinable()) gc_thread_.join();
  shutdown_done_.Notify();
}

void Server::Wait() { shutdown_done_.WaitForNotification(); }

}  // namespace snapback::server
