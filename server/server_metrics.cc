#include "server/server_metrics.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace snapback::server {
namespace {

using metrics::ExponentialBuckets;
using metrics::ExpositionWriter;
using metrics::MetricType;

// How many recent commits per job the replay filter remembers: more than
// a job's ranks times the checkpoints that can be in flight at once.
constexpr size_t kSeenRanks = 8192;
constexpr size_t kSeenSteps = 64;

double Seconds(int64_t us) { return static_cast<double>(us) / 1e6; }

// Detection: a crash is seen in milliseconds, a lost heartbeat or a hang
// after seconds to minutes. Restart and restore: seconds to an hour.
std::vector<double> DetectionBuckets() { return ExponentialBuckets(0.05, 2, 15); }
std::vector<double> RestartBuckets() { return ExponentialBuckets(0.5, 2, 14); }
std::vector<double> SaveBuckets() { return ExponentialBuckets(0.001, 2, 20); }

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(metrics::MetricsRegistry* r,
                                       coordinator::CoordinatorStore* store)
    : store_(store),
      saves_(r->AddCounter("snapback_saves_committed_total",
                           "Checkpoints that became COMMITTED, by job.", {"job_id"})),
      logical_bytes_(r->AddCounter(
          "snapback_save_logical_bytes_total",
          "Logical bytes (tensors and blobs) of committed checkpoints, by job.",
          {"job_id"})),
      new_bytes_(
          r->AddCounter("snapback_save_new_bytes_total",
                        "Raw bytes of the chunks committed checkpoints had to send "
                        "(not unchanged, not already stored), by job.",
                        {"job_id"})),
      sent_bytes_(r->AddCounter(
          "snapback_save_sent_bytes_total",
          "Encoded (compressed) bytes committed checkpoints sent, by job.", {"job_id"})),
      blocked_(r->AddHistogram(
          "snapback_save_blocked_seconds",
          "Time a rank's Save() blocked training (SaveStats.blocked_us), by job.",
          {"job_id"}, SaveBuckets())),
      snapshot_(r->AddHistogram("snapback_save_snapshot_seconds",
                                "Time a rank's save spent copying its snapshot "
                                "(SaveStats.snapshot_us), by job.",
                                {"job_id"}, SaveBuckets())),
      to_durable_(
          r->AddHistogram("snapback_save_to_durable_seconds",
                          "Time from a rank's Save() call until its chunks were durable "
                          "(SaveStats.to_durable_us), by job.",
                          {"job_id"}, SaveBuckets())) {}

void CoordinatorMetrics::OnCommitRank(const v1::CommitRankRequest& req,
                                      const v1::CommitRankResponse& resp) {
  const std::string& job = req.rank().job_id();
  bool rank_new = false, step_new = false;
  {
    absl::MutexLock lock(&mu_);
    Seen& seen = seen_[job];
    const std::pair<int64_t, int> key{req.step(), req.rank().rank()};
    if (seen.ranks.insert(key).second) {
      rank_new = true;
      seen.rank_order.push_back(key);
      if (seen.rank_order.size() > kSeenRanks) {
        seen.ranks.erase(seen.rank_order.front());
        seen.rank_order.pop_front();
      }
    }
    if (resp.checkpoint_committed() && seen.steps.insert(req.step()).second) {
      step_new = true;
      seen.step_order.push_back(req.step());
      if (seen.step_order.size() > kSeenSteps) {
        seen.steps.erase(seen.step_order.front());
        seen.step_order.pop_front();
      }
    }
  }
  if (rank_new && req.has_stats()) {
    const v1::SaveStats& s = req.stats();
    blocked_->WithLabels({job})->Observe(Seconds(s.blocked_us()));
    snapshot_->WithLabels({job})->Observe(Seconds(s.snapshot_us()));
    to_durable_->WithLabels({job})->Observe(Seconds(s.to_durable_us()));
  }
  if (!step_new) return;
  saves_->WithLabels({job})->Inc();
  // The checkpoint's sums (once per checkpoint, whichever rank completed
  // it). Off the training path: only the committing rank's answer waits.
  absl::StatusOr<v1::ListCheckpointsResponse> list = store_->ListCheckpoints(job);
  if (!list.ok()) return;
  for (const v1::CheckpointInfo& c : list->checkpoints()) {
    if (c.step() != req.step()) continue;
    logical_bytes_->WithLabels({job})->Inc(static_cast<double>(c.logical_bytes()));
    new_bytes_->WithLabels({job})->Inc(static_cast<double>(c.new_bytes()));
    sent_bytes_->WithLabels({job})->Inc(static_cast<double>(c.sent_bytes()));
  }
}

StorageMetrics::StorageMetrics(metrics::MetricsRegistry* r)
    : chunks_put(r->AddCounter("snapback_storage_chunks_put_total",
                               "Chunks stored by this node (not already present).", {})
                     ->WithLabels({})),
      chunks_present(r->AddCounter("snapback_storage_chunks_put_present_total",
                                   "Chunks put that this node already had (dedup).", {})
                         ->WithLabels({})),
      bytes_written(r->AddCounter("snapback_storage_written_bytes_total",
                                  "Bytes this node's chunk store wrote for new chunks.",
                                  {})
                        ->WithLabels({})),
      chunks_read(r->AddCounter("snapback_storage_chunks_get_total",
                                "Chunks this node read and served.", {})
                      ->WithLabels({})),
      bytes_read(r->AddCounter("snapback_storage_read_bytes_total",
                               "Encoded bytes of the chunks this node served.", {})
                     ->WithLabels({})),
      put_verify_failures(
          r->AddCounter("snapback_storage_put_verification_failures_total",
                        "Chunks refused on put because their bytes did not match their "
                        "id (SHA-256) or did not decode.",
                        {})
              ->WithLabels({})),
      read_failures(r->AddCounter("snapback_storage_read_verification_failures_total",
                                  "Chunks that failed verification when read (DATA_LOSS; "
                                  "quarantined, read from another replica).",
                                  {})
                        ->WithLabels({})) {}

ClusterMetrics::ClusterMetrics(metrics::MetricsRegistry* r)
    : scrub_checked(r->AddCounter("snapback_scrub_checked_chunks_total",
                                  "Copies verified by operator scrubs (ScrubNodes).", {})
                        ->WithLabels({})),
      scrub_bad(r->AddCounter("snapback_scrub_bad_copies_total",
                              "Bad copies operator scrubs found.", {})
                    ->WithLabels({})),
      scrub_repaired(r->AddCounter("snapback_scrub_repaired_copies_total",
                                   "Bad copies operator scrubs found that were repaired "
                                   "from a good replica.",
                                   {})
                         ->WithLabels({})),
      bad_replica_reports(
          r->AddCounter("snapback_bad_replica_confirmed_total",
                        "Copies readers reported bad that their node confirmed.", {})
              ->WithLabels({})),
      lost_reported(
          r->AddCounter("snapback_node_lost_chunks_reported_total",
                        "Copies storage nodes reported lost in heartbeats (found "
                        "bad by their background scrub or on read), by node.",
                        {"node"})) {}

void AddCoordinatorCollectors(metrics::MetricsRegistry* registry,
                              coordinator::CoordinatorStore* store,
                              detector::Detector* detector) {
  registry->AddCollector([store, detector](ExpositionWriter& w) {
    absl::StatusOr<v1::ListJobsResponse> jobs = store->ListJobs();
    if (!jobs.ok()) {
      SNAPBACK_LOG(Warning, "metrics: cannot list jobs: %s", jobs.status().ToString());
      return;
    }
    const std::map<std::string, std::string> states = detector->WatchedJobStates();
    const std::vector<std::string> job_label = {"job_id"};
    w.Begin("snapback_job_state",
            "1 for the job's state as the failure detector sees it (RUNNING, SUSPECT, "
            "FAILED, RESTARTING, RECOVERING, FINISHED, GAVE_UP; UNKNOWN: no rank seen "
            "since the coordinator started).",
            MetricType::kGauge);
    for (const v1::JobInfo& j : jobs->jobs()) {
      auto it = states.find(j.job_id());
      w.Sample("snapback_job_state", {"job_id", "state"},
               {j.job_id(), it == states.end() ? "UNKNOWN" : it->second}, 1);
    }
    w.Begin("snapback_job_incarnation",
            "The job's incarnation (raised at every restart by the detector).",
            MetricType::kGauge);
    for (const v1::JobInfo& j : jobs->jobs()) {
      w.Sample("snapback_job_incarnation", job_label, {j.job_id()},
               static_cast<double>(j.incarnation()));
    }
    w.Begin("snapback_job_latest_committed_step",
            "The job's newest COMMITTED step (-1: none).", MetricType::kGauge);
    for (const v1::JobInfo& j : jobs->jobs()) {
      w.Sample("snapback_job_latest_committed_step", job_label, {j.job_id()},
               static_cast<double>(j.latest_committed()));
    }

    // Checkpoints: by state, committed bytes kept, durability lag.
    struct PerJob {
      std::map<std::string, int> by_state;
      double stored = 0;
      int64_t newest_committed_ms = 0;
    };
    std::map<std::string, PerJob> per_job;
    for (const v1::JobInfo& j : jobs->jobs()) {
      PerJob& p = per_job[j.job_id()];
      for (const char* s : {"WRITING", "COMMITTED", "ABORTED"}) p.by_state[s] = 0;
      absl::StatusOr<v1::ListCheckpointsResponse> list =
          store->ListCheckpoints(j.job_id());
      if (!list.ok()) continue;
      for (const v1::CheckpointInfo& c : list->checkpoints()) {
        ++p.by_state[v1::CheckpointState_Name(c.state())];
        if (c.state() == v1::COMMITTED) {
          p.stored += static_cast<double>(c.logical_bytes());
          p.newest_committed_ms = std::max(p.newest_committed_ms, c.committed_unix_ms());
        }
      }
    }
    w.Begin("snapback_checkpoints",
            "Checkpoints the coordinator holds, by job and state.", MetricType::kGauge);
    for (const auto& [job, p] : per_job) {
      for (const auto& [state, n] : p.by_state) {
        w.Sample("snapback_checkpoints", {"job_id", "state"}, {job, state}, n);
      }
    }
    w.Begin("snapback_job_stored_bytes",
            "Logical bytes of the job's COMMITTED checkpoints still kept (before "
            "deduplication across checkpoints).",
            MetricType::kGauge);
    for (const auto& [job, p] : per_job) {
      w.Sample("snapback_job_stored_bytes", job_label, {job}, p.stored);
    }
    w.Begin("snapback_job_durability_lag_seconds",
            "Seconds since the job's newest checkpoint committed (the training a crash "
            "now would lose); absent until its first commit.",
            MetricType::kGauge);
    const double now_ms = static_cast<double>(absl::ToUnixMillis(absl::Now()));
    for (const auto& [job, p] : per_job) {
      if (p.newest_committed_ms <= 0) continue;
      w.Sample(
          "snapback_job_durability_lag_seconds", job_label, {job},
          std::max(0.0, (now_ms - static_cast<double>(p.newest_committed_ms)) / 1e3));
    }

    // Incidents, from the durable log (see the header for why at scrape).
    std::map<std::pair<std::string, std::string>, int> by_job_kind;
    std::map<std::string, std::unique_ptr<metrics::Histogram>> detection, restart,
        restore;
    auto observe = [](auto& hists, const std::string& kind, std::vector<double> bounds,
                      double v) {
      auto& h = hists[kind];
      if (h == nullptr) h = std::make_unique<metrics::Histogram>(std::move(bounds));
      h->Observe(v);
    };
    for (const v1::JobInfo& j : jobs->jobs()) {
      absl::StatusOr<std::vector<v1::Incident>> incidents =
          store->ListIncidents(j.job_id());
      if (!incidents.ok()) continue;
      for (const v1::Incident& i : *incidents) {
        ++by_job_kind[{j.job_id(), i.kind()}];
        if (i.detected_unix_ms() > 0 && i.last_healthy_unix_ms() > 0) {
          observe(detection, i.kind(), DetectionBuckets(),
                  std::max<int64_t>(0, i.detected_unix_ms() - i.last_healthy_unix_ms()) /
                      1e3);
        }
        if (i.first_new_step_unix_ms() > 0 && i.detected_unix_ms() > 0) {
          observe(
              restart, i.kind(), RestartBuckets(),
              std::max<int64_t>(0, i.first_new_step_unix_ms() - i.detected_unix_ms()) /
                  1e3);
        }
        if (i.restored_unix_ms() > 0 && i.ranks_back_unix_ms() > 0) {
          observe(
              restore, i.kind(), RestartBuckets(),
              std::max<int64_t>(0, i.restored_unix_ms() - i.ranks_back_unix_ms()) / 1e3);
        }
      }
    }
    w.Begin("snapback_incidents_total",
            "Failures the detector logged (the durable incident log), by job and kind "
            "(rank exit, heartbeat loss, hang, operator restore).",
            MetricType::kCounter);
    for (const auto& [key, n] : by_job_kind) {
      w.Sample("snapback_incidents_total", {"job_id", "kind"}, {key.first, key.second},
               n);
    }
    const struct {
      const char* name;
      const char* help;
      const std::map<std::string, std::unique_ptr<metrics::Histogram>>* hists;
    } families[] = {
        {"snapback_incident_detection_seconds",
         "Detection latency: incident detected minus the failed rank's last healthy "
         "moment, by kind.",
         &detection},
        {"snapback_incident_restart_seconds",
         "Restart latency: incident detected until the restarted job's first new step, "
         "by kind.",
         &restart},
        {"snapback_restore_seconds",
         "Restore time after an incident: every rank of the new incarnation back until "
         "every rank restored, by kind.",
         &restore},
    };
    for (const auto& f : families) {
      w.Begin(f.name, f.help, MetricType::kHistogram);
      for (const auto& [kind, h] : *f.hists) {
        w.HistogramSamples(f.name, {"kind"}, {kind}, h->Read());
      }
    }
  });

  // Operator actions, from the durable audit log: each scrape adds the
  // entries with a sequence number beyond the last one counted. The first
  // scrape counts the last 1000 entries, so the counts carry over a
  // coordinator restart (up to that many).
  struct AuditTally {
    absl::Mutex mu;
    int64_t last_seq = -1;
    std::map<std::pair<std::string, std::string>, double> counts;
  };
  auto tally = std::make_shared<AuditTally>();
  registry->AddCollector([store, tally](ExpositionWriter& w) {
    absl::MutexLock lock(&tally->mu);
    absl::StatusOr<std::vector<v1::AuditEntry>> entries = store->ListAudit(0);
    if (entries.ok()) {
      for (const v1::AuditEntry& e : *entries) {
        if (e.seq() <= tally->last_seq) continue;
        tally->last_seq = e.seq();
        tally->counts[{e.action(), e.outcome() == "ok" ? "ok" : "error"}] += 1;
      }
    }
    w.Begin("snapback_operator_actions_total",
            "Operator actions in the audit log (pin, unpin, delete, set-restore-target, "
            "clear-restore-target, gc, restart), by outcome (ok, error = refused or "
            "failed).",
            MetricType::kCounter);
    for (const auto& [key, n] : tally->counts) {
      w.Sample("snapback_operator_actions_total", {"action", "outcome"},
               {key.first, key.second}, n);
    }
  });
}

void AddClusterCollectors(metrics::MetricsRegistry* registry,
                          coordinator::ClusterTier* cluster,
                          absl::Duration replica_every) {
  struct Cache {
    absl::Mutex mu;
    absl::Time at = absl::InfinitePast();
    std::optional<v1::ReplicaState> state;
  };
  auto cache = std::make_shared<Cache>();
  registry->AddCollector([cluster, cache, replica_every](ExpositionWriter& w) {
    const v1::NodeMap map = cluster->Map();
    const std::vector<std::string> node = {"node"};
    w.Begin("snapback_node_state",
            "1 for the storage node's state (NODE_UP, NODE_SUSPECT, NODE_DOWN, "
            "NODE_DRAINING, NODE_REMOVED), by node.",
            MetricType::kGauge);
    for (const v1::NodeInfo& n : map.nodes()) {
      w.Sample("snapback_node_state", {"node", "state"},
               {n.node_id(), v1::NodeState_Name(n.state())}, 1);
    }
    const struct {
      const char* name;
      const char* help;
      double (*get)(const v1::NodeInfo&);
    } node_gauges[] = {
        {"snapback_node_capacity_bytes", "Size of the node's data volume.",
         [](const v1::NodeInfo& n) { return static_cast<double>(n.capacity_bytes()); }},
        {"snapback_node_free_bytes", "Free bytes on the node's data volume.",
         [](const v1::NodeInfo& n) { return static_cast<double>(n.free_bytes()); }},
        {"snapback_node_full",
         "1 when the node is above its high watermark (refuses new chunks).",
         [](const v1::NodeInfo& n) { return n.full() ? 1.0 : 0.0; }},
        {"snapback_node_reconciled",
         "0 while a node back from DOWN is being reconciled (its copies do not count).",
         [](const v1::NodeInfo& n) { return n.reconciled() ? 1.0 : 0.0; }},
    };
    for (const auto& g : node_gauges) {
      w.Begin(g.name, g.help, MetricType::kGauge);
      for (const v1::NodeInfo& n : map.nodes())
        w.Sample(g.name, node, {n.node_id()}, g.get(n));
    }

    absl::MutexLock lock(&cache->mu);
    if (!cache->state.has_value() || absl::Now() - cache->at >= replica_every) {
      absl::StatusOr<v1::ReplicaState> st = cluster->ReplicaState();
      if (st.ok()) {
        cache->state = *std::move(st);
        cache->at = absl::Now();
      } else {
        SNAPBACK_LOG(Warning, "metrics: replica state: %s", st.status().ToString());
      }
    }
    if (!cache->state.has_value()) return;
    const v1::ReplicaState& st = *cache->state;
    w.Begin("snapback_node_chunks",
            "Copies of committed chunks the location records place on the node.",
            MetricType::kGauge);
    for (const auto& n : st.nodes()) {
      w.Sample("snapback_node_chunks", node, {n.node_id()},
               static_cast<double>(n.chunks()));
    }
    w.Begin("snapback_node_held_bytes", "Raw bytes of those copies.", MetricType::kGauge);
    for (const auto& n : st.nodes()) {
      w.Sample("snapback_node_held_bytes", node, {n.node_id()},
               static_cast<double>(n.bytes()));
    }
    const struct {
      const char* name;
      const char* help;
      MetricType type;
      double value;
    } cluster_values[] = {
        {"snapback_cluster_chunks", "Chunks of committed checkpoints the cluster keeps.",
         MetricType::kGauge, static_cast<double>(st.chunks())},
        {"snapback_cluster_bytes", "Raw bytes of those chunks (one copy each).",
         MetricType::kGauge, static_cast<double>(st.bytes())},
        {"snapback_cluster_under_replicated_chunks",
         "Chunks with fewer live, verified copies than their replication.",
         MetricType::kGauge, static_cast<double>(st.under_replicated_chunks())},
        {"snapback_cluster_under_replicated_bytes",
         "Raw bytes of the under-replicated chunks: the repair backlog.",
         MetricType::kGauge, static_cast<double>(st.under_replicated_bytes())},
        {"snapback_cluster_lost_chunks",
         "Chunks with no live copy (data loss unless a node comes back).",
         MetricType::kGauge, static_cast<double>(st.lost_chunks())},
        {"snapback_cluster_repaired_chunks_total",
         "Copies repair made since the coordinator started.", MetricType::kCounter,
         static_cast<double>(st.repaired_chunks())},
        {"snapback_cluster_repaired_bytes_total",
         "Bytes repair moved since the coordinator started.", MetricType::kCounter,
         static_cast<double>(st.repaired_bytes())},
        {"snapback_cluster_repair_rate_bytes_per_second",
         "Measured repair rate (the configured pace before any repair).",
         MetricType::kGauge, st.repair_bytes_per_sec()},
        {"snapback_cluster_repair_eta_seconds",
         "Time left to repair the backlog at that rate (0: nothing to repair).",
         MetricType::kGauge, st.eta_seconds()},
        {"snapback_cluster_replica_state_timestamp_seconds",
         "When the replica figures above were computed (Unix time).", MetricType::kGauge,
         static_cast<double>(st.last_check_unix_ms()) / 1e3},
    };
    for (const auto& v : cluster_values) {
      w.Begin(v.name, v.help, v.type);
      w.Sample(v.name, {}, {}, v.value);
    }
  });
}

void AddChunkStoreCollectors(metrics::MetricsRegistry* registry,
                             storage::ChunkStore* store) {
  registry->AddCollector([store](ExpositionWriter& w) {
    const storage::ChunkStoreStats s = store->Stats();
    const struct {
      const char* name;
      const char* help;
      double value;
    } gauges[] = {
        {"snapback_storage_chunks", "Live chunks in this node's chunk store.",
         static_cast<double>(s.chunks)},
        {"snapback_storage_raw_bytes", "Raw (decoded) bytes of those chunks.",
         static_cast<double>(s.raw_bytes)},
        {"snapback_storage_encoded_bytes", "Encoded (stored) bytes of those chunks.",
         static_cast<double>(s.encoded_bytes)},
        {"snapback_storage_file_bytes", "Bytes of all segment files (with garbage).",
         static_cast<double>(s.file_bytes)},
        {"snapback_storage_capacity_bytes", "Size of the data volume.",
         static_cast<double>(s.capacity_bytes)},
        {"snapback_storage_free_bytes", "Free bytes on the data volume.",
         static_cast<double>(s.free_bytes)},
        {"snapback_storage_full",
         "1 at the high watermark: new chunks are refused until space returns.",
         s.full ? 1.0 : 0.0},
        {"snapback_storage_lost_chunks",
         "Chunks quarantined because their bytes failed verification (scrub or read), "
         "not yet restored from a replica.",
         static_cast<double>(s.lost_chunks)},
    };
    for (const auto& g : gauges) {
      w.Begin(g.name, g.help, MetricType::kGauge);
      w.Sample(g.name, {}, {}, g.value);
    }
  });
}

}  // namespace snapback::server
