// ClusterTier: the storage tier as a cluster of storage nodes that register
// with the coordinator (proto/snapback/v1/cluster.proto; docs/cluster.md).
//
// It is three things in one object, in three files:
//   node_map.cc      membership: the versioned node map (UP, SUSPECT, DOWN,
//                    DRAINING, REMOVED), registration, heartbeats, state by
//                    the injected clock (Tick).
//   cluster_tier.cc  the ChunkTier face: Has() asks every live node and
//                    records where each chunk is; Delete() deletes from
//                    every node that may hold a copy; location records.
//   repair.cc        keeping R copies: repair of under-replicated chunks of
//                    committed checkpoints (newest first, node to node,
//                    throttled), reconciliation of a node that comes back,
//                    scrub on demand, bad-replica reports, replica state.
//
// Location records ("L/<id>" in the tier's own RocksDB, DATA_DIR/tier) say
// which nodes hold a verified copy. A copy counts toward R only on a node
// that is UP or SUSPECT and reconciled; DOWN, DRAINING and REMOVED nodes'
// copies do not count (DRAINING copies are still read as repair sources).
//
// The committed catalogue (which chunks committed checkpoints need, newest
// first, and whether a chunk is still wanted at all) comes from the
// coordinator's metadata engine through CatalogView, set after both exist.
//
// Thread-safe.
#ifndef SNAPBACK_COORDINATOR_CLUSTER_TIER_H_
#define SNAPBACK_COORDINATOR_CLUSTER_TIER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "common/hash.h"
#include "coordinator/chunk_tier.h"
#include "rpc/storage_client.h"
#include "snapback/v1/cluster.pb.h"

namespace rocksdb {
class DB;
}  // namespace rocksdb

namespace snapback::coordinator {

struct ClusterOptions {
  // A node with no heartbeat for this long is SUSPECT (no new chunks).
  // Default: 3 s
  absl::Duration suspect_after = absl::Seconds(3);
  // ... and DOWN after this grace: its copies stop counting and repair
  // starts.
  // Default: 15 s
  absl::Duration down_after = absl::Seconds(15);
  // Bytes per second repair asks the nodes to copy (all repairs together),
  // so checkpoint traffic keeps priority.
  // Default: 256 MiB/s
  uint64_t repair_bytes_per_sec = 256ull << 20;
  // How often the repair loop checks every committed chunk even when nothing
  // changed (a node going DOWN, a lost chunk or a bad replica wakes it now).
  // Default: 60 s
  absl::Duration repair_interval = absl::Seconds(60);
  // How the coordinator reaches storage nodes (TLS, deadline).
  internal_client::StorageClientOptions storage_client;
  // nullptr = RealClock().
  Clock* clock = nullptr;
};

// What the coordinator's metadata engine tells the tier.
class CatalogView {
 public:
  virtual ~CatalogView() = default;
  // Calls `fn(id, raw_length, replication)` for every chunk named by a
  // COMMITTED checkpoint, newest checkpoint first (a chunk shared by several
  // comes with the first). Stops early when fn returns false.
  virtual absl::Status ForEachCommittedChunk(
      const std::function<bool(const ChunkId&, uint32_t, int)>& fn) = 0;
  // For each id, whether the metadata still knows the chunk (referenced by a
  // committed checkpoint, claimed by one in flight, or in GC's grace).
  virtual absl::StatusOr<std::vector<bool>> Wanted(absl::Span<const ChunkId> ids) = 0;
};

class ClusterTier final : public ChunkTier {
 public:
  // Opens (creating) the tier's database in `dir` and starts the repair
  // loop (which waits for SetCatalog).
  static absl::StatusOr<std::unique_ptr<ClusterTier>> Open(const std::string& dir,
                                                           ClusterOptions options);
  ~ClusterTier() override;

  // Must be called once, before nodes' copies are repaired or reconciled.
  // `catalog` must outlive the tier (or until Stop()).
  void SetCatalog(CatalogView* catalog);
  // Stops the background loops; idempotent.
  void Stop();

  // --- membership (node_map.cc) ---
  absl::StatusOr<v1::NodeMap> Register(const v1::NodeInfo& node);
  absl::StatusOr<v1::NodeHeartbeatResponse> Heartbeat(
      const v1::NodeHeartbeatRequest& req);
  v1::NodeMap Map();
  absl::StatusOr<v1::NodeInfo> SetNodeState(const std::string& node_id,
                                            v1::NodeState state);
  // Applies the clock: UP -> SUSPECT -> DOWN. Called by the loop every
  // 250 ms; tests with a fake clock call it themselves.
  void Tick();
  // Nodes new chunks may go to (UP, reconciled or not, not full), and the
  // default replication min(2, of them).
  std::vector<v1::NodeInfo> WritableNodes() override;
  int DefaultReplication() override;
  // Every node not REMOVED (readers try them in placement order).
  std::vector<v1::NodeInfo> ReadableNodes() override;
  uint64_t MapVersion() override;

  // --- ChunkTier (cluster_tier.cc) ---
  absl::StatusOr<std::vector<bool>> Has(absl::Span<const ChunkId> ids,
                                        int copies) override;
  absl::StatusOr<std::vector<bool>> EnsureCopies(absl::Span<const ChunkId> ids,
                                                 int copies) override;
  absl::StatusOr<uint64_t> Delete(absl::Span<const ChunkId> ids) override;
  // Asks every node that may serve reads (UP, SUSPECT, DRAINING) to verify
  // the ids (VerifyChunks; nodes quarantine bad copies). A chunk with a good
  // copy whose other copies were bad, or missing where a location record
  // put them, is kRepaired: those locations are dropped and repair woken,
  // as ReportBadReplica does. A chunk with no good copy is kUnverified when
  // a node that did not answer (or is DOWN) may hold one, else kBad.
  absl::StatusOr<std::vector<ChunkCheck>> Verify(absl::Span<const ChunkId> ids,
                                                 absl::Duration deadline) override;
  std::vector<std::string> endpoints() const override { return {}; }
  int replication() const override { return 1; }
  bool clustered() const override { return true; }

