// StorageCluster: a real storage cluster on loopback for tests and
// benchmarks — one `snapback-server --role coordinator` and N
// `snapback-server --role storage --coordinator ...` processes, each started
// and stopped by PID, each on its own free port (kept across restarts) and
// data directory under `root`.
#ifndef SNAPBACK_TESTING_STORAGE_CLUSTER_H_
#define SNAPBACK_TESTING_STORAGE_CLUSTER_H_

#include <signal.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/hash.h"
#include "snapback/v1/cluster.grpc.pb.h"
#include "snapback/v1/coordinator.grpc.pb.h"
#include "testing/subprocess.h"

namespace snapback::testing {

struct StorageClusterOptions {
  int nodes = 3;
  // Failure domain of node i: domains[i % size], or none when empty.
  std::vector<std::string> domains;
  absl::Duration suspect_after = absl::Milliseconds(1000);
  absl::Duration down_after = absl::Seconds(2);
  uint64_t repair_mb_per_sec = 256;
  // Extra flags for every node / the coordinator.
  std::vector<std::string> node_flags;
  // Extra flags for node i only.
  std::map<int, std::vector<std::string>> flags_of_node;
  std::vector<std::string> coordinator_flags;
};

class StorageCluster {
 public:
  StorageCluster(std::string root, StorageClusterOptions options);
  ~StorageCluster();

  // Starts the coordinator and every node and waits until all nodes are UP
  // and reconciled. Aborts the test (ADD_FAILURE + false) on failure.
  bool Start(absl::Duration deadline = absl::Seconds(60));

  // On the same port as before after a restart; `extra` flags for this start.
  void StartCoordinator(const std::vector<std::string>& extra = {});
  void StopCoordinator(int signal = SIGKILL);
  void StartNode(int i);
  // Sends `signal` to node i's process; SIGKILL/SIGTERM also reap it.
  void SignalNode(int i, int signal);
  bool node_running(int i) const { return nodes_[i].process != nullptr; }
  // PIDs of node i and of the coordinator (-1 when not running), for
  // benchmarks that read /proc/<pid>.
  pid_t node_pid(int i) const {
    return nodes_[i].process != nullptr ? nodes_[i].process->pid() : -1;
  }
  pid_t coordinator_pid() const {
    return coordinator_ != nullptr ? coordinator_->pid() : -1;
  }

  const std::string& coordinator() const { return coordinator_address_; }
  std::string node_address(int i) const;
  std::string node_dir(int i) const;
  std::string coordinator_dir() const { return root_ + "/coordinator"; }
  int size() const { return static_cast<int>(nodes_.size()); }

  // Cluster calls to the coordinator.
  absl::StatusOr<v1::NodeMap> Map();
  absl::StatusOr<v1::ReplicaState> ReplicaState();
  absl::StatusOr<v1::ScrubNodesResponse> Scrub(const std::string& node_id);
  v1::CoordinatorService::Stub* coordinator_stub();
  // The node id of node i (from its data directory).
  std::string node_id(int i) const;
  // The ids node i holds (ListChunks), or an error when it cannot be asked.
  absl::StatusOr<std::set<ChunkId>> NodeChunks(int i);

  // Polls `cond` every 50 ms until it holds or `deadline` passes.
  static bool WaitFor(const std::function<bool()>& cond, absl::Duration deadline);
  // Every running node UP and reconciled in the map.
  bool AllUp();

 private:
  struct Node {
    int port = 0;
    std::unique_ptr<Subprocess> process;
  };
  const std::string root_;
  const StorageClusterOptions options_;
  std::unique_ptr<Subprocess> coordinator_;
  int coordinator_port_ = 0;
  std::string coordinator_address_;
  std::vector<Node> nodes_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ClusterService::Stub> cluster_stub_;
  std::unique_ptr<v1::CoordinatorService::Stub> coordinator_stub_;
};

}  // namespace snapback::testing

#endif  // SNAPBACK_TESTING_STORAGE_CLUSTER_H_
