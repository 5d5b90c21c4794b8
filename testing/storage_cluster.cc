#include "testing/storage_cluster.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "rpc/grpc_status.h"
#include "rpc/storage_client.h"

namespace snapback::testing {
namespace {

// "snapback-server listening on 127.0.0.1:PORT (..." -> PORT.
int PortOf(const std::string& line) {
  const std::string key = "listening on 127.0.0.1:";
  const size_t at = line.find(key);
  if (at == std::string::npos) return 0;
  int port = 0;
  const std::string rest = line.substr(at + key.size());
  (void)absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &port);
  return port;
}

std::string Seconds(absl::Duration d) {
  return absl::StrCat(absl::ToInt64Milliseconds(d), "ms");
}

}  // namespace

StorageCluster::StorageCluster(std::string root, StorageClusterOptions options)
    : root_(std::move(root)), options_(std::move(options)), nodes_(options_.nodes) {}

StorageCluster::~StorageCluster() {
  for (Node& n : nodes_) {
    if (n.process != nullptr) {
      n.process->Kill(SIGCONT);
      n.process->Kill(SIGKILL);
      n.process->Wait(absl::Seconds(10));
    }
  }
  if (coordinator_ != nullptr) {
    coordinator_->Kill(SIGKILL);
    coordinator_->Wait(absl::Seconds(10));
  }
}

void StorageCluster::StartCoordinator(const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {
      Subprocess::BinPath("snapback-server"),
      "--role=coordinator",
      absl::StrCat("--data-dir=", coordinator_dir()),
      absl::StrCat("--listen=127.0.0.1:", coordinator_port_),
      absl::StrCat("--node-suspect-after=", Seconds(options_.suspect_after)),
      absl::StrCat("--node-down-after=", Seconds(options_.down_after)),
      absl::StrCat("--repair-mb-per-sec=", options_.repair_mb_per_sec)};
  argv.insert(argv.end(), options_.coordinator_flags.begin(),
              options_.coordinator_flags.end());
  argv.insert(argv.end(), extra.begin(), extra.end());
  coordinator_ = std::make_unique<Subprocess>(argv);
  auto line = coordinator_->WaitForLine("snapback-server listening", absl::Seconds(60));
  ASSERT_TRUE(line.has_value()) << "the coordinator did not start";
  coordinator_port_ = PortOf(*line);
  ASSERT_GT(coordinator_port_, 0) << *line;
  coordinator_address_ = absl::StrCat("127.0.0.1:", coordinator_port_);
  channel_ =
      grpc::CreateChannel(coordinator_address_, grpc::InsecureChannelCredentials());
  cluster_stub_ = v1::ClusterService::NewStub(channel_);
  coordinator_stub_ = v1::CoordinatorService::NewStub(channel_);
}

void StorageCluster::StopCoordinator(int signal) {
  if (coordinator_ == nullptr) return;
  coordinator_->Kill(signal);
  coordinator_->Wait(absl::Seconds(30));
  coordinator_.reset();
}

std::string StorageCluster::node_dir(int i) const {
  return absl::StrCat(root_, "/node", i);
}

std::string StorageCluster::node_address(int i) const {
  return absl::StrCat("127.0.0.1:", nodes_[i].port);
}

void StorageCluster::StartNode(int i) {
  Node& n = nodes_[i];
  std::vector<std::string> argv = {
      Subprocess::BinPath("snapback-server"),
      "--role=storage",
      absl::StrCat("--coordinator=", coordinator_address_),
      absl::StrCat("--data-dir=", node_dir(i)),
      absl::StrCat("--listen=127.0.0.1:", n.port),
      absl::StrCat("--repair-mb-per-sec=", options_.repair_mb_per_sec),
      "--segment-mb=64",
      "--node-heartbeat=200ms"};
  if (!options_.domains.empty()) {
    argv.push_back(
        absl::StrCat("--failure-domain=", options_.domains[i % options_.domains.size()]));
  }
  argv.insert(argv.end(), options_.node_flags.begin(), options_.node_flags.end());
  if (auto it = options_.flags_of_node.find(i); it != options_.flags_of_node.end()) {
    argv.insert(argv.end(), it->second.begin(), it->second.end());
  }
  n.process = std::make_unique<Subprocess>(argv);
  auto line = n.process->WaitForLine("snapback-server listening", absl::Seconds(60));
  ASSERT_TRUE(line.has_value()) << "storage node " << i << " did not start";
  n.port = PortOf(*line);
  ASSERT_GT(n.port, 0) << *line;
}

