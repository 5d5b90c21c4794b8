// snapback::server::Server: a snapback-server process as a library.
//
// Start() opens what the role needs in data_dir, starts the gRPC server on
// `listen`, and returns once it is serving; main() only turns flags into
// ServerOptions. Tests start servers on "127.0.0.1:0" and read the bound port
// back with port().
//
// Roles (one port each way):
//   ""             both services, the embedded single-machine default: the
//                  chunk store in DATA_DIR (segments/, index/) and the
//                  coordinator's metadata in DATA_DIR/meta; the coordinator
//                  checks and deletes chunks in the local store directly.
//   "storage"      the StorageService only (a storage node).
//   "coordinator"  the CoordinatorService only, metadata in DATA_DIR/meta.
//                  Without storage_endpoints: a storage cluster — nodes
//                  register (ClusterService), chunks are placed by
//                  rendezvous hashing with R copies and repaired
//                  (coordinator/cluster_tier.h; its state in DATA_DIR/tier).
//                  With storage_endpoints: a fixed list of nodes, one copy.
// A "storage" node with node.coordinator set joins that coordinator's
// cluster (NodeAgent): it registers, heartbeats, forwards chunks to peers
// and copies chunks from them for repair.
// Every role except "storage" also runs CollectGarbage every gc_interval.
//
// Transport security: TLS when tls_cert_file/tls_key_file are set, and
// mutual TLS (client certificates required and verified) when
// tls_client_ca_file is set too. Plaintext is accepted only on a loopback
// listen address (127.0.0.0/8, ::1, localhost, or a unix: socket) unless
// allow_insecure_remote is set, so a node is never exposed unencrypted by
// accident.
//
// HTTP: with http_listen set, an HttpServer serves /metrics (Prometheus
// text format; docs/metrics.md) and an index page "/" listing the
// endpoints; other code adds its pages through http(). Plaintext, so
// loopback-only unless allow_insecure_remote, like the gRPC port.
//
// Thread-safe: port() any time; Shutdown() and Wait() from any thread.
#ifndef SNAPBACK_SERVER_SERVER_H_
#define SNAPBACK_SERVER_SERVER_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "coordinator/chunk_tier.h"
#include "coordinator/coordinator_store.h"
#include "coordinator/rebuild.h"
#include "failure-detector/detector.h"
#include "rpc/storage_client.h"
#include "server/cluster_service.h"
#include "server/coordinator_service.h"
#include "server/detector_service.h"
#include "server/http_server.h"
#include "server/node_agent.h"
#include "server/peers.h"
#include "server/report_service.h"
#include "server/server_metrics.h"
#include "server/storage_service.h"
#include "sla/sla_report.h"
#include "storage/catalog.h"
#include "storage/chunk_store.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace snapback::server {

