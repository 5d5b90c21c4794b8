// NodeAgent: a storage node's side of cluster membership
// (`snapback-server --role storage --coordinator HOST:PORT`).
//
// It keeps the node's id in DATA_DIR/node_id (made once, random), registers
// with the coordinator (id, advertised address, failure domain, volume
// capacity and free bytes), then heartbeats every interval with its space
// and the chunks it lost (damaged bytes found at start, by a read, or by
// scrub), and keeps Peers in step with the node map it gets back. When the
// coordinator does not know the node (e.g. it was rebuilt), it registers
// again. A background scrub re-reads and verifies every chunk every
// scrub_interval, paced to scrub_bytes_per_sec, and reports what was bad.
//
// Thread-safe.
#ifndef SNAPBACK_SERVER_NODE_AGENT_H_
#define SNAPBACK_SERVER_NODE_AGENT_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/hash.h"
#include "rpc/channel.h"
#include "server/peers.h"
#include "snapback/v1/cluster.grpc.pb.h"
#include "storage/chunk_store.h"

namespace snapback::server {

struct NodeAgentOptions {
  // The coordinator (HOST:PORT). Required.
  std::string coordinator;
  // The address clients and peers reach this node at (HOST:PORT).
  // Required (the server fills in its bound address when unset).
  std::string advertise;
  // Failure domain label (rack, host, zone).
  // Default: "" (its own domain)
  std::string failure_domain;
  // Default: 1 s
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A full scrub of the node's chunks every this long; zero = off (on
  // demand only: ClusterService.ScrubNodes).
  // Default: 24 h
  absl::Duration scrub_interval = absl::Hours(24);
  // Pace of the background scrub.
  // Default: 64 MiB/s
  uint64_t scrub_bytes_per_sec = 64ull << 20;
  // How to reach the coordinator (TLS).
  rpc::ChannelOptions channel;
};

class NodeAgent {
 public:
  // Reads or creates the node id and starts the heartbeat loop (which
  // registers first, retrying until the coordinator answers).
  static absl::StatusOr<std::unique_ptr<NodeAgent>> Start(NodeAgentOptions options,
                                                          const std::string& data_dir,
                                                          storage::ChunkStore* store,
                                                          Peers* peers);
  ~NodeAgent();
  void Stop();

  const std::string& node_id() const { return node_id_; }
  // True once the coordinator has accepted the registration.
  bool registered();

 private:
  NodeAgent(NodeAgentOptions options, std::string node_id, storage::ChunkStore* store,
            Peers* peers, std::unique_ptr<v1::ClusterService::Stub> stub)
      : options_(std::move(options)),
        node_id_(std::move(node_id)),
        store_(store),
        peers_(peers),
        stub_(std::move(stub)) {}
  void Loop();
  void ScrubLoop();
  absl::Status Register();
  absl::Status Beat();
  void ApplyMap(const v1::NodeMap& map);
  // Fetches the node map now (Peers asks when a peer is unknown).
  void RefreshMap();

  const NodeAgentOptions options_;
  const std::string node_id_;
  storage::ChunkStore* const store_;
  Peers* const peers_;
  std::unique_ptr<v1::ClusterService::Stub> stub_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t map_version_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread loop_;
  std::thread scrub_;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_NODE_AGENT_H_
