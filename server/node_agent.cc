#include "server/node_agent.h"

#include <grpcpp/grpcpp.h>
#include <sys/statvfs.h>

#include <fstream>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "rpc/grpc_status.h"

namespace snapback::server {
namespace {

// The node's id: DATA_DIR/node_id, created once.
absl::StatusOr<std::string> LoadOrCreateNodeId(const std::string& data_dir) {
  const std::string path = data_dir + "/node_id";
  {
    std::ifstream in(path);
    std::string id;
    if (in && std::getline(in, id)) {
      id = std::string(absl::StripAsciiWhitespace(id));
      if (!id.empty()) return id;
    }
  }
  std::random_device rd;
  const std::string id = absl::StrFormat("node-%08x%08x", rd(), rd());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << id << "\n";
    out.flush();
    if (!out) {
      return absl::UnavailableError(
          absl::StrCat("cannot write ", tmp, "; check the data directory's permissions"));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot create ", path));
  }
  return id;
}

}  // namespace

absl::StatusOr<std::unique_ptr<NodeAgent>> NodeAgent::Start(NodeAgentOptions options,
                                                            const std::string& data_dir,
                                                            storage::ChunkStore* store,
                                                            Peers* peers) {
  if (options.coordinator.empty()) {
    return absl::InvalidArgumentError("--coordinator HOST:PORT is required for a node");
  }
  if (options.advertise.empty()) {
    return absl::InvalidArgumentError("the node's advertised address is empty");
  }
  SNAPBACK_ASSIGN_OR_RETURN(std::string node_id, LoadOrCreateNodeId(data_dir));
  SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                            rpc::MakeChannel(options.coordinator, options.channel));
  std::unique_ptr<NodeAgent> agent(new NodeAgent(std::move(options), std::move(node_id),
                                                 store, peers,
                                                 v1::ClusterService::NewStub(channel)));
  peers->SetRefresh([a = agent.get()] { a->RefreshMap(); });
  agent->loop_ = std::thread([a = agent.get()] { a->Loop(); });
  if (agent->options_.scrub_interval > absl::ZeroDuration()) {
    agent->scrub_ = std::thread([a = agent.get()] { a->ScrubLoop(); });
  }
  return agent;
}

NodeAgent::~NodeAgent() {
  Stop();
  peers_->SetRefresh(nullptr);
}

void NodeAgent::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (loop_.joinable()) loop_.join();
  if (scrub_.joinable()) scrub_.join();
}

bool NodeAgent::registered() {
  absl::MutexLock lock(&mu_);
  return registered_;
}

void NodeAgent::ApplyMap(const v1::NodeMap& map) {
  std::vector<std::string> addresses;
  for (const v1::NodeInfo& n : map.nodes()) {
    if (n.state() != v1::NODE_REMOVED) addresses.push_back(n.address());
  }
  peers_->SetMap(addresses, options_.advertise);
  absl::MutexLock lock(&mu_);
  map_version_ = map.version();
}

void NodeAgent::RefreshMap() {
  v1::NodeMap map;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::Status s = stub_->ListNodes(&ctx, v1::ListNodesRequest(), &map);
  if (s.ok()) ApplyMap(map);
}