  absl::Status PublishCatalog(const std::string& key, const std::string& value,
                              int copies) override;
  void RetractCatalog(const std::vector<std::string>& keys) override;

  // Node ids holding a copy of `id` per the location records.
  std::vector<std::string> Locations(const ChunkId& id);

  // --- repair (repair.cc) ---
  absl::StatusOr<v1::ReplicaState> ReplicaState(
      const v1::GetReplicaStateRequest& req = {});
  absl::StatusOr<v1::ScrubNodesResponse> Scrub(const std::string& node_id);
  absl::StatusOr<v1::ReportBadReplicaResponse> ReportBadReplica(
      const v1::ReportBadReplicaRequest& req);
  // Runs one repair pass now (the loop runs them on its own); returns the
  // copies made.
  absl::StatusOr<uint64_t> RepairNow();
  // Reconciles every node that needs it now.
  absl::Status ReconcileNow();

  // Set (durably) when the coordinator's catalogue was rebuilt from the
  // tier: from then on reconciliation never deletes a node's copies that the
  // catalogue does not know (they may belong to checkpoints whose records
  // the rebuild did not see). docs/cluster.md.
  absl::Status MarkRebuilt();
  bool rebuilt();

 private:
  ClusterTier(std::string dir, ClusterOptions options, std::unique_ptr<rocksdb::DB> db);

  struct Node {
    v1::NodeInfo info;
    absl::Duration last_seen;  // clock_->Monotonic() of the last heartbeat
  };

  // node_map.cc
  absl::Status LoadNodes();
  absl::Status SaveNodeLocked(const Node& node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BumpVersionLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::NodeMap MapLocked() ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Ids of nodes whose copies count (UP/SUSPECT and reconciled).
  absl::flat_hash_set<std::string> CountingNodes();
  // Clients to nodes by address (cached).
  absl::StatusOr<internal_client::StorageClient*> ClientFor(const std::string& address);
  std::string AddressOf(const std::string& node_id);
  // `call(client)` on each (node id, address) of `asked` at once, a thread
  // each; the answers in the same order (a node without a client: why).
  template <typename T, typename Call>
  std::vector<absl::StatusOr<T>> AskEach(
      const std::vector<std::pair<std::string, std::string>>& asked, const Call& call) {
    std::vector<absl::StatusOr<T>> answers(asked.size(),
                                           absl::UnavailableError("not asked"));
    std::vector<std::thread> threads;
    for (size_t n = 0; n < asked.size(); ++n) {
      threads.emplace_back([&, n] {
        absl::StatusOr<internal_client::StorageClient*> client =
            ClientFor(asked[n].second);
        answers[n] = client.ok() ? call(**client) : absl::StatusOr<T>(client.status());
      });
    }
    for (auto& t : threads) t.join();
    return answers;
  }

  // cluster_tier.cc: the nodes (ids) holding each chunk, asked of every
  // live node and recorded.
  // Nodes that did not answer go to `silent` when given.
  absl::StatusOr<std::vector<std::vector<std::string>>> Holders(
      absl::Span<const ChunkId> ids, absl::flat_hash_set<std::string>* silent = nullptr);
  // cluster_tier.cc: location records.
  absl::Status AddLocations(
      const std::vector<std::pair<ChunkId, std::vector<std::string>>>& found);
  absl::Status RemoveLocation(absl::Span<const ChunkId> ids, const std::string& node_id);

  // repair.cc
  void Loop();
  void TickLoop();
  absl::StatusOr<uint64_t> RepairPass();
  absl::Status Reconcile(const std::string& node_id);
  void Wake();

  const std::string dir_;
  const ClusterOptions options_;
  Clock* const clock_;
  std::unique_ptr<rocksdb::DB> db_;

  absl::Mutex mu_;
  std::map<std::string, Node> nodes_ ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  CatalogView* catalog_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex clients_mu_;
  std::map<std::string, std::unique_ptr<internal_client::StorageClient>> clients_
      ABSL_GUARDED_BY(clients_mu_);

  // Catalogue keys to delete from the nodes (RetractCatalog), drained by
  // the loop.
  absl::Mutex retract_mu_;
  std::vector<std::string> retract_ ABSL_GUARDED_BY(retract_mu_);
  void DrainRetractions();

  // Serialises read-modify-write of location records.
  absl::Mutex loc_mu_;

  // Serialises repair passes and reconciliations.
  absl::Mutex repair_mu_;
  absl::Mutex stats_mu_;
  v1::ReplicaState last_state_ ABSL_GUARDED_BY(stats_mu_);
  uint64_t repaired_chunks_ ABSL_GUARDED_BY(stats_mu_) = 0;
  uint64_t repaired_bytes_ ABSL_GUARDED_BY(stats_mu_) = 0;
  double repair_rate_ ABSL_GUARDED_BY(stats_mu_) = 0;

  std::thread loop_;
  std::thread ticker_;
};

}  // namespace snapback::coordinator

#endif  // SNAPBACK_COORDINATOR_CLUSTER_TIER_H_