struct ServerOptions {
  // Directory of the chunk store and/or the coordinator metadata (created if
  // missing). Required.
  // Default: "" (Start fails with INVALID_ARGUMENT)
  std::string data_dir;
  // HOST:PORT to listen on; port 0 picks a free port (see Server::port()).
  // IPv6 hosts in brackets ("[::1]:7420"); "unix:/path" for a unix socket.
  // Default: "127.0.0.1:0"
  std::string listen = "127.0.0.1:0";
  // HOST:PORT of the HTTP endpoints (/metrics, /); port 0 picks a free
  // port (see Server::http_port()); "" = no HTTP server. Plaintext: a
  // non-loopback host needs allow_insecure_remote.
  // Default: "127.0.0.1:0"
  std::string http_listen = "127.0.0.1:0";
  // Which services this process runs: "" (all, the embedded default),
  // "storage" or "coordinator" (see the top of this file).
  // Default: ""
  std::string role;
  // A fixed list of storage nodes (HOST:PORT) for a "coordinator" role
  // (one copy per chunk, no registration); refused for the other roles.
  // Default: {} (nodes register: a cluster)
  std::vector<std::string> storage_endpoints;
  // Cluster membership of a "storage" node: coordinator, advertised address
  // (default: the bound address), failure domain, heartbeat and scrub.
  // Default: node.coordinator "" (a standalone node)
  NodeAgentOptions node;
  // Bytes per second a storage node copies for repair (ReplicateChunks).
  // Default: 128 MiB/s
  uint64_t node_repair_bytes_per_sec = 128ull << 20;
  // Storage nodes (HOST:PORT) to rebuild a lost coordinator's catalogue
  // from, before serving (coordinator role with a cluster, empty metadata
  // directory; coordinator/rebuild.h).
  // Default: {} (no rebuild)
  std::vector<std::string> rebuild_from_tier;
  // The coordinator's cluster tier: heartbeat grace, repair pace.
  // Default: see coordinator::ClusterOptions
  coordinator::ClusterOptions cluster;
  // How the coordinator role connects to the storage nodes: TLS root CA,
  // client certificate (mTLS), server name override, per-call deadline.
  // Default: see internal_client::StorageClientOptions (plaintext)
  internal_client::StorageClientOptions storage_client;
  // The coordinator's metadata engine: lease, GC grace, default retention,
  // manifest limits. Its `recovery` should match store.index_recovery.
  // Default: see coordinator::CoordinatorOptions
  coordinator::CoordinatorOptions coordinator;
  // How often the coordinator runs CollectGarbage on its own (retention,
  // lease expiry, chunk deletion); zero = only when asked over gRPC.
  // Default: 5 min
  absl::Duration gc_interval = absl::Minutes(5);
  // Targets the SLA report checks (ReportService, /report).
  // Default: sla::DefaultTargets() (MTTR 5 min, lost work 10 min, MTTD 1 min,
  // goodput 95 %)
  v1::SlaTargets sla_targets = sla::DefaultTargets();
  // Threads that run coordinator calls (each may wait for an fsync or a
  // storage node, so several let independent calls proceed).
  // Default: 4
  int coordinator_threads = 4;
  // PEM certificate chain and private key of this server. Both or neither.
  // Default: "" (plaintext)
  std::string tls_cert_file;
  // Default: ""
  std::string tls_key_file;
  // PEM CA bundle; when set, clients must present a certificate it signed.
  // Requires tls_cert_file/tls_key_file.
  // Default: "" (no client certificates)
  std::string tls_client_ca_file;
  // Allow plaintext on a non-loopback address (e.g. inside a private,
  // already-encrypted network). Without it Start fails with
  // FAILED_PRECONDITION.
  // Default: false
  bool allow_insecure_remote = false;
  // The failure detector of the coordinator: heartbeat thresholds, hang
  // limits, save/restore budgets, the restart-loop guard (every role but
  // "storage" runs it).
  // Default: see detector::DetectorOptions
  detector::DetectorOptions detector;
  // Scheduler adapters besides "local" (always there): slurm, exec. The
  // detector restarts a job through the adapter named by its
  // JobInfo.scheduler.
  // Default: {}
  std::vector<std::shared_ptr<detector::SchedulerAdapter>> scheduler_adapters;
  // Per-call limits of the storage service.
  // Default: see StorageLimits
  StorageLimits limits;
  // Chunk store options. verify_on_put is always turned off: the service
  // verifies every chunk itself before it reaches the store, and verifying
  // the same bytes twice would halve the node's write throughput.
  // Default: see storage::ChunkStoreOptions
  storage::ChunkStoreOptions store;
  // Threads that decode and SHA-256 incoming chunks; 0 = one per core.
  // Default: 0
  int verify_threads = 0;
  // Threads that make blocking ChunkStore calls (puts wait for fsync, so
  // several must be in flight for group commit to batch them).
  // Default: 4
  int io_threads = 4;
};

class Server {
 public:
  // Validates `options`, opens the store and starts serving. Errors:
  // INVALID_ARGUMENT for bad options; FAILED_PRECONDITION for plaintext on a
  // non-loopback address (the message says to pass --tls-cert/--tls-key) or
  // a store that cannot be opened as is; NOT_FOUND/PERMISSION_DENIED for
  // unreadable TLS files; UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);

