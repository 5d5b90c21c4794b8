// ClusterTier, membership: the versioned node map. See cluster_tier.h.
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/rocksdb_util.h"
#include "common/status_macros.h"
#include "coordinator/cluster_tier.h"

namespace snapback::coordinator {
namespace {

using internal_rocksdb::Sl;
using internal_rocksdb::View;

constexpr absl::string_view kNodePrefix = "n/";
constexpr absl::string_view kVersionKey = "v";
constexpr internal_rocksdb::DbLabel kDb{
    "cluster tier database",
    "the node map and chunk locations can be rebuilt: move DATA_DIR/tier away and "
    "restart; nodes re-register and are reconciled"};

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  return internal_rocksdb::FromRocks(s, what, kDb);
}

bool ValidNodeId(absl::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

bool Counts(const v1::NodeInfo& n) {
  return (n.state() == v1::NODE_UP || n.state() == v1::NODE_SUSPECT) && n.reconciled();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterTier>> ClusterTier::Open(const std::string& dir,
                                                               ClusterOptions options) {
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.paranoid_checks = true;
  // A small database: keep its WAL and memtable small too (an idle
  // coordinator should not hold tens of MiB of preallocated log).
  db_options.write_buffer_size = 4 << 20;
  db_options.max_total_wal_size = 16 << 20;
  db_options.allow_fallocate = false;
  db_options.keep_log_file_num = 2;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", dir));
  std::unique_ptr<ClusterTier> tier(
      new ClusterTier(dir, std::move(options), std::unique_ptr<rocksdb::DB>(raw)));
  SNAPBACK_RETURN_IF_ERROR(tier->LoadNodes());
  tier->loop_ = std::thread([t = tier.get()] { t->Loop(); });
  tier->ticker_ = std::thread([t = tier.get()] { t->TickLoop(); });
  return tier;
}

ClusterTier::ClusterTier(std::string dir, ClusterOptions options,
                         std::unique_ptr<rocksdb::DB> db)
    : dir_(std::move(dir)),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : RealClock()),
      db_(std::move(db)) {}

ClusterTier::~ClusterTier() {
  Stop();
  db_->Close();
}

void ClusterTier::SetCatalog(CatalogView* catalog) {
  absl::MutexLock lock(&mu_);
  catalog_ = catalog;
  wake_ = true;
}

void ClusterTier::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    catalog_ = nullptr;
  }
  if (loop_.joinable()) loop_.join();
  if (ticker_.joinable()) ticker_.join();
}

bool ClusterTier::rebuilt() {
  std::string value;
  return db_->Get(rocksdb::ReadOptions(), "rebuilt", &value).ok();
}

absl::Status ClusterTier::MarkRebuilt() {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(db_->Put(wo, "rebuilt", absl::StrCat(absl::ToUnixMillis(absl::Now()))),
                   "write");
}

absl::Status ClusterTier::LoadNodes() {
  absl::MutexLock lock(&mu_);
  std::string version;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Sl(kVersionKey), &version);
  if (s.ok()) {
    if (!absl::SimpleAtoi(version, &version_)) {
      return absl::DataLossError("cluster tier database: malformed map version");
    }
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "read");
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  const absl::Duration now = clock_->Monotonic();
  for (it->Seek(Sl(kNodePrefix));
       it->Valid() && absl::StartsWith(View(it->key()), kNodePrefix); it->Next()) {
    Node node;
    if (!node.info.ParseFromArray(it->value().data(),
                                  static_cast<int>(it->value().size()))) {
      return absl::DataLossError("cluster tier database: malformed node record");
    }
    // A coordinator that restarts gives every node a fresh grace period
    // rather than declaring them all DOWN at once.
    node.last_seen = now;
    nodes_[node.info.node_id()] = std::move(node);
  }
  return FromRocks(it->status(), "scan");
}

absl::Status ClusterTier::SaveNodeLocked(const Node& node) {
  rocksdb::WriteBatch batch;
  batch.Put(Sl(absl::StrCat(kNodePrefix, node.info.node_id())),
            node.info.SerializeAsString());
  batch.Put(Sl(kVersionKey), absl::StrCat(version_));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(db_->Write(wo, &batch), "write");
}

void ClusterTier::BumpVersionLocked() { ++version_; }

v1::NodeMap ClusterTier::MapLocked() {
  v1::NodeMap map;
  map.set_version(version_);
  for (const auto& [id, node] : nodes_) *map.add_nodes() = node.info;
  return map;
}

v1::NodeMap ClusterTier::Map() {
  absl::ReaderMutexLock lock(&mu_);
  return MapLocked();
}

uint64_t ClusterTier::MapVersion() {
  absl::ReaderMutexLock lock(&mu_);
  return version_;
}

