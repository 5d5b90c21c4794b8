// ClusterTier, the ChunkTier face and the location records. See
// cluster_tier.h.
#include "coordinator/cluster_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/placement.h"
#include "common/rocksdb_util.h"
#include "common/status_macros.h"

namespace snapback::coordinator {
namespace {

using internal_rocksdb::Sl;

constexpr internal_rocksdb::DbLabel kDb{
    "cluster tier database",
    "move DATA_DIR/tier away and restart; nodes re-register and are reconciled"};

std::string LocationKey(const ChunkId& id) { return absl::StrCat("L/", id.AsBytes()); }

std::vector<std::string> DecodeLocations(absl::string_view value) {
  if (value.empty()) return {};
  return absl::StrSplit(value, ',');
}

}  // namespace

std::vector<std::string> ClusterTier::Locations(const ChunkId& id) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Sl(LocationKey(id)), &value);
  if (!s.ok()) return {};
  return DecodeLocations(value);
}

absl::Status ClusterTier::AddLocations(
    const std::vector<std::pair<ChunkId, std::vector<std::string>>>& found) {
  if (found.empty()) return absl::OkStatus();
  absl::MutexLock lock(&loc_mu_);
  rocksdb::WriteBatch batch;
  for (const auto& [id, nodes] : found) {
    std::vector<std::string> have = Locations(id);
    bool changed = false;
    for (const std::string& n : nodes) {
      if (std::find(have.begin(), have.end(), n) == have.end()) {
        have.push_back(n);
        changed = true;
      }
    }
    if (changed) batch.Put(Sl(LocationKey(id)), absl::StrJoin(have, ","));
  }
  if (batch.Count() == 0) return absl::OkStatus();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return internal_rocksdb::FromRocks(db_->Write(wo, &batch), "write", kDb);
}

absl::Status ClusterTier::RemoveLocation(absl::Span<const ChunkId> ids,
                                         const std::string& node_id) {
  absl::MutexLock lock(&loc_mu_);
  rocksdb::WriteBatch batch;
  for (const ChunkId& id : ids) {
    std::vector<std::string> have = Locations(id);
    auto it = std::find(have.begin(), have.end(), node_id);
    if (it == have.end()) continue;
    have.erase(it);
    batch.Put(Sl(LocationKey(id)), absl::StrJoin(have, ","));
  }
  if (batch.Count() == 0) return absl::OkStatus();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return internal_rocksdb::FromRocks(db_->Write(wo, &batch), "write", kDb);
}

absl::StatusOr<std::vector<std::vector<std::string>>> ClusterTier::Holders(
    absl::Span<const ChunkId> ids, absl::flat_hash_set<std::string>* silent) {
  // Every node whose copies count is asked (in parallel): the answer is
  // exact even after failovers and repairs moved copies off their first
  // placement, and it is recorded. A node that cannot answer contributes
  // nothing.
  std::vector<std::pair<std::string, std::string>> asked;  // id, address
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, node] : nodes_) {
      if ((node.info.state() == v1::NODE_UP || node.info.state() == v1::NODE_SUSPECT) &&
          node.info.reconciled()) {
        asked.emplace_back(id, node.info.address());
      }
    }
  }
  std::vector<absl::StatusOr<std::vector<bool>>> answers = AskEach<std::vector<bool>>(
      asked, [&](internal_client::StorageClient& c) { return c.Has(ids); });
  std::vector<std::vector<std::string>> holders(ids.size());
  int answered = 0;
  absl::Status last;
  for (size_t n = 0; n < asked.size(); ++n) {
    if (!answers[n].ok()) {
      last = answers[n].status();
      if (silent != nullptr) silent->insert(asked[n].first);
      SNAPBACK_LOG(Debug, "storage node %s (%s) did not answer HasChunks: %s",
                   asked[n].first, asked[n].second, last.ToString());
      continue;
    }
    ++answered;
    for (size_t i = 0; i < ids.size(); ++i) {
      if ((*answers[n])[i]) holders[i].push_back(asked[n].first);
    }
  }
  if (answered == 0 && !ids.empty()) {
    return absl::UnavailableError(
        absl::StrCat("no storage node answered (", asked.size(), " counted as live",
                     last.ok() ? "" : absl::StrCat("; last error: ", last.message()),
                     "); check the storage nodes and retry"));
  }
  std::vector<std::pair<ChunkId, std::vector<std::string>>> found;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!holders[i].empty()) found.push_back({ids[i], holders[i]});
  }
  SNAPBACK_RETURN_IF_ERROR(AddLocations(found));
  return holders;
}