  // Shuts down (see Shutdown()) and closes the store.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound TCP port (0 for a unix socket).
  int port() const { return port_; }
  // `listen` with the bound port filled in, e.g. "127.0.0.1:40123".
  const std::string& address() const { return address_; }
  // How the store writes segments, e.g. "io_uring+O_DIRECT"; "" without a
  // local chunk store (role "coordinator").
  const std::string& io_mode() const { return io_mode_; }
  // The role being served ("", "storage" or "coordinator").
  const std::string& role() const { return role_; }
  // The bound HTTP port, 0 without an HTTP server (http_listen "").
  int http_port() const { return http_ != nullptr ? http_->port() : 0; }
  // "HOST:PORT" of the HTTP server, "" without one.
  std::string http_address() const { return http_ != nullptr ? http_->address() : ""; }
  // The HTTP server, for other pages (Handle()); nullptr without one. Owned
  // by the server; stopped first by Shutdown().
  HttpServer* http() { return http_.get(); }
  // The registry behind /metrics, for more metrics or collectors.
  metrics::MetricsRegistry* metrics() { return metrics_.get(); }

  // Stops the GC loop and accepting calls, lets calls in flight finish for
  // up to `grace`, cancels the rest, and waits until every call and the
  // store work it started is done. Idempotent; later calls return at once.
  void Shutdown(absl::Duration grace = absl::Seconds(10));
  // Blocks until Shutdown() has completed.
  void Wait();

  // The services and the metadata engine, for tests; nullptr when the role
  // does not run them.
  StorageServiceImpl* TEST_service() { return service_.get(); }
  CoordinatorServiceImpl* TEST_coordinator_service() {
    return coordinator_service_.get();
  }
  coordinator::CoordinatorStore* TEST_coordinator_store() {
    return coordinator_store_.get();
  }
  detector::Detector* TEST_detector() { return detector_.get(); }
  coordinator::ClusterTier* TEST_cluster() { return cluster_; }
  NodeAgent* node_agent() { return node_agent_.get(); }

 private:
  Server() = default;
  void GcLoop(absl::Duration interval);
  // Starts http_ on options.http_listen with /metrics and the index page.
  absl::Status StartHttp(const ServerOptions& options);

  // Destruction order matters: gRPC server before the services it calls,
  // services before the pools their calls use, pools before the stores, the
  // metadata engine before the tier it calls, the tier before the chunk
  // store it wraps. The metrics outlive the services that count into them;
  // the HTTP server, whose collectors read everything, goes first.
  std::unique_ptr<metrics::MetricsRegistry> metrics_;
  std::unique_ptr<CoordinatorMetrics> coordinator_metrics_;
  std::unique_ptr<StorageMetrics> storage_metrics_;
  std::unique_ptr<ClusterMetrics> cluster_metrics_;
  std::unique_ptr<storage::ChunkStore> store_;
  std::unique_ptr<coordinator::ChunkTier> tier_;
  coordinator::ClusterTier* cluster_ = nullptr;  // tier_ when it is a cluster
  std::unique_ptr<Peers> peers_;
  std::unique_ptr<storage::CatalogStore> catalog_;
  std::unique_ptr<ThreadPool> forward_pool_;
  std::unique_ptr<ThreadPool> membership_pool_;
  std::unique_ptr<ClusterServiceImpl> cluster_service_;
  std::unique_ptr<NodeAgent> node_agent_;
  std::unique_ptr<coordinator::CoordinatorStore> coordinator_store_;
  std::unique_ptr<ThreadPool> verify_pool_;
  std::unique_ptr<ThreadPool> io_pool_;
  std::unique_ptr<ThreadPool> coordinator_pool_;
  std::unique_ptr<StorageServiceImpl> service_;
  std::unique_ptr<CoordinatorServiceImpl> coordinator_service_;
  std::unique_ptr<StoreJobDirectory> job_directory_;
  std::unique_ptr<detector::Detector> detector_;
  std::unique_ptr<DetectorServiceImpl> detector_service_;
  std::unique_ptr<ReportServiceImpl> report_service_;
  v1::SlaTargets sla_targets_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<HttpServer> http_;
  int port_ = 0;
  std::string address_;
  std::string io_mode_;
  std::string role_;

  absl::Mutex gc_mu_;
  bool gc_stop_ ABSL_GUARDED_BY(gc_mu_) = false;
  std::thread gc_thread_;

  absl::Mutex shutdown_mu_;  // serialises Shutdown()
  absl::Notification shutdown_done_;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_SERVER_H_
