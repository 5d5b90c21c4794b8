// ClusterTier, keeping R copies: repair, reconciliation, scrub, bad-replica
// reports and the replica state. See cluster_tier.h and docs/cluster.md.
#include <rocksdb/db.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/placement.h"
#include "common/status_macros.h"
#include "coordinator/cluster_tier.h"

namespace snapback::coordinator {
namespace {

// Most chunks / bytes one ReplicateChunks call asks a node to copy.
constexpr size_t kRepairBatchChunks = 64;
constexpr uint64_t kRepairBatchBytes = 64ull << 20;
// Ids per ListChunks page and per VerifyChunks call of a reconciliation.
constexpr uint32_t kListPage = 4096;

struct CommittedChunk {
  ChunkId id;
  uint32_t length = 0;
  int want = 1;
};

}  // namespace

void ClusterTier::TickLoop() {
  // Node states move with the clock even while a long repair pass or a
  // reconciliation runs on the other thread.
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(250));
    if (stop_) return;
    mu_.Unlock();
    Tick();
    DrainRetractions();
    mu_.Lock();
  }
}

void ClusterTier::Loop() {
  absl::Time last_pass = absl::InfinitePast();
  absl::Duration backoff = absl::Milliseconds(250);
  for (;;) {
    bool run = false;
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || wake_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(250));
      if (stop_) return;
      run = catalog_ != nullptr &&
            (wake_ || absl::Now() - last_pass >= options_.repair_interval);
      if (run) wake_ = false;
    }
    if (!run) continue;
    last_pass = absl::Now();
    absl::Status s = ReconcileNow();
    if (!s.ok()) SNAPBACK_LOG(Warning, "reconciling storage nodes: %s", s.ToString());
    absl::StatusOr<uint64_t> repaired = RepairPass();
    if (!repaired.ok()) {
      SNAPBACK_LOG(Warning, "repair pass failed (retrying in %s): %s",
                   absl::FormatDuration(backoff), repaired.status().ToString());
    }
    if (!s.ok() || !repaired.ok()) {
      // Try again, but not in a hot loop.
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), backoff);
      backoff = std::min(backoff * 2, absl::Seconds(30));
      wake_ = true;
    } else {
      backoff = absl::Milliseconds(250);
    }
  }
}

absl::StatusOr<uint64_t> ClusterTier::RepairNow() { return RepairPass(); }