absl::StatusOr<std::vector<bool>> ClusterTier::Has(absl::Span<const ChunkId> ids,
                                                   int copies) {
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<std::vector<std::string>> holders, Holders(ids));
  std::vector<bool> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    out[i] = static_cast<int>(holders[i].size()) >= copies;
  }
  return out;
}

absl::StatusOr<std::vector<bool>> ClusterTier::EnsureCopies(absl::Span<const ChunkId> ids,
                                                            int copies) {
  absl::flat_hash_set<std::string> silent;
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<std::vector<std::string>> holders,
                            Holders(ids, &silent));
  // A chunk that was durable on `copies` nodes when they acknowledged it
  // but lost one since (a node died before the commit) is copied node to
  // node onto the next nodes in its placement order now, so the save does
  // not fail for it.
  std::map<std::string, std::vector<size_t>> plan;  // target node -> chunks
  {
    std::vector<PlacementNode> writable;
    std::vector<std::string> writable_ids;
    for (const v1::NodeInfo& n : WritableNodes()) {
      if (silent.contains(n.node_id())) continue;  // did not answer just now
      writable.push_back({n.node_id(), n.failure_domain()});
      writable_ids.push_back(n.node_id());
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      int need = copies - static_cast<int>(holders[i].size());
      if (need <= 0 || holders[i].empty()) continue;
      for (int k : PlacementOrder(ids[i], writable)) {
        if (need == 0) break;
        const std::string& target = writable_ids[k];
        if (std::find(holders[i].begin(), holders[i].end(), target) != holders[i].end()) {
          continue;
        }
        plan[target].push_back(i);
        --need;
      }
    }
  }
  for (const auto& [target, chunks] : plan) {
    std::vector<ChunkId> want;
    std::vector<std::string> sources;
    for (size_t i : chunks) {
      want.push_back(ids[i]);
      for (const std::string& h : holders[i]) {
        const std::string address = AddressOf(h);
        if (std::find(sources.begin(), sources.end(), address) == sources.end()) {
          sources.push_back(address);
        }
      }
    }
    absl::StatusOr<internal_client::StorageClient*> client = ClientFor(AddressOf(target));
    if (!client.ok()) continue;
    absl::StatusOr<v1::ReplicateChunksResponse> resp =
        (*client)->Replicate(want, sources);
    if (!resp.ok()) {
      SNAPBACK_LOG(Warning, "re-placing %d chunk(s) on node %s failed: %s", want.size(),
                   target, resp.status().ToString());
      continue;
    }
    absl::flat_hash_set<std::string> failed(resp->failed_ids().begin(),
                                            resp->failed_ids().end());
    std::vector<std::pair<ChunkId, std::vector<std::string>>> found;
    for (size_t i : chunks) {
      if (failed.contains(std::string(ids[i].AsBytes()))) continue;
      holders[i].push_back(target);
      found.push_back({ids[i], {target}});
    }
    SNAPBACK_RETURN_IF_ERROR(AddLocations(found));
    SNAPBACK_LOG(Info, "re-placed %d chunk(s) that lost a copy before their commit on %s",
                 found.size(), target);
  }
  std::vector<bool> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    out[i] = static_cast<int>(holders[i].size()) >= copies;
  }
  return out;
}