void StorageCluster::SignalNode(int i, int signal) {
  Node& n = nodes_[i];
  if (n.process == nullptr) return;
  n.process->Kill(signal);
  if (signal == SIGKILL || signal == SIGTERM) {
    n.process->Kill(SIGCONT);
    n.process->Wait(absl::Seconds(30));
    n.process.reset();
  }
}

bool StorageCluster::Start(absl::Duration deadline) {
  StartCoordinator();
  if (coordinator_port_ == 0) return false;
  for (int i = 0; i < size(); ++i) {
    StartNode(i);
    if (nodes_[i].port == 0) return false;
  }
  const bool up = WaitFor([&] { return AllUp(); }, deadline);
  EXPECT_TRUE(up) << "not every storage node came UP and reconciled";
  return up;
}

bool StorageCluster::AllUp() {
  absl::StatusOr<v1::NodeMap> map = Map();
  if (!map.ok()) return false;
  int up = 0;
  for (int i = 0; i < size(); ++i) {
    if (nodes_[i].process == nullptr) continue;
    const std::string id = node_id(i);
    bool found = false;
    for (const v1::NodeInfo& n : map->nodes()) {
      if (n.node_id() == id && n.state() == v1::NODE_UP && n.reconciled()) found = true;
    }
    if (!found) return false;
    ++up;
  }
  return up > 0;
}

std::string StorageCluster::node_id(int i) const {
  std::ifstream in(node_dir(i) + "/node_id");
  std::string id;
  std::getline(in, id);
  return id;
}

absl::StatusOr<v1::NodeMap> StorageCluster::Map() {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::NodeMap map;
  grpc::Status s = cluster_stub_->ListNodes(&ctx, v1::ListNodesRequest(), &map);
  if (!s.ok()) return FromGrpcStatus(s);
  return map;
}

absl::StatusOr<v1::ReplicaState> StorageCluster::ReplicaState() {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::ReplicaState state;
  grpc::Status s =
      cluster_stub_->GetReplicaState(&ctx, v1::GetReplicaStateRequest(), &state);
  if (!s.ok()) return FromGrpcStatus(s);
  return state;
}

absl::StatusOr<v1::ScrubNodesResponse> StorageCluster::Scrub(const std::string& node_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  v1::ScrubNodesRequest req;
  req.set_node_id(node_id);
  v1::ScrubNodesResponse resp;
  grpc::Status s = cluster_stub_->ScrubNodes(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp;
}

v1::CoordinatorService::Stub* StorageCluster::coordinator_stub() {
  return coordinator_stub_.get();
}

absl::StatusOr<std::set<ChunkId>> StorageCluster::NodeChunks(int i) {
  internal_client::StorageClientOptions o;
  o.deadline = absl::Seconds(10);
  auto client = internal_client::StorageClient::Connect(node_address(i), o);
  if (!client.ok()) return client.status();
  std::set<ChunkId> out;
  std::string after;
  for (;;) {
    auto page = (*client)->List(after, 4096);
    if (!page.ok()) return page.status();
    for (const std::string& b : page->ids()) out.insert(*ChunkId::FromBytes(b));
    if (page->done() || page->ids().empty()) break;
    after = page->ids(page->ids_size() - 1);
  }
  return out;
}

bool StorageCluster::WaitFor(const std::function<bool()>& cond, absl::Duration deadline) {
  const absl::Time end = absl::Now() + deadline;
  while (absl::Now() < end) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return cond();
}

}  // namespace snapback::testing
