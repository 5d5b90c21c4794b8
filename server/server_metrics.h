// The metrics of snapback-server (docs/metrics.md lists every one).
//
// Two kinds, by where the truth lives:
//   * events counted as they happen, in a MetricsRegistry: commits and their
//     SaveStats (CoordinatorMetrics), chunks put and read by the storage
//     service (StorageMetrics), scrub results (ClusterMetrics). They start
//     at zero when the process starts, as Prometheus counters may.
//   * state read at scrape time by collectors (Add*Collectors): jobs, their
//     detector state and durability lag, checkpoints by state, the incident
//     log, the audit log, the node map and replica state, the chunk store.
//
// Incidents are computed from the durable incident log at every scrape
// rather than observed when the detector writes them: the log is the truth
// (a restarted coordinator loses nothing and nothing is counted twice, even
// though the detector rewrites an incident at every step of its timeline),
// jobs and their incidents are never deleted (so the counts only grow, as
// counters must), and the scan is small — incidents are rare events, a few
// per job, read with one RocksDB prefix scan per job.
//
// Thread-safe.
#ifndef SNAPBACK_SERVER_SERVER_METRICS_H_
#define SNAPBACK_SERVER_SERVER_METRICS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "coordinator/cluster_tier.h"
#include "coordinator/coordinator_store.h"
#include "failure-detector/detector.h"
#include "snapback/v1/coordinator.pb.h"
#include "storage/chunk_store.h"

namespace snapback::server {

// Counted by the coordinator's CommitRank handler.
class CoordinatorMetrics {
 public:
  CoordinatorMetrics(metrics::MetricsRegistry* registry,
                     coordinator::CoordinatorStore* store);

  // After every successful CommitRank: the rank's SaveStats feed the stage
  // histograms (once per rank and checkpoint, replays ignored), and a
  // checkpoint that became COMMITTED counts as a save with its bytes (read
  // from its CheckpointInfo).
  void OnCommitRank(const v1::CommitRankRequest& req, const v1::CommitRankResponse& resp);

 private:
  coordinator::CoordinatorStore* const store_;
  metrics::CounterFamily* saves_;
  metrics::CounterFamily* logical_bytes_;
  metrics::CounterFamily* new_bytes_;
  metrics::CounterFamily* sent_bytes_;
  metrics::HistogramFamily* blocked_;
  metrics::HistogramFamily* snapshot_;
  metrics::HistogramFamily* to_durable_;

  absl::Mutex mu_;
  // Per job, the recent (step, rank) commits and committed steps seen, so a
  // replayed CommitRank (a client retrying after a lost answer) counts once.
  struct Seen {
    std::set<std::pair<int64_t, int>> ranks;
    std::deque<std::pair<int64_t, int>> rank_order;
    std::set<int64_t> steps;
    std::deque<int64_t> step_order;
  };
  std::map<std::string, Seen> seen_ ABSL_GUARDED_BY(mu_);
};

// Counted by the storage service (nullable pointers there).
struct StorageMetrics {
  explicit StorageMetrics(metrics::MetricsRegistry* registry);
  metrics::Counter* chunks_put;      // stored (not already present)
  metrics::Counter* chunks_present;  // put but already there (dedup)
  metrics::Counter* bytes_written;   // bytes the store wrote for them
  metrics::Counter* chunks_read;
  metrics::Counter* bytes_read;  // encoded bytes read
  metrics::Counter* put_verify_failures;
  metrics::Counter* read_failures;  // DATA_LOSS on read
};

// Counted by the cluster service of a coordinator.
struct ClusterMetrics {
  explicit ClusterMetrics(metrics::MetricsRegistry* registry);
  metrics::Counter* scrub_checked;
  metrics::Counter* scrub_bad;
  metrics::Counter* scrub_repaired;
  metrics::Counter* bad_replica_reports;  // copies confirmed bad by readers' reports
  metrics::CounterFamily* lost_reported;  // {node}: copies nodes reported lost
};

// Jobs, checkpoints, durability lag, incidents and the audit log of a
// coordinator. `store` and `detector` must outlive the registry's use.
void AddCoordinatorCollectors(metrics::MetricsRegistry* registry,
                              coordinator::CoordinatorStore* store,
                              detector::Detector* detector);
// The node map and replica state of a storage cluster. ReplicaState walks
// every committed chunk, so it is recomputed at most every `replica_every`
// and the last answer served in between.
void AddClusterCollectors(metrics::MetricsRegistry* registry,
                          coordinator::ClusterTier* cluster,
                          absl::Duration replica_every = absl::Seconds(10));
// A local chunk store: chunks, bytes, capacity, free space.
void AddChunkStoreCollectors(metrics::MetricsRegistry* registry,
                             storage::ChunkStore* store);

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_SERVER_METRICS_H_