absl::StatusOr<uint64_t> ClusterTier::Delete(absl::Span<const ChunkId> ids) {
  // Every node that may hold a copy and can be reached. A DOWN node is
  // skipped: when it comes back, reconciliation drops what is no longer
  // wanted. A node that is UP must succeed (GC retries the batch later).
  std::vector<std::pair<std::string, std::string>> targets;  // id, address
  absl::flat_hash_set<std::string> must;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, node] : nodes_) {
      const v1::NodeState st = node.info.state();
      if (st == v1::NODE_DOWN || st == v1::NODE_REMOVED) continue;
      targets.emplace_back(id, node.info.address());
      // A DRAINING node is not moved on by silence, so it is required only
      // while it still heartbeats.
      const bool heard = clock_->Monotonic() - node.last_seen < options_.suspect_after;
      if (st == v1::NODE_UP || (st == v1::NODE_DRAINING && heard)) must.insert(id);
    }
  }
  std::vector<absl::StatusOr<int>> results = AskEach<int>(
      targets, [&](internal_client::StorageClient& c) { return c.Delete(ids); });
  uint64_t deleted = 0;
  for (size_t n = 0; n < targets.size(); ++n) {
    if (results[n].ok()) {
      deleted += *results[n];
    } else if (must.contains(targets[n].first)) {
      return absl::UnavailableError(
          absl::StrCat("deleting chunks from storage node ", targets[n].first, " (",
                       targets[n].second, "): ", results[n].status().message()));
    } else {
      SNAPBACK_LOG(Warning, "could not delete chunks from suspect node %s: %s",
                   targets[n].first, results[n].status().ToString());
    }
  }
  absl::MutexLock lock(&loc_mu_);
  rocksdb::WriteBatch batch;
  for (const ChunkId& id : ids) batch.Delete(Sl(LocationKey(id)));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  SNAPBACK_RETURN_IF_ERROR(
      internal_rocksdb::FromRocks(db_->Write(wo, &batch), "write", kDb));
  return deleted;
}

absl::StatusOr<std::vector<ChunkCheck>> ClusterTier::Verify(absl::Span<const ChunkId> ids,
                                                            absl::Duration deadline) {
  std::vector<std::pair<std::string, std::string>> asked;  // id, address
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, node] : nodes_) {
      const v1::NodeState st = node.info.state();
      if (st == v1::NODE_UP || st == v1::NODE_SUSPECT || st == v1::NODE_DRAINING) {
        asked.emplace_back(id, node.info.address());
      }
    }
  }
  std::vector<absl::StatusOr<v1::VerifyChunksResponse>> answers =
      AskEach<v1::VerifyChunksResponse>(asked, [&](internal_client::StorageClient& c) {
        return c.Verify(ids, deadline);
      });
  struct Seen {
    std::vector<std::string> good, bad, lost;  // node ids
  };
  std::vector<Seen> seen(ids.size());
  absl::flat_hash_set<std::string> answered;
  for (size_t n = 0; n < asked.size(); ++n) {
    const std::string& node = asked[n].first;
    if (!answers[n].ok()) {
      SNAPBACK_LOG(Warning, "verify: storage node %s (%s) did not answer: %s", node,
                   asked[n].second, answers[n].status().ToString());
      continue;
    }
    answered.insert(node);
    absl::flat_hash_set<std::string> bad(answers[n]->bad_ids().begin(),
                                         answers[n]->bad_ids().end());
    absl::flat_hash_set<std::string> missing(answers[n]->missing_ids().begin(),
                                             answers[n]->missing_ids().end());
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string key(ids[i].AsBytes());
      if (bad.contains(key)) {
        seen[i].bad.push_back(node);
      } else if (!missing.contains(key)) {
        seen[i].good.push_back(node);
      }
    }
  }
  if (answered.empty() && !ids.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "no storage node answered VerifyChunks (", asked.size(),
        " asked); check the storage nodes (snapbackctl nodes) and verify again"));
  }
  std::vector<ChunkCheck> out(ids.size());
  std::map<std::string, std::vector<ChunkId>> drop;  // node -> its bad or lost copies
  for (size_t i = 0; i < ids.size(); ++i) {
    Seen& s = seen[i];
    // Copies the location records promise but an answering node lacks are
    // lost too; copies on nodes that did not answer are unknown.
    std::vector<std::string> unknown;
    for (const std::string& n : Locations(ids[i])) {
      if (!answered.contains(n)) {
        unknown.push_back(n);
      } else if (std::find(s.good.begin(), s.good.end(), n) == s.good.end() &&
                 std::find(s.bad.begin(), s.bad.end(), n) == s.bad.end()) {
        s.lost.push_back(n);
      }
    }
    for (const auto* list : {&s.bad, &s.lost}) {
      for (const std::string& n : *list) drop[n].push_back(ids[i]);
    }
    std::string detail;
    if (!s.bad.empty()) {
      absl::StrAppend(&detail, "the copy on node(s) ", absl::StrJoin(s.bad, ", "),
                      " failed verification");
    }
    if (!s.lost.empty()) {
      absl::StrAppend(&detail, detail.empty() ? "" : "; ", "node(s) ",
                      absl::StrJoin(s.lost, ", "), " lost their copy");
    }
    if (!s.good.empty()) {
      out[i] = {detail.empty() ? ChunkCheck::kGood : ChunkCheck::kRepaired, detail};
    } else if (!unknown.empty() || answered.size() < asked.size()) {
      absl::StrAppend(&detail, detail.empty() ? "" : "; ",
                      "no good copy on the nodes that answered; ",
                      unknown.empty()
                          ? "a node that did not answer"
                          : absl::StrCat("node(s) ", absl::StrJoin(unknown, ", ")),
                      " may hold one");
      out[i] = {ChunkCheck::kUnverified, detail};
    } else {
      out[i] = {ChunkCheck::kBad,
                detail.empty() ? "no storage node has a copy"
                               : absl::StrCat(detail, "; no other node has a copy")};
    }
  }
  // As ReportBadReplica: the nodes have quarantined the bad copies; drop
  // their locations so repair re-copies from a good one.
  for (const auto& [node, bad] : drop) {
    SNAPBACK_RETURN_IF_ERROR(RemoveLocation(bad, node));
  }
  if (!drop.empty()) {
    SNAPBACK_LOG(Warning, "verify: bad or lost copies on %d node(s); repairing",
                 drop.size());
    Wake();
  }
  return out;
}