absl::StatusOr<uint64_t> ClusterTier::RepairPass() {
  absl::MutexLock repair_lock(&repair_mu_);
  CatalogView* catalog;
  std::map<std::string, v1::NodeInfo> nodes;
  {
    absl::ReaderMutexLock lock(&mu_);
    catalog = catalog_;
    for (const auto& [id, node] : nodes_) nodes[id] = node.info;
  }
  if (catalog == nullptr) return 0;
  auto counts = [](const v1::NodeInfo& n) {
    return (n.state() == v1::NODE_UP || n.state() == v1::NODE_SUSPECT) && n.reconciled();
  };
  // Sources: any node that is reachable and whose copy has been checked.
  auto can_source = [](const v1::NodeInfo& n) {
    return (n.state() == v1::NODE_UP || n.state() == v1::NODE_SUSPECT ||
            n.state() == v1::NODE_DRAINING) &&
           n.reconciled();
  };
  std::vector<PlacementNode> writable;
  std::vector<std::string> writable_ids;
  for (const auto& [id, n] : nodes) {
    if (n.state() == v1::NODE_UP && !n.full() && n.reconciled()) {
      writable.push_back({id, n.failure_domain()});
      writable_ids.push_back(id);
    }
  }

  // Plan, newest committed checkpoint first: per target node, the chunks to
  // copy there and where from.
  struct Copy {
    ChunkId id;
    uint32_t length;
    std::vector<std::string> sources;  // addresses
  };
  std::vector<std::pair<std::string, Copy>> plan;  // target node id, copy
  uint64_t short_chunks = 0, lost = 0;
  absl::flat_hash_set<ChunkId> seen;
  SNAPBACK_RETURN_IF_ERROR(
      catalog->ForEachCommittedChunk([&](const ChunkId& id, uint32_t length, int want) {
        if (!seen.insert(id).second) return true;
        std::vector<std::string> locs = Locations(id);
        int live = 0;
        std::vector<std::string> sources;
        for (const std::string& n : locs) {
          auto it = nodes.find(n);
          if (it == nodes.end()) continue;
          if (counts(it->second)) ++live;
          if (can_source(it->second)) sources.push_back(it->second.address());
        }
        if (live >= want) return true;
        ++short_chunks;
        if (sources.empty()) {
          ++lost;
          return true;
        }
        int need = want - live;
        for (int k : PlacementOrder(id, writable)) {
          if (need == 0) break;
          const std::string& target = writable_ids[k];
          if (std::find(locs.begin(), locs.end(), target) != locs.end()) continue;
          plan.emplace_back(target, Copy{id, length, sources});
          --need;
        }
        return true;
      }));
  if (short_chunks > 0) {
    SNAPBACK_LOG(Info,
                 "repair: %d chunk(s) below their replication (%d with no live copy); "
                 "%d copies planned",
                 short_chunks, lost, plan.size());
  }

  // Execute: one worker per target node, all targets at once, each taking
  // its copies in plan order (newest checkpoint first) in batches; the
  // total is paced to repair_bytes_per_sec.
  std::map<std::string, std::vector<const Copy*>> per_target;
  for (const auto& [target, copy] : plan) per_target[target].push_back(&copy);
  const absl::Time start = absl::Now();
  std::atomic<uint64_t> made{0}, moved{0};
  absl::Mutex error_mu;
  absl::Status error;
  auto worker = [&](const std::string& target, const std::vector<const Copy*>& copies) {
    const std::string address = nodes.at(target).address();
    size_t i = 0;
    while (i < copies.size()) {
      {
        absl::ReaderMutexLock lock(&mu_);
        if (stop_) return;
      }
      std::vector<ChunkId> ids;
      std::vector<std::string> sources;
      uint64_t bytes = 0;
      for (; i < copies.size() && ids.size() < kRepairBatchChunks &&
             bytes < kRepairBatchBytes;
           ++i) {
        ids.push_back(copies[i]->id);
        bytes += copies[i]->length;
        for (const std::string& s : copies[i]->sources) {
          if (std::find(sources.begin(), sources.end(), s) == sources.end()) {
            sources.push_back(s);
          }
        }
      }
      // Pace: the bytes moved so far may not run ahead of the budget.
      if (options_.repair_bytes_per_sec > 0) {
        const absl::Duration due =
            absl::Seconds(static_cast<double>(moved.load()) /
                          static_cast<double>(options_.repair_bytes_per_sec));
        const absl::Duration ahead = due - (absl::Now() - start);
        if (ahead > absl::ZeroDuration())
          absl::SleepFor(std::min(ahead, absl::Seconds(5)));
      }
      absl::StatusOr<internal_client::StorageClient*> client = ClientFor(address);
      if (!client.ok()) return;
      absl::StatusOr<v1::ReplicateChunksResponse> resp =
          (*client)->Replicate(ids, sources);
      if (!resp.ok()) {
        SNAPBACK_LOG(Warning, "repair: node %s (%s) could not copy %d chunk(s): %s",
                     target, address, ids.size(), resp.status().ToString());
        return;  // the next pass tries again (maybe elsewhere)
      }
      absl::flat_hash_set<std::string> failed(resp->failed_ids().begin(),
                                              resp->failed_ids().end());
      std::vector<std::pair<ChunkId, std::vector<std::string>>> found;
      for (const ChunkId& id : ids) {
        if (!failed.contains(std::string(id.AsBytes()))) found.push_back({id, {target}});
      }
      absl::Status recorded = AddLocations(found);
      if (!recorded.ok()) {
        absl::MutexLock lock(&error_mu);
        if (error.ok()) error = recorded;
        return;
      }
      made += found.size();
      moved += resp->bytes();
      absl::MutexLock lock(&stats_mu_);
      repaired_chunks_ += found.size();
      repaired_bytes_ += resp->bytes();
      const double secs = absl::ToDoubleSeconds(absl::Now() - start);
      if (secs > 0) repair_rate_ = static_cast<double>(moved.load()) / secs;
    }
  };
  {
    std::vector<std::thread> workers;
    for (const auto& [target, copies] : per_target) {
      workers.emplace_back(worker, std::cref(target), std::cref(copies));
    }
    for (auto& t : workers) t.join();
  }
  {
    absl::MutexLock lock(&error_mu);
    SNAPBACK_RETURN_IF_ERROR(error);
  }
  if (made > 0) {
    SNAPBACK_LOG(Info, "repair: made %d copies (%d bytes)", made.load(), moved.load());
  }
  return made.load();
}