absl::Status NodeAgent::Register() {
  storage::ChunkStoreStats stats = store_->Stats();
  v1::RegisterNodeRequest req;
  v1::NodeInfo* n = req.mutable_node();
  n->set_node_id(node_id_);
  n->set_address(options_.advertise);
  n->set_failure_domain(options_.failure_domain);
  n->set_capacity_bytes(stats.capacity_bytes);
  n->set_free_bytes(stats.free_bytes);
  n->set_full(stats.full);
  v1::RegisterNodeResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::Status s = stub_->RegisterNode(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  ApplyMap(resp.map());
  absl::MutexLock lock(&mu_);
  registered_ = true;
  return absl::OkStatus();
}

absl::Status NodeAgent::Beat() {
  storage::ChunkStoreStats stats = store_->Stats();
  v1::NodeHeartbeatRequest req;
  req.set_node_id(node_id_);
  req.set_capacity_bytes(stats.capacity_bytes);
  req.set_free_bytes(stats.free_bytes);
  req.set_full(stats.full);
  {
    absl::MutexLock lock(&mu_);
    req.set_map_version(map_version_);
  }
  // Everything the store quarantined (at open, on a read, by a scrub or a
  // VerifyChunks call) until the coordinator acknowledges it.
  std::vector<ChunkId> lost = store_->LostChunks();
  if (lost.size() > 4096) lost.resize(4096);
  for (const ChunkId& id : lost) req.add_lost_ids(std::string(id.AsBytes()));
  v1::NodeHeartbeatResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::Status s = stub_->NodeHeartbeat(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  if (resp.reregister()) {
    absl::MutexLock lock(&mu_);
    registered_ = false;
    return absl::OkStatus();
  }
  if (resp.has_map()) ApplyMap(resp.map());
  if (resp.lost_acknowledged() > 0 && !lost.empty()) {
    // The coordinator recorded them: forget them here.
    if (!lost.empty()) {
      absl::Status f = store_->ForgetLost(lost);
      if (!f.ok())
        SNAPBACK_LOG(Warning, "forgetting reported lost chunks: %s", f.ToString());
    }
  }
  return absl::OkStatus();
}

void NodeAgent::Loop() {
  absl::Duration backoff = options_.heartbeat_interval;
  absl::Status last_error;
  for (;;) {
    bool registered;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      registered = registered_;
    }
    absl::Status s = registered ? Beat() : Register();
    if (s.ok()) {
      if (!last_error.ok()) {
        SNAPBACK_LOG(Info, "node %s: coordinator %s reachable again", node_id_,
                     options_.coordinator);
      }
      last_error = absl::OkStatus();
      backoff = options_.heartbeat_interval;
    } else {
      if (last_error.ok() || last_error.code() != s.code()) {
        SNAPBACK_LOG(Warning, "node %s: %s coordinator %s failed (retrying): %s",
                     node_id_, registered ? "heartbeat to" : "registering with",
                     options_.coordinator, s.ToString());
      }
      last_error = s;
      backoff = std::min(backoff * 2, absl::Seconds(5));
    }
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stop_),
                         s.ok() ? options_.heartbeat_interval : backoff);
  }
}

void NodeAgent::ScrubLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.scrub_interval);
      if (stop_) return;
    }
    const absl::Time start = absl::Now();
    const storage::ChunkStoreStats stats = store_->Stats();
    const double avg = stats.chunks > 0 ? static_cast<double>(stats.encoded_bytes) /
                                              static_cast<double>(stats.chunks)
                                        : 0;
    bool stopped = false;
    storage::ScrubResult result = store_->Scrub([&](uint64_t done, uint64_t total) {
      (void)total;
      // Paced by the average chunk size: the scrub may not run ahead of
      // scrub_bytes_per_sec.
      if (options_.scrub_bytes_per_sec > 0) {
        const absl::Duration due =
            absl::Seconds(avg * static_cast<double>(done) /
                          static_cast<double>(options_.scrub_bytes_per_sec));
        const absl::Duration ahead = due - (absl::Now() - start);
        if (ahead > absl::ZeroDuration()) {
          absl::MutexLock lock(&mu_);
          mu_.AwaitWithTimeout(absl::Condition(&stop_), ahead);
          stopped = stop_;
        }
      }
    });
    if (stopped) return;
    // Bad chunks are quarantined by the store (LostChunks()) and go to the
    // coordinator with the next heartbeat.
    if (result.bad.empty()) {
      SNAPBACK_LOG(Info, "node %s: scrub checked %d chunk(s) in %s, all good", node_id_,
                   result.checked, absl::FormatDuration(absl::Now() - start));
    } else {
      SNAPBACK_LOG(Warning,
                   "node %s: scrub checked %d chunk(s) in %s, %d bad (repairing)",
                   node_id_, result.checked, absl::FormatDuration(absl::Now() - start),
                   result.bad.size());
    }
  }
}

}  // namespace snapback::server