absl::Status ClusterTier::PublishCatalog(const std::string& key, const std::string& value,
                                         int copies) {
  // The same rendezvous placement as chunks, keyed by the record's key, so
  // the record lands in distinct failure domains; a node that fails is
  // replaced by the next.
  std::vector<v1::NodeInfo> nodes = WritableNodes();
  std::vector<PlacementNode> placement;
  for (const v1::NodeInfo& n : nodes)
    placement.push_back({n.node_id(), n.failure_domain()});
  int stored = 0;
  absl::Status last;
  for (int k : PlacementOrder(Sha256(key), placement)) {
    if (stored == copies) break;
    absl::StatusOr<internal_client::StorageClient*> client =
        ClientFor(nodes[k].address());
    absl::Status s = client.ok() ? (*client)->PutCatalog(key, value) : client.status();
    if (s.ok()) {
      ++stored;
    } else {
      last = s;
    }
  }
  if (stored < copies) {
    return absl::UnavailableError(absl::StrCat("catalogue record stored on ", stored,
                                               " of ", copies,
                                               " nodes: ", last.message()));
  }
  return absl::OkStatus();
}

void ClusterTier::RetractCatalog(const std::vector<std::string>& keys) {
  absl::MutexLock lock(&retract_mu_);
  retract_.insert(retract_.end(), keys.begin(), keys.end());
}

void ClusterTier::DrainRetractions() {
  std::vector<std::string> keys;
  {
    absl::MutexLock lock(&retract_mu_);
    keys.swap(retract_);
  }
  if (keys.empty()) return;
  // Every reachable node: a record may have moved with failovers. A node
  // that misses the delete keeps a stale record, which a rebuild ignores
  // unless every chunk it names is still on the tier.
  for (const v1::NodeInfo& n : ReadableNodes()) {
    if (n.state() != v1::NODE_UP && n.state() != v1::NODE_DRAINING) continue;
    absl::StatusOr<internal_client::StorageClient*> client = ClientFor(n.address());
    absl::Status s = client.ok() ? (*client)->DeleteCatalog(keys) : client.status();
    if (!s.ok()) {
      SNAPBACK_LOG(Debug, "dropping %d catalogue record(s) from %s: %s", keys.size(),
                   n.node_id(), s.ToString());
    }
  }
}

}  // namespace snapback::coordinator