absl::Status ClusterTier::ReconcileNow() {
  std::vector<std::string> todo;
  {
    absl::ReaderMutexLock lock(&mu_);
    if (catalog_ == nullptr) return absl::OkStatus();
    for (const auto& [id, node] : nodes_) {
      if (!node.info.reconciled() &&
          (node.info.state() == v1::NODE_UP || node.info.state() == v1::NODE_DRAINING)) {
        todo.push_back(id);
      }
    }
  }
  absl::Status first;
  for (const std::string& id : todo) {
    absl::Status s = Reconcile(id);
    if (!s.ok()) {
      SNAPBACK_LOG(Warning, "reconciling storage node %s: %s", id, s.ToString());
      if (first.ok()) first = s;
      Wake();  // try again on the next pass
    }
  }
  return first;
}

absl::Status ClusterTier::Reconcile(const std::string& node_id) {
  absl::MutexLock repair_lock(&repair_mu_);
  CatalogView* catalog;
  {
    absl::ReaderMutexLock lock(&mu_);
    catalog = catalog_;
  }
  if (catalog == nullptr) return absl::OkStatus();
  const std::string address = AddressOf(node_id);
  SNAPBACK_ASSIGN_OR_RETURN(internal_client::StorageClient * client, ClientFor(address));
  // 1. What the node holds, page by page: copies nobody wants any more are
  //    deleted; wanted ones are verified, and only good ones are recorded.
  absl::flat_hash_set<ChunkId> held;
  uint64_t dropped = 0, kept = 0, bad = 0, kept_unknown = 0;
  std::string after;
  for (;;) {
    SNAPBACK_ASSIGN_OR_RETURN(v1::ListChunksResponse page,
                              client->List(after, kListPage));
    std::vector<ChunkId> ids;
    for (const std::string& b : page.ids()) {
      absl::StatusOr<ChunkId> id = ChunkId::FromBytes(b);
      if (!id.ok()) return absl::DataLossError("node listed a malformed chunk id");
      ids.push_back(*id);
    }
    if (!ids.empty()) after = std::string(ids.back().AsBytes());
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> wanted, catalog->Wanted(ids));
    std::vector<ChunkId> drop, check;
    for (size_t i = 0; i < ids.size(); ++i) (wanted[i] ? check : drop).push_back(ids[i]);
    if (!drop.empty() && rebuilt()) {
      // A rebuilt catalogue may be missing checkpoints whose records were on
      // nodes the rebuild did not read: what looks unwanted may be all that
      // is left of them. Keep it (space, not data, is what this costs).
      kept_unknown += drop.size();
      drop.clear();
    }
    if (!drop.empty()) {
      SNAPBACK_ASSIGN_OR_RETURN(int n, client->Delete(drop));
      dropped += n;
    }
    if (!check.empty()) {
      SNAPBACK_ASSIGN_OR_RETURN(v1::VerifyChunksResponse v,
                                client->Verify(check, absl::Hours(1)));
      absl::flat_hash_set<std::string> not_good(v.bad_ids().begin(), v.bad_ids().end());
      not_good.insert(v.missing_ids().begin(), v.missing_ids().end());
      bad += v.bad_ids_size();
      std::vector<std::pair<ChunkId, std::vector<std::string>>> found;
      for (const ChunkId& id : check) {
        if (not_good.contains(std::string(id.AsBytes()))) continue;
        found.push_back({id, {node_id}});
        held.insert(id);
      }
      kept += found.size();
      SNAPBACK_RETURN_IF_ERROR(AddLocations(found));
    }
    if (page.done() || ids.empty()) break;
  }
  // 2. Location records that name the node for chunks it no longer holds.
  std::vector<ChunkId> stale;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek("L/"); it->Valid() && it->key().starts_with("L/"); it->Next()) {
      const rocksdb::Slice v = it->value();
      const std::string value(v.data(), v.size());
      std::vector<std::string> locs = absl::StrSplit(value, ',', absl::SkipEmpty());
      if (std::find(locs.begin(), locs.end(), node_id) == locs.end()) continue;
      absl::StatusOr<ChunkId> id = ChunkId::FromBytes(
          absl::string_view(it->key().data() + 2, it->key().size() - 2));
      if (id.ok() && !held.contains(*id)) stale.push_back(*id);
    }
    if (!it->status().ok()) return absl::UnavailableError(it->status().ToString());
  }
  SNAPBACK_RETURN_IF_ERROR(RemoveLocation(stale, node_id));
  {
    absl::MutexLock lock(&mu_);
    auto it = nodes_.find(node_id);
    if (it != nodes_.end() && !it->second.info.reconciled()) {
      it->second.info.set_reconciled(true);
      BumpVersionLocked();
      SNAPBACK_RETURN_IF_ERROR(SaveNodeLocked(it->second));
    }
    wake_ = true;  // its copies count now: re-plan repair
  }
  SNAPBACK_LOG(Info,
               "storage node %s reconciled: %d verified copies kept, %d unwanted dropped "
               "(%d kept: "
               "rebuilt catalogue), %d bad, %d stale records cleared",
               node_id, kept, dropped, kept_unknown, bad, stale.size());
  return absl::OkStatus();
}