absl::StatusOr<v1::NodeMap> ClusterTier::Register(const v1::NodeInfo& in) {
  if (!ValidNodeId(in.node_id())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "node id '", absl::CEscape(in.node_id().substr(0, 80)),
        "' is not [A-Za-z0-9._-]{1,64}; the node keeps its id in DATA_DIR/node_id"));
  }
  if (in.address().empty() || in.address().size() > 256) {
    return absl::InvalidArgumentError(
        "node address must be HOST:PORT (at most 256 bytes); pass --advertise");
  }
  if (in.failure_domain().size() > 128) {
    return absl::InvalidArgumentError("failure domain longer than 128 bytes");
  }
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(in.node_id());
  const bool is_new = it == nodes_.end();
  Node& node = nodes_[in.node_id()];
  if (!is_new && node.info.state() == v1::NODE_REMOVED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "storage node ", in.node_id(),
        " was removed from the cluster; wipe its data directory (it gets a new id) "
        "before it joins again"));
  }
  const v1::NodeInfo before = node.info;
  node.info.set_node_id(in.node_id());
  node.info.set_address(in.address());
  node.info.set_failure_domain(in.failure_domain());
  node.info.set_capacity_bytes(in.capacity_bytes());
  node.info.set_free_bytes(in.free_bytes());
  node.info.set_full(in.full());
  node.info.set_last_heartbeat_unix_ms(absl::ToUnixMillis(clock_->Now()));
  node.last_seen = clock_->Monotonic();
  if (is_new || !Counts(before)) {
    // New to this coordinator, or back from DOWN: what it holds is checked
    // before it counts (reconciliation, repair.cc).
    node.info.set_reconciled(false);
    wake_ = true;
  }
  if (node.info.state() != v1::NODE_DRAINING) node.info.set_state(v1::NODE_UP);
  if (is_new || before.state() != node.info.state() ||
      before.address() != node.info.address() ||
      before.failure_domain() != node.info.failure_domain() ||
      before.reconciled() != node.info.reconciled() ||
      before.full() != node.info.full()) {
    BumpVersionLocked();
    SNAPBACK_LOG(Info, "storage node %s (%s, domain '%s') registered: %s, map version %d",
                 in.node_id(), in.address(), in.failure_domain(),
                 is_new ? "new" : v1::NodeState_Name(before.state()), version_);
  }
  SNAPBACK_RETURN_IF_ERROR(SaveNodeLocked(node));
  return MapLocked();
}

absl::StatusOr<v1::NodeHeartbeatResponse> ClusterTier::Heartbeat(
    const v1::NodeHeartbeatRequest& req) {
  v1::NodeHeartbeatResponse out;
  std::vector<ChunkId> lost;
  for (const std::string& b : req.lost_ids()) {
    absl::StatusOr<ChunkId> id = ChunkId::FromBytes(b);
    if (!id.ok()) return absl::InvalidArgumentError("lost_ids: a chunk id is 32 bytes");
    lost.push_back(*id);
  }
  if (lost.size() > 4096) {
    return absl::InvalidArgumentError("more than 4096 lost_ids in one heartbeat");
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(req.node_id());
    if (it == nodes_.end()) {
      out.set_reregister(true);
      return out;
    }
    Node& node = it->second;
    out.set_state(node.info.state());
    if (node.info.state() == v1::NODE_REMOVED) return out;
    const v1::NodeInfo before = node.info;
    node.last_seen = clock_->Monotonic();
    node.info.set_last_heartbeat_unix_ms(absl::ToUnixMillis(clock_->Now()));
    node.info.set_capacity_bytes(req.capacity_bytes());
    node.info.set_free_bytes(req.free_bytes());
    node.info.set_full(req.full());
    if (node.info.state() == v1::NODE_SUSPECT) node.info.set_state(v1::NODE_UP);
    if (node.info.state() == v1::NODE_DOWN) {
      node.info.set_state(v1::NODE_UP);
      node.info.set_reconciled(false);
      wake_ = true;
      SNAPBACK_LOG(Info, "storage node %s is back after being DOWN; reconciling it",
                   req.node_id());
    }
    const bool changed = before.state() != node.info.state() ||
                         before.full() != node.info.full() ||
                         before.reconciled() != node.info.reconciled();
    if (changed) BumpVersionLocked();
    // Space figures alone are not worth a synced write every second.
    if (changed) SNAPBACK_RETURN_IF_ERROR(SaveNodeLocked(node));
    out.set_state(node.info.state());
    if (req.map_version() != version_) *out.mutable_map() = MapLocked();
  }
  if (!lost.empty()) {
    SNAPBACK_LOG(Warning, "storage node %s lost %d chunk(s) (damaged bytes); repairing",
                 req.node_id(), lost.size());
    SNAPBACK_RETURN_IF_ERROR(RemoveLocation(lost, req.node_id()));
    out.set_lost_acknowledged(static_cast<uint32_t>(lost.size()));
    Wake();
  }
  return out;
}