absl::StatusOr<v1::ReplicaState> ClusterTier::ReplicaState(
    const v1::GetReplicaStateRequest& req) {
  if (req.chunk_ids_size() > 4096) {
    return absl::InvalidArgumentError("at most 4096 chunk_ids per GetReplicaState");
  }
  std::vector<ChunkId> asked;
  for (const std::string& b : req.chunk_ids()) {
    absl::StatusOr<ChunkId> id = ChunkId::FromBytes(b);
    if (!id.ok()) return absl::InvalidArgumentError("chunk_ids: a chunk id is 32 bytes");
    asked.push_back(*id);
  }
  absl::flat_hash_map<ChunkId, int> want_of;
  CatalogView* catalog;
  std::map<std::string, v1::NodeInfo> nodes;
  v1::ReplicaState out;
  {
    absl::ReaderMutexLock lock(&mu_);
    catalog = catalog_;
    for (const auto& [id, node] : nodes_) nodes[id] = node.info;
    out.set_map_version(version_);
  }
  std::map<std::string, std::pair<uint64_t, uint64_t>> per_node;  // chunks, bytes
  if (catalog != nullptr) {
    absl::flat_hash_set<ChunkId> seen;
    SNAPBACK_RETURN_IF_ERROR(
        catalog->ForEachCommittedChunk([&](const ChunkId& id, uint32_t length, int want) {
          if (!seen.insert(id).second) return true;
          if (!asked.empty()) want_of[id] = want;
          out.set_chunks(out.chunks() + 1);
          out.set_bytes(out.bytes() + length);
          int live = 0;
          for (const std::string& n : Locations(id)) {
            auto it = nodes.find(n);
            if (it == nodes.end()) continue;
            per_node[n].first++;
            per_node[n].second += length;
            const v1::NodeInfo& info = it->second;
            if ((info.state() == v1::NODE_UP || info.state() == v1::NODE_SUSPECT) &&
                info.reconciled()) {
              ++live;
            }
          }
          if (live < want) {
            out.set_under_replicated_chunks(out.under_replicated_chunks() + 1);
            out.set_under_replicated_bytes(out.under_replicated_bytes() + length);
          }
          if (live == 0) out.set_lost_chunks(out.lost_chunks() + 1);
          return true;
        }));
  }
  for (const auto& [id, info] : nodes) {
    v1::NodeReplicaState* n = out.add_nodes();
    n->set_node_id(id);
    n->set_state(info.state());
    n->set_chunks(per_node[id].first);
    n->set_bytes(per_node[id].second);
  }
  {
    absl::MutexLock lock(&stats_mu_);
    out.set_repaired_chunks(repaired_chunks_);
    out.set_repaired_bytes(repaired_bytes_);
    const double rate = repair_rate_ > 0
                            ? repair_rate_
                            : static_cast<double>(options_.repair_bytes_per_sec);
    out.set_repair_bytes_per_sec(rate);
    out.set_eta_seconds(out.under_replicated_bytes() == 0 || rate <= 0
                            ? 0
                            : static_cast<double>(out.under_replicated_bytes()) / rate);
  }
  out.set_last_check_unix_ms(absl::ToUnixMillis(absl::Now()));
  for (const ChunkId& id : asked) {
    v1::ChunkReplicas* c = out.add_chunks_asked();
    c->set_id(std::string(id.AsBytes()));
    auto w = want_of.find(id);
    c->set_want(w == want_of.end() ? 0 : w->second);
    int live = 0;
    for (const std::string& n : Locations(id)) {
      auto it = nodes.find(n);
      const v1::NodeState st = it == nodes.end() ? v1::NODE_REMOVED : it->second.state();
      c->add_node_ids(n);
      c->add_node_states(st);
      if (it != nodes.end() && (st == v1::NODE_UP || st == v1::NODE_SUSPECT) &&
          it->second.reconciled()) {
        ++live;
      }
    }
    c->set_live(live);
  }
  return out;
}

absl::StatusOr<v1::ScrubNodesResponse> ClusterTier::Scrub(const std::string& node_id) {
  std::vector<std::pair<std::string, std::string>> targets;  // id, address
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, node] : nodes_) {
      if (!node_id.empty() && id != node_id) continue;
      if (node.info.state() == v1::NODE_UP || node.info.state() == v1::NODE_DRAINING ||
          !node_id.empty()) {
        targets.emplace_back(id, node.info.address());
      }
    }
  }
  if (!node_id.empty() && targets.empty()) {
    return absl::NotFoundError(absl::StrCat("no storage node ", node_id, " in the map"));
  }
  v1::ScrubNodesResponse out;
  std::vector<ChunkId> all_bad;
  for (const auto& [id, address] : targets) {
    v1::NodeScrubResult* r = out.add_nodes();
    r->set_node_id(id);
    absl::StatusOr<internal_client::StorageClient*> client = ClientFor(address);
    absl::StatusOr<v1::VerifyChunksResponse> v =
        client.ok() ? (*client)->Verify({}, absl::Hours(6)) : client.status();
    if (!v.ok()) {
      r->set_error(std::string(v.status().message()));
      continue;
    }
    r->set_checked(v->checked());
    std::vector<ChunkId> bad;
    for (const std::string& b : v->bad_ids()) {
      absl::StatusOr<ChunkId> cid = ChunkId::FromBytes(b);
      if (cid.ok()) bad.push_back(*cid);
      *r->add_bad_ids() = b;
    }
    out.set_checked(out.checked() + v->checked());
    out.set_bad(out.bad() + bad.size());
    SNAPBACK_RETURN_IF_ERROR(RemoveLocation(bad, id));
    all_bad.insert(all_bad.end(), bad.begin(), bad.end());
  }
  if (!all_bad.empty()) {
    SNAPBACK_RETURN_IF_ERROR(RepairPass().status());
    const absl::flat_hash_set<std::string> counting = CountingNodes();
    uint64_t repaired = 0;
    for (const ChunkId& id : all_bad) {
      int live = 0;
      for (const std::string& n : Locations(id)) live += counting.contains(n) ? 1 : 0;
      if (live > 0) ++repaired;
    }
    out.set_repaired(repaired);
  }
  return out;
}

absl::StatusOr<v1::ReportBadReplicaResponse> ClusterTier::ReportBadReplica(
    const v1::ReportBadReplicaRequest& req) {
  std::string node_id;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, node] : nodes_) {
      if (node.info.address() == req.address()) node_id = id;
    }
  }
  if (node_id.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no storage node at ", req.address(), " in the node map"));
  }
  std::vector<ChunkId> ids;
  for (const std::string& b : req.ids()) {
    absl::StatusOr<ChunkId> id = ChunkId::FromBytes(b);
    if (!id.ok()) return absl::InvalidArgumentError("ids: a chunk id is 32 bytes");
    ids.push_back(*id);
  }
  if (ids.size() > 4096) return absl::InvalidArgumentError("more than 4096 ids");
  // Not trusted: the node re-verifies; only what it confirms (or no longer
  // has) leaves the location records.
  SNAPBACK_ASSIGN_OR_RETURN(internal_client::StorageClient * client,
                            ClientFor(req.address()));
  SNAPBACK_ASSIGN_OR_RETURN(v1::VerifyChunksResponse v,
                            client->Verify(ids, absl::Minutes(5)));
  std::vector<ChunkId> gone;
  for (const auto* list : {&v.bad_ids(), &v.missing_ids()}) {
    for (const std::string& b : *list) {
      absl::StatusOr<ChunkId> id = ChunkId::FromBytes(b);
      if (id.ok()) gone.push_back(*id);
    }
  }
  SNAPBACK_RETURN_IF_ERROR(RemoveLocation(gone, node_id));
  if (!gone.empty()) {
    SNAPBACK_LOG(Warning, "storage node %s served %d bad or missing chunk(s); repairing",
                 node_id, gone.size());
    Wake();
  }
  v1::ReportBadReplicaResponse out;
  out.set_confirmed(static_cast<uint32_t>(v.bad_ids_size()));
  return out;
}

}  // namespace snapback::coordinator