absl::StatusOr<v1::NodeInfo> ClusterTier::SetNodeState(const std::string& node_id,
                                                       v1::NodeState state) {
  absl::MutexLock lock(&mu_);
  auto it = nodes_.find(node_id);
  if (it == nodes_.end()) {
    return absl::NotFoundError(absl::StrCat("no storage node ", node_id, " in the map"));
  }
  Node& node = it->second;
  if (state == v1::NODE_UP) {
    if (node.info.state() != v1::NODE_DRAINING) {
      return absl::InvalidArgumentError(
          "only a DRAINING node can be put back to UP (others change by heartbeats)");
    }
  } else if (state != v1::NODE_DRAINING && state != v1::NODE_REMOVED) {
    return absl::InvalidArgumentError(
        "a node can be set to DRAINING, REMOVED, or back to UP from DRAINING");
  }
  if (node.info.state() == v1::NODE_REMOVED) {
    return absl::FailedPreconditionError(absl::StrCat("node ", node_id, " is REMOVED"));
  }
  if (node.info.state() != state) {
    node.info.set_state(state);
    BumpVersionLocked();
    SNAPBACK_RETURN_IF_ERROR(SaveNodeLocked(node));
    wake_ = true;
  }
  return node.info;
}

void ClusterTier::Tick() {
  absl::MutexLock lock(&mu_);
  const absl::Duration now = clock_->Monotonic();
  for (auto& [id, node] : nodes_) {
    const absl::Duration silent = now - node.last_seen;
    v1::NodeState next = node.info.state();
    if ((next == v1::NODE_UP || next == v1::NODE_SUSPECT) &&
        silent >= options_.down_after) {
      next = v1::NODE_DOWN;
    } else if (next == v1::NODE_UP && silent >= options_.suspect_after) {
      next = v1::NODE_SUSPECT;
    }
    if (next == node.info.state()) continue;
    SNAPBACK_LOG(Warning, "storage node %s (%s): no heartbeat for %s: %s -> %s", id,
                 node.info.address(), absl::FormatDuration(silent),
                 v1::NodeState_Name(node.info.state()), v1::NodeState_Name(next));
    node.info.set_state(next);
    BumpVersionLocked();
    absl::Status s = SaveNodeLocked(node);
    if (!s.ok()) SNAPBACK_LOG(Error, "saving the node map: %s", s.ToString());
    if (next == v1::NODE_DOWN) wake_ = true;
  }
}

std::vector<v1::NodeInfo> ClusterTier::WritableNodes() {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::NodeInfo> out;
  for (const auto& [id, node] : nodes_) {
    // An unreconciled node takes no new chunks until its old ones are
    // checked: its copies would not count yet.
    if (node.info.state() == v1::NODE_UP && !node.info.full() && node.info.reconciled()) {
      out.push_back(node.info);
    }
  }
  return out;
}

int ClusterTier::DefaultReplication() {
  // Counted over the nodes that are members now (UP or SUSPECT, reconciled
  // or not, not full), not only the writable ones: a node restarting or
  // being reconciled must not lock new checkpoints in at one copy.
  absl::ReaderMutexLock lock(&mu_);
  int members = 0;
  for (const auto& [id, node] : nodes_) {
    const v1::NodeState st = node.info.state();
    if ((st == v1::NODE_UP || st == v1::NODE_SUSPECT) && !node.info.full()) ++members;
  }
  return std::min(2, members);
}

std::vector<v1::NodeInfo> ClusterTier::ReadableNodes() {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<v1::NodeInfo> out;
  for (const auto& [id, node] : nodes_) {
    if (node.info.state() != v1::NODE_REMOVED) out.push_back(node.info);
  }
  return out;
}

absl::flat_hash_set<std::string> ClusterTier::CountingNodes() {
  absl::ReaderMutexLock lock(&mu_);
  absl::flat_hash_set<std::string> out;
  for (const auto& [id, node] : nodes_) {
    if (Counts(node.info)) out.insert(id);
  }
  return out;
}

std::string ClusterTier::AddressOf(const std::string& node_id) {
  absl::ReaderMutexLock lock(&mu_);
  auto it = nodes_.find(node_id);
  return it == nodes_.end() ? "" : it->second.info.address();
}

absl::StatusOr<internal_client::StorageClient*> ClusterTier::ClientFor(
    const std::string& address) {
  absl::MutexLock lock(&clients_mu_);
  auto it = clients_.find(address);
  if (it != clients_.end()) return it->second.get();
  SNAPBACK_ASSIGN_OR_RETURN(auto client, internal_client::StorageClient::Connect(
                                             address, options_.storage_client));
  internal_client::StorageClient* raw = client.get();
  clients_[address] = std::move(client);
  return raw;
}

void ClusterTier::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

}  // namespace snapback::coordinator
