// The distributed storage tier on this machine: a coordinator and 1, 2 or 4
// `snapback-server --role storage` processes on loopback
// (testing/storage_cluster.h), a job of --ranks in-process checkpointers
// saving through the public client, each figure beside a baseline from the
// same run:
//   1. aggregate save throughput (Save() on every rank -> every handle done)
//      at R=1 and R=2            vs  raw O_DIRECT write + fdatasync of the bytes
//   2. TCP payload bytes per logical byte: sent by the training process
//      (target 1.0 at R=2: the first replica forwards), received and sent by
//      the nodes (~R and ~R-1), stored by the nodes (Stat, ~R)
//   3. CPU-seconds per GB saved, per process (client, coordinator, nodes)
//   4. repair after losing 1 of 3 nodes (R=2, data dir deleted): DOWN ->
//      nothing under-replicated  vs  a raw copy (read + write + fdatasync) of
//      the bytes repair had to copy
//   5. restore of every rank with one replica's node killed (before and after
//      it is DOWN)             vs  all nodes up, and a raw O_DIRECT read
//
// Every save writes different bytes: rank r of save g is a window of one
// random pool starting at r * bytes_per_rank + 8 * g, so no chunk repeats
// (content addressing would dedup it) and no pool is rebuilt between saves.
// Network bytes and CPU come from the kernel: bench/proc_usage.h.
//
//   cluster_bench [--dir DIR] [--nodes 1,2,4] [--ranks 4] [--save-mib 256]
//                 [--saves 5] [--restores 3] [--repair-mib 512 (2048: 2 GiB)]
//                 [--parts throughput,repair,restore]
//
// The servers are taken from $SNAPBACK_BIN_DIR, else from ../bin beside this
// binary.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/proc_usage.h"
#include "bench/raw_io.h"
#include "common/flags.h"
#include "common/malloc_tuning.h"
#include "rpc/storage_client.h"
#include "snapback/client.h"
#include "testing/storage_cluster.h"
#include "testing/test_util.h"

ABSL_FLAG(std::string, dir, "",
          "scratch directory for the nodes' data and the raw baselines (default: a "
          "temporary one here, i.e. the same filesystem as the build)");
ABSL_FLAG(std::string, nodes, "1,2,4", "storage node counts of the throughput runs");
ABSL_FLAG(int32_t, ranks, 4, "ranks of the job (checkpointers in this process)");
ABSL_FLAG(uint64_t, save_mib, 256, "MiB per save, all ranks together");
ABSL_FLAG(int32_t, saves, 5, "measured saves per configuration (after one warm-up)");
ABSL_FLAG(uint64_t, chunk_kib, 4096, "chunk size in KiB (64..65536)");
ABSL_FLAG(uint64_t, repair_mib, 512,
          "MiB of checkpoint data saved (R=2) before a node is lost; repair copies "
          "what the lost node held (~2/3 of it with 3 nodes); 2048 for 2 GiB");
ABSL_FLAG(uint64_t, repair_mb_per_sec, 100000,
          "--repair-mb-per-sec of the coordinator and the nodes in the repair run "
          "(high = unpaced: the time is the machine's, not the pacer's)");
ABSL_FLAG(int32_t, restores, 3, "timed restores per restore scenario (median)");
ABSL_FLAG(absl::Duration, restore_down_after, absl::Seconds(6),
          "--node-down-after of the restore run: how long a killed node stays UP or "
          "SUSPECT in the map (the restores 'before DOWN' must fit in it)");
ABSL_FLAG(std::string, parts, "throughput,repair,restore",
          "which measurements to run (comma-separated)");

namespace snapback {
namespace {

using testing::StorageCluster;
using testing::StorageClusterOptions;

constexpr char kUsage[] =
    "usage: cluster_bench [--dir DIR] [--nodes 1,2,4] [--ranks 4] [--save-mib 256]\n"
    "                     [--saves 5] [--restores 3] [--repair-mib 512]\n"
    "                     [--parts throughput,repair,restore]\n"
    "\n"
    "The storage cluster (coordinator + N storage node processes on loopback): save\n"
    "throughput at R=1 and R=2, bytes on the wire and CPU per byte, repair time after\n"
    "a node loss and restore with a replica down, each beside a raw-disk baseline\n"
    "measured in the same run.";

constexpr char kProgram[] = "cluster_bench";

// The cluster of the measurement in progress, and the scratch directory
// this run made: Die() stops the one and removes the other, so no server
// outlives a failed run.
std::unique_ptr<StorageCluster> live_cluster;
std::string own_scratch_dir;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", kProgram, what.c_str());
  live_cluster.reset();
  if (!own_scratch_dir.empty()) std::filesystem::remove_all(own_scratch_dir);
  std::exit(1);
}
[[noreturn]] void Die(const absl::Status& s, const std::string& what) {
  Die(absl::StrCat(what, ": ", s.ToString()));
}

struct Flags {
  std::string dir;
  std::vector<int> nodes;
  int ranks = 4;
  uint64_t save_bytes = 0;
  int saves = 5;
  uint64_t chunk_bytes = 0;
  uint64_t repair_bytes = 0;
  uint64_t repair_mb_per_sec = 0;
  int restores = 3;
  absl::Duration restore_down_after;
  std::set<std::string> parts;
  uint64_t per_rank() const { return save_bytes / ranks; }
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// ---- Processes ---------------------------------------------------------------

bench::UsageSample Take(const std::vector<pid_t>& pids) {
  absl::StatusOr<bench::UsageSample> s = bench::SampleUsage(pids);
  if (!s.ok()) Die(s.status(), "reading /proc and sock_diag");
  return *std::move(s);
}

// The processes of a cluster run: this one (the training job's client), the
// coordinator and the running nodes.
struct Pids {
  pid_t client = getpid();
  pid_t coordinator = -1;
  std::vector<pid_t> nodes;
  std::vector<pid_t> All() const {
    std::vector<pid_t> v = {client, coordinator};
    v.insert(v.end(), nodes.begin(), nodes.end());
    return v;
  }
};

Pids PidsOf(const StorageCluster& cluster) {
  Pids p;
  p.coordinator = cluster.coordinator_pid();
  for (int i = 0; i < cluster.size(); ++i) {
    if (cluster.node_running(i)) p.nodes.push_back(cluster.node_pid(i));
  }
  return p;
}

// Sum over the running nodes of what their stores hold (Stat raw_bytes).
uint64_t StoredBytes(StorageCluster& cluster) {
  uint64_t total = 0;
  for (int i = 0; i < cluster.size(); ++i) {
    if (!cluster.node_running(i)) continue;
    internal_client::StorageClientOptions o;
    o.deadline = absl::Seconds(10);
    auto client = internal_client::StorageClient::Connect(cluster.node_address(i), o);
    if (!client.ok()) Die(client.status(), "connect to a node for Stat");
    auto stat = (*client)->Stat();
    if (!stat.ok()) Die(stat.status(), "Stat");
    total += stat->raw_bytes();
  }
  return total;
}

// ---- The job ----------------------------------------------------------------

// Random bytes the ranks' tensors are windows of (see the file comment).
class Pool {
 public:
  explicit Pool(const Flags& f)
      : per_rank_(f.per_rank()),
        max_saves_(std::min<uint64_t>(f.chunk_bytes / 8, 1 << 17)),
        bytes_(testing::MakeBytes(f.save_bytes + 8 * max_saves_, 20261203)) {}
  const char* Window(int rank, uint64_t save) const {
    if (save >= max_saves_) Die("more saves than the pool has distinct windows");
    return bytes_.data() + rank * per_rank_ + 8 * save;
  }
  const char* data() const { return bytes_.data(); }

 private:
  const uint64_t per_rank_;
  const uint64_t max_saves_;
  const std::string bytes_;
};

struct SaveResult {
  double seconds = 0;
  uint64_t logical = 0;
  uint64_t sent = 0;
  uint64_t present = 0;  // chunks the tier already had (should be 0)
};

class Job {
 public:
  // Registers `id` with `replication` copies and no retention limit, then
  // makes one checkpointer per rank.
  Job(StorageCluster& cluster, const std::string& id, int replication, const Flags& f,
      const Pool& pool, uint64_t* save_counter)
      : flags_(f), pool_(pool), save_counter_(save_counter) {
    v1::RegisterJobRequest req;
    req.set_job_id(id);
    req.set_world_size(f.ranks);
    req.set_replication(replication);
    req.mutable_retention()->set_keep_last(0);  // keep every checkpoint
    v1::RegisterJobResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    grpc::Status s = cluster.coordinator_stub()->RegisterJob(&ctx, req, &resp);
    if (!s.ok()) Die(absl::StrCat("RegisterJob ", id, ": ", s.error_message()));
    ClientOptions co;
    co.endpoint = cluster.coordinator();
    auto client = Client::Connect(co);
    if (!client.ok()) Die(client.status(), "connect");
    client_ = *std::move(client);
    for (int r = 0; r < f.ranks; ++r) {
      CheckpointerOptions o;
      o.job_id = id;
      o.rank = r;
      o.world_size = f.ranks;
      o.incarnation = 1;
      o.heartbeat_interval = absl::ZeroDuration();  // no failure detector here
      o.chunk_bytes = f.chunk_bytes;
      o.compress = false;
      // Room for a whole save in staging (Save() blocks only for the copy).
      o.staging_bytes = 2 * f.per_rank() + (64 << 20);
      auto ck = client_->NewCheckpointer(o);
      if (!ck.ok()) Die(ck.status(), "checkpointer");
      ranks_.push_back(*std::move(ck));
    }
  }
  ~Job() {
    for (auto& ck : ranks_) (void)ck->Close();
  }

  // Save `step` on every rank (each from its own thread, as separate rank
  // processes would); the time runs from the first Save() call to the last
  // handle done.
  SaveResult Save(int64_t step) {
    const uint64_t g = (*save_counter_)++;
    windows_[step] = g;
    std::vector<TensorView> views(flags_.ranks);
    for (int r = 0; r < flags_.ranks; ++r) {
      views[r].name = "w";
      views[r].dtype = DType::kUInt8;
      views[r].shape = {static_cast<int64_t>(flags_.per_rank())};
      views[r].data = pool_.Window(r, g);
    }
    std::vector<absl::StatusOr<SaveHandle>> handles(flags_.ranks, SaveHandle());
    const absl::Time t0 = absl::Now();
    {
      std::vector<std::thread> threads;
      for (int r = 0; r < flags_.ranks; ++r) {
        threads.emplace_back([&, r] { handles[r] = ranks_[r]->Save(step, {views[r]}); });
      }
      for (auto& t : threads) t.join();
    }
    SaveResult out;
    for (auto& h : handles) {
      if (!h.ok()) Die(h.status(), absl::StrCat("save step ", step));
      if (absl::Status s = h->Wait(); !s.ok()) Die(s, absl::StrCat("save step ", step));
    }
    out.seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    for (auto& h : handles) {
      const SaveStats st = h->stats();
      out.logical += st.logical_bytes;
      out.sent += st.sent_bytes;
      out.present += st.chunks_present;
    }
    return out;
  }

  // RestoreInto of `step` on every rank in parallel (into memory allocated
  // and touched once); seconds. Checks every byte against what was saved.
  double Restore(int64_t step) {
    if (targets_.empty()) {
      for (int r = 0; r < flags_.ranks; ++r)
        targets_.emplace_back(flags_.per_rank(), '\1');
    }
    std::vector<absl::Status> status(flags_.ranks);
    const absl::Time t0 = absl::Now();
    {
      std::vector<std::thread> threads;
      for (int r = 0; r < flags_.ranks; ++r) {
        threads.emplace_back([&, r] {
          MutableTensorView t{.name = "w",
                              .dtype = DType::kUInt8,
                              .shape = {static_cast<int64_t>(flags_.per_rank())},
                              .data = targets_[r].data()};
          status[r] = ranks_[r]->RestoreInto({t}, step).status();
        });
      }
      for (auto& t : threads) t.join();
    }
    const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    for (int r = 0; r < flags_.ranks; ++r) {
      if (!status[r].ok()) Die(status[r], absl::StrCat("restore rank ", r));
      if (std::memcmp(targets_[r].data(), pool_.Window(r, windows_.at(step)),
                      flags_.per_rank()) != 0) {
        Die(absl::StrCat("rank ", r, " restored different bytes for step ", step));
      }
      std::memset(targets_[r].data(), 0, flags_.per_rank());
    }
    return seconds;
  }

 private:
  const Flags& flags_;
  const Pool& pool_;
  uint64_t* save_counter_;
  std::unique_ptr<Client> client_;
  std::vector<std::unique_ptr<Checkpointer>> ranks_;
  std::map<int64_t, uint64_t> windows_;  // step -> pool window
  std::vector<std::string> targets_;
};

// Stops the previous cluster and starts one under `root` (emptied first);
// it lives until StopCluster() or the next StartCluster().
StorageCluster* StartCluster(const std::string& root, StorageClusterOptions o) {
  live_cluster.reset();
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root);
  live_cluster = std::make_unique<StorageCluster>(root, std::move(o));
  if (!live_cluster->Start()) Die("the storage cluster did not start (see above)");
  return live_cluster.get();
}
void StopCluster() { live_cluster.reset(); }

std::optional<v1::NodeState> StateOf(StorageCluster& cluster, const std::string& id) {
  absl::StatusOr<v1::NodeMap> map = cluster.Map();
  if (!map.ok()) return std::nullopt;
  for (const v1::NodeInfo& n : map->nodes()) {
    if (n.node_id() == id) return n.state();
  }
  return std::nullopt;
}

std::string StateName(std::optional<v1::NodeState> s) {
  return s.has_value() ? v1::NodeState_Name(*s) : "?";
}

// Polls every `period` until `cond`; false after `deadline`.
bool Poll(const std::function<bool()>& cond, absl::Duration deadline,
          absl::Duration period = absl::Milliseconds(10)) {
  const absl::Time end = absl::Now() + deadline;
  for (;;) {
    if (cond()) return true;
    if (absl::Now() >= end) return false;
    absl::SleepFor(period);
  }
}

// ---- 1-3: throughput, bytes on the wire, CPU --------------------------------

struct ThroughputRow {
  int nodes = 0;
  int replication = 0;
  double mb_per_s = 0;  // median over the measured saves
  double mb_per_s_min = 0, mb_per_s_max = 0;
  double seconds = 0;  // wall time of the measured saves
  double logical = 0;  // bytes over the measured saves
  bench::Usage client, coordinator, nodes_total;
  double node_cpu_max = 0;
  double other_cpu = 0;  // the rest of the machine (other processes, softirq)
  uint64_t stored = 0;
  uint64_t present = 0;
  int closed = 0;
};

std::vector<ThroughputRow> RunThroughput(const Flags& f, const Pool& pool,
                                         uint64_t* counter) {
  std::vector<ThroughputRow> rows;
  for (int n : f.nodes) {
    StorageClusterOptions o;
    o.nodes = n;
    auto cluster = StartCluster(absl::StrCat(f.dir, "/tp", n), o);
    for (int r : {1, 2}) {
      if (r > n) continue;
      std::fprintf(stderr, "throughput: %d node(s), R=%d ...\n", n, r);
      Job job(*cluster, absl::StrCat("tp-", n, "-r", r), r, f, pool, counter);
      int64_t step = 1;
      job.Save(step++);  // warm-up: staging pools, connections
      const Pids pids = PidsOf(*cluster);
      const uint64_t stored_before = StoredBytes(*cluster);
      const bench::UsageSample before = Take(pids.All());
      std::vector<double> rates;
      ThroughputRow row;
      row.nodes = n;
      row.replication = r;
      for (int i = 0; i < f.saves; ++i) {
        SaveResult s = job.Save(step++);
        rates.push_back(s.logical / 1e6 / s.seconds);
        row.seconds += s.seconds;
        row.logical += s.logical;
        row.present += s.present;
      }
      const bench::UsageSample after = Take(pids.All());
      row.stored = StoredBytes(*cluster) - stored_before;
      row.mb_per_s = Median(rates);
      row.mb_per_s_min = *std::min_element(rates.begin(), rates.end());
      row.mb_per_s_max = *std::max_element(rates.begin(), rates.end());
      row.client = bench::UsageBetween(before, after, pids.client);
      row.coordinator = bench::UsageBetween(before, after, pids.coordinator);
      for (pid_t p : pids.nodes) {
        const bench::Usage u = bench::UsageBetween(before, after, p);
        row.nodes_total += u;
        row.node_cpu_max = std::max(row.node_cpu_max, u.cpu_seconds);
      }
      row.closed = row.client.closed_sockets + row.coordinator.closed_sockets +
                   row.nodes_total.closed_sockets;
      row.other_cpu = after.machine_busy_seconds - before.machine_busy_seconds -
                      row.client.cpu_seconds - row.coordinator.cpu_seconds -
                      row.nodes_total.cpu_seconds;
      rows.push_back(row);
    }
  }
  StopCluster();
  return rows;
}

void PrintThroughput(const Flags& f, const std::vector<ThroughputRow>& rows,
                     double raw_write_s) {
  const double raw_mb_s = f.save_bytes / 1e6 / raw_write_s;
  const double base = rows.empty() ? 1 : rows[0].mb_per_s;
  std::printf(
      "\n== 1. save throughput: %d ranks x %llu MiB = %llu MiB per save, new random "
      "bytes every save, compress=false, %llu KiB chunks; median of %d saves ==\n",
      f.ranks, static_cast<unsigned long long>(f.per_rank() >> 20),
      static_cast<unsigned long long>(f.save_bytes >> 20),
      static_cast<unsigned long long>(f.chunk_bytes >> 10), f.saves);
  std::printf(
      "baseline: raw O_DIRECT write + fdatasync of the same %llu MiB: %.0f MB/s\n",
      static_cast<unsigned long long>(f.save_bytes >> 20), raw_mb_s);
  std::printf("%5s %2s %10s %11s %10s %14s %14s %13s\n", "nodes", "R", "save MB/s",
              "(min-max)", "x raw wr", "disk MB/s (xR)", "disk x raw wr", "x 1 node R=1");
  for (const ThroughputRow& r : rows) {
    const std::string range =
        absl::StrFormat("%.0f-%.0f", r.mb_per_s_min, r.mb_per_s_max);
    std::printf("%5d %2d %10.0f %11s %9.2fx %14.0f %13.2fx %12.2fx\n", r.nodes,
                r.replication, r.mb_per_s, range.c_str(), r.mb_per_s / raw_mb_s,
                r.mb_per_s * r.replication, r.mb_per_s * r.replication / raw_mb_s,
                r.mb_per_s / base);
  }

  std::printf(
      "\n== 2. TCP payload per logical byte saved (kernel tcp_info, per process) ==\n");
  std::printf("%5s %2s %12s %14s %14s %14s %12s\n", "nodes", "R", "client sent",
              "client recv", "nodes recv", "nodes sent", "nodes stored");
  for (const ThroughputRow& r : rows) {
    const double l = r.logical;
    std::printf("%5d %2d %12.4f %14.4f %14.3f %14.3f %12.3f\n", r.nodes, r.replication,
                r.client.sent / l, r.client.received / l, r.nodes_total.received / l,
                r.nodes_total.sent / l, r.stored / l);
  }
  std::printf(
      "(targets: client sent 1.0 at every R, the first replica forwards; nodes recv and "
      "stored ~R; nodes sent ~R-1)\n");

  std::printf("\n== 3. CPU-seconds per GB saved (1 GB = 1e9 logical bytes) ==\n");
  std::printf("%5s %2s %10s %12s %12s %12s %10s %11s %16s\n", "nodes", "R", "client",
              "coordinator", "nodes (sum)", "busiest node", "total", "cores busy",
              "rest of machine");
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  for (const ThroughputRow& r : rows) {
    const double gb = r.logical / 1e9;
    const double total =
        r.client.cpu_seconds + r.coordinator.cpu_seconds + r.nodes_total.cpu_seconds;
    std::printf("%5d %2d %10.2f %12.3f %12.2f %12.2f %10.2f %6.2f of %ld %10.2f cores\n",
                r.nodes, r.replication, r.client.cpu_seconds / gb,
                r.coordinator.cpu_seconds / gb, r.nodes_total.cpu_seconds / gb,
                r.node_cpu_max / gb, total / gb, total / r.seconds, cores,
                std::max(0.0, r.other_cpu) / r.seconds);
  }
  for (const ThroughputRow& r : rows) {
    if (r.present > 0) {
      std::printf("note: %d nodes R=%d: %llu chunks were already on the tier (dedup)\n",
                  r.nodes, r.replication, static_cast<unsigned long long>(r.present));
    }
    if (r.closed > 0) {
      std::printf(
          "note: %d nodes R=%d: %d sockets closed during the run (bytes missed)\n",
          r.nodes, r.replication, r.closed);
    }
  }
}

// ---- 4: repair ---------------------------------------------------------------

// Copies `bytes` from one O_DIRECT file to another, 4 MiB at a time, then
// fdatasyncs: the disk work of one node reading a replica while another
// writes it (the source file is written and synced before the clock starts).
double RawCopy(const std::string& dir, uint64_t bytes) {
  auto fs = storage::DefaultFileSystem();
  constexpr uint64_t kBlock = 4 << 20;
  const uint64_t total = storage::AlignUp(bytes, kBlock);
  storage::AlignedBuffer buf(kBlock);
  const std::string src = dir + "/copy-src.bin", dst = dir + "/copy-dst.bin";
  {
    auto f = fs->Open(src, {.write = true, .create = true, .direct_io = true});
    if (!f.ok()) Die(f.status(), "open copy source");
    for (uint64_t off = 0; off < total; off += kBlock) {
      std::memset(buf.data(), static_cast<int>(off / kBlock), kBlock);
      if (absl::Status s = (*f)->WriteAt(off, {buf.data(), kBlock}); !s.ok())
        Die(s, "write copy source");
    }
    if (absl::Status s = (*f)->Sync(); !s.ok()) Die(s, "sync copy source");
  }
  auto in = fs->Open(src, {.direct_io = true});
  auto out = fs->Open(dst, {.write = true, .create = true, .direct_io = true});
  if (!in.ok()) Die(in.status(), "open copy source");
  if (!out.ok()) Die(out.status(), "open copy target");
  const absl::Time t0 = absl::Now();
  for (uint64_t off = 0; off < total; off += kBlock) {
    if (absl::Status s = (*in)->ReadAt(off, {buf.data(), kBlock}); !s.ok())
      Die(s, "raw copy read");
    if (absl::Status s = (*out)->WriteAt(off, {buf.data(), kBlock}); !s.ok())
      Die(s, "raw copy write");
  }
  if (absl::Status s = (*out)->Sync(); !s.ok()) Die(s, "raw copy sync");
  const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  in->reset();
  out->reset();
  std::filesystem::remove(src);
  std::filesystem::remove(dst);
  return seconds;
}

struct RepairResult {
  uint64_t saved = 0;
  uint64_t to_copy = 0;  // under-replicated bytes when the node went DOWN
  uint64_t chunks = 0;
  uint64_t repaired = 0;  // bytes repair reported moving
  double kill_to_down = 0;
  double down_to_done = 0;
  double raw_copy = 0;
  double cpu_coordinator = 0, cpu_nodes = 0;
  double cpu_bench = 0;  // this process (polling the replica state)
  double cpu_rest = 0;   // the rest of the machine
  uint64_t nodes_received = 0;
};

RepairResult RunRepair(const Flags& f, const Pool& pool, uint64_t* counter) {
  std::fprintf(stderr, "repair: 3 nodes, R=2, %llu MiB ...\n",
               static_cast<unsigned long long>(f.repair_bytes >> 20));
  StorageClusterOptions o;
  o.nodes = 3;
  o.repair_mb_per_sec = f.repair_mb_per_sec;
  auto cluster = StartCluster(f.dir + "/repair", o);
  RepairResult out;
  {
    Job job(*cluster, "repair", 2, f, pool, counter);
    for (int64_t step = 1; out.saved < f.repair_bytes; ++step)
      out.saved += job.Save(step).logical;
  }
  auto healthy = [&] {
    auto st = cluster->ReplicaState();
    return st.ok() && st->chunks() > 0 && st->under_replicated_bytes() == 0;
  };
  if (!Poll(healthy, absl::Seconds(60))) Die("the saved data never had 2 copies");
  auto st0 = cluster->ReplicaState();
  if (!st0.ok()) Die(st0.status(), "ReplicaState");

  const std::string lost = cluster->node_id(0);
  Pids pids = PidsOf(*cluster);
  pids.nodes.erase(pids.nodes.begin());  // the survivors
  const absl::Time killed = absl::Now();
  cluster->SignalNode(0, SIGKILL);
  std::filesystem::remove_all(cluster->node_dir(0));
  if (!Poll([&] { return StateOf(*cluster, lost) == v1::NODE_DOWN; }, absl::Seconds(60)))
    Die("the killed node never went DOWN");
  const absl::Time down = absl::Now();
  const bench::UsageSample before = Take(pids.All());
  auto st1 = cluster->ReplicaState();
  if (!st1.ok()) Die(st1.status(), "ReplicaState");
  out.to_copy = st1->under_replicated_bytes();
  out.chunks = st1->under_replicated_chunks();
  if (!Poll(healthy, absl::Minutes(30), absl::Milliseconds(20)))
    Die("repair did not finish in 30 minutes");
  const absl::Time done = absl::Now();
  const bench::UsageSample after = Take(pids.All());
  auto st2 = cluster->ReplicaState();
  if (!st2.ok()) Die(st2.status(), "ReplicaState");
  if (st2->lost_chunks() > 0) Die("repair left chunks with no copy");
  out.repaired = st2->repaired_bytes() - st0->repaired_bytes();
  out.kill_to_down = absl::ToDoubleSeconds(down - killed);
  out.down_to_done = absl::ToDoubleSeconds(done - down);
  out.cpu_coordinator = bench::UsageBetween(before, after, pids.coordinator).cpu_seconds;
  for (pid_t p : pids.nodes) {
    const bench::Usage u = bench::UsageBetween(before, after, p);
    out.cpu_nodes += u.cpu_seconds;
    out.nodes_received += u.received;
  }
  out.cpu_bench = bench::UsageBetween(before, after, pids.client).cpu_seconds;
  out.cpu_rest = after.machine_busy_seconds - before.machine_busy_seconds -
                 out.cpu_coordinator - out.cpu_nodes - out.cpu_bench;
  StopCluster();
  std::filesystem::remove_all(f.dir + "/repair");
  out.raw_copy = RawCopy(f.dir, std::max(out.to_copy, out.repaired));
  return out;
}

void PrintRepair(const Flags& f, const RepairResult& r) {
  const double mb = r.to_copy / 1e6;
  std::printf(
      "\n== 4. repair after losing 1 of 3 nodes (R=2, %.0f MB saved, node SIGKILLed and "
      "its data dir deleted; --repair-mb-per-sec=%llu on the coordinator and the nodes, "
      "i.e. unpaced) ==\n",
      r.saved / 1e6, static_cast<unsigned long long>(f.repair_mb_per_sec));
  std::printf("under-replicated at DOWN          %10.1f MB (%llu chunks)\n", mb,
              static_cast<unsigned long long>(r.chunks));
  std::printf("repair moved                      %10.1f MB\n", r.repaired / 1e6);
  std::printf("SIGKILL -> DOWN                   %10.2f s  (--node-down-after 2s)\n",
              r.kill_to_down);
  std::printf("DOWN -> under_replicated_bytes 0  %10.2f s  %8.0f MB/s\n", r.down_to_done,
              mb / r.down_to_done);
  std::printf(
      "raw copy of the same bytes        %10.2f s  %8.0f MB/s  (O_DIRECT read + "
      "write + fdatasync, 4 MiB blocks)\n",
      r.raw_copy, std::max(r.to_copy, r.repaired) / 1e6 / r.raw_copy);
  std::printf("repair time / raw copy time       %10.2fx\n", r.down_to_done / r.raw_copy);
  const double repaired = static_cast<double>(std::max<uint64_t>(r.repaired, 1));
  std::printf(
      "CPU during repair: coordinator %.2f s, survivors %.2f s = %.2f CPU-s per GB "
      "repaired; survivors received %.2f bytes per byte repaired\n",
      r.cpu_coordinator, r.cpu_nodes,
      (r.cpu_coordinator + r.cpu_nodes) / (repaired / 1e9), r.nodes_received / repaired);
  std::printf(
      "meanwhile: this process (polling) %.2f cores, the rest of the machine %.2f "
      "cores\n",
      r.cpu_bench / r.down_to_done, std::max(0.0, r.cpu_rest) / r.down_to_done);
}

// ---- 5: restore with a replica down -------------------------------------------

struct RestoreRow {
  std::string what;
  double seconds = 0;
  std::string states;  // the killed node's state at start -> end
};

std::vector<RestoreRow> RunRestore(const Flags& f, const Pool& pool, uint64_t* counter) {
  std::fprintf(stderr, "restore: 3 nodes, R=2 ...\n");
  StorageClusterOptions o;
  o.nodes = 3;
  o.down_after = f.restore_down_after;
  // Repair held back, so that the restores after DOWN do not compete with it.
  o.repair_mb_per_sec = 1;
  auto cluster = StartCluster(f.dir + "/restore", o);
  std::vector<RestoreRow> rows;
  {
    Job job(*cluster, "restore", 2, f, pool, counter);
    job.Save(1);
    (void)job.Restore(1);  // warm-up: connections, allocations
    auto timed = [&](const std::string& what, const std::string& victim) {
      std::vector<double> t;
      const auto start = victim.empty() ? std::nullopt : StateOf(*cluster, victim);
      for (int i = 0; i < f.restores; ++i) t.push_back(job.Restore(1));
      const auto end = victim.empty() ? std::nullopt : StateOf(*cluster, victim);
      RestoreRow row{what, Median(t), ""};
      if (!victim.empty()) row.states = StateName(start) + " -> " + StateName(end);
      rows.push_back(row);
    };
    timed("all 3 nodes up", "");
    const std::string victim = cluster->node_id(0);
    cluster->SignalNode(0, SIGKILL);
    timed("node 0 SIGKILLed, not yet DOWN", victim);
    if (StateOf(*cluster, victim) == v1::NODE_DOWN) {
      std::printf(
          "note: node 0 went DOWN during the 'not yet DOWN' restores; raise "
          "--restore-down-after\n");
    }
    if (!Poll([&] { return StateOf(*cluster, victim) == v1::NODE_DOWN; },
              f.restore_down_after + absl::Seconds(30))) {
      Die("the killed node never went DOWN");
    }
    timed("node 0 DOWN", victim);
  }
  StopCluster();
  std::filesystem::remove_all(f.dir + "/restore");
  return rows;
}

void PrintRestore(const Flags& f, const std::vector<RestoreRow>& rows,
                  double raw_read_s) {
  const double mb = f.save_bytes / 1e6;
  std::printf(
      "\n== 5. restore of every rank (%d ranks in parallel, RestoreInto, SHA-256 "
      "verified, "
      "%.0f MB), 3 nodes, R=2; median of %d; repair paced to 1 MB/s ==\n",
      f.ranks, mb, f.restores);
  std::printf(
      "baseline: raw O_DIRECT read of the same bytes (4 threads): %.2f s, %.0f MB/s\n",
      raw_read_s, mb / raw_read_s);
  std::printf("%-32s %9s %9s %10s %11s  %s\n", "", "seconds", "MB/s", "x all up",
              "x raw read", "node 0 state (start -> end)");
  for (const RestoreRow& r : rows) {
    std::printf("%-32s %9.2f %9.0f %9.2fx %10.2fx  %s\n", r.what.c_str(), r.seconds,
                mb / r.seconds, r.seconds / rows[0].seconds, r.seconds / raw_read_s,
                r.states.c_str());
  }
}

// ---- main -----------------------------------------------------------------------

void PrintMachine(const Flags& f, const std::string& load_before) {
  std::printf("== machine ==\n%s", bench::MachineDescription().c_str());
  std::printf(
      "scratch dir %s (%s); the client, the coordinator and the nodes share these "
      "cores and one disk\n",
      f.dir.c_str(), storage::DefaultFileSystem()->IoMode().c_str());
  std::printf(
      "load average before the run: %s; \"rest of machine\" below: CPU charged to none "
      "of the benchmark's processes (other processes, kernel threads, softirqs) while "
      "it measured; well above ~0.1 core, others skewed the figures\n",
      load_before.c_str());
}

Flags ParseFlags(int argc, char** argv) {
  ParseCommandLineOrExit(argc, argv, kProgram, kUsage, __FILE__);
  Flags f;
  f.dir = absl::GetFlag(FLAGS_dir);
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_nodes), ',')) {
    int n;
    if (!absl::SimpleAtoi(s, &n) || n < 1 || n > 16)
      ExitBadFlag(kProgram, "--nodes takes node counts 1..16, e.g. 1,2,4");
    f.nodes.push_back(n);
  }
  f.ranks = absl::GetFlag(FLAGS_ranks);
  if (f.ranks < 1 || f.ranks > 64) ExitBadFlag(kProgram, "--ranks must be 1..64");
  f.chunk_bytes = absl::GetFlag(FLAGS_chunk_kib) << 10;
  if (f.chunk_bytes < (64 << 10) || f.chunk_bytes > (64ull << 20))
    ExitBadFlag(kProgram, "--chunk-kib must be 64..65536");
  f.save_bytes = absl::GetFlag(FLAGS_save_mib) << 20;
  if (f.save_bytes == 0 || f.save_bytes % (f.ranks * f.chunk_bytes) != 0)
    ExitBadFlag(kProgram, "--save-mib must be a multiple of ranks x chunk size");
  f.saves = absl::GetFlag(FLAGS_saves);
  if (f.saves < 1) ExitBadFlag(kProgram, "--saves must be at least 1");
  f.repair_bytes = absl::GetFlag(FLAGS_repair_mib) << 20;
  if (f.repair_bytes == 0) ExitBadFlag(kProgram, "--repair-mib must be positive");
  f.repair_mb_per_sec = absl::GetFlag(FLAGS_repair_mb_per_sec);
  f.restores = absl::GetFlag(FLAGS_restores);
  if (f.restores < 1) ExitBadFlag(kProgram, "--restores must be at least 1");
  f.restore_down_after = CheckDurationFlag(
      kProgram, "restore-down-after", absl::GetFlag(FLAGS_restore_down_after), false);
  for (absl::string_view p : absl::StrSplit(absl::GetFlag(FLAGS_parts), ',')) {
    if (p != "throughput" && p != "repair" && p != "restore")
      ExitBadFlag(kProgram, "--parts takes throughput, repair and/or restore");
    f.parts.insert(std::string(p));
  }
  return f;
}

int Main(int argc, char** argv) {
  TuneMallocForLargeBuffers();
  Flags f = ParseFlags(argc, argv);
  // The servers live in ../bin beside this binary (build/<preset>/bench).
  if (std::getenv("SNAPBACK_BIN_DIR") == nullptr) {
    std::error_code ec;
    const std::filesystem::path self =
        std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) setenv("SNAPBACK_BIN_DIR", (self.parent_path() / "../bin").c_str(), 1);
  }
  const std::string server = testing::Subprocess::BinPath("snapback-server");
  if (access(server.c_str(), X_OK) != 0)
    Die(absl::StrCat(server, " not found (set SNAPBACK_BIN_DIR)"));
  const bool own = f.dir.empty();
  if (own) {
    std::string tmpl = std::filesystem::current_path().string() + "/.bench-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr)
      Die("cannot create a scratch dir here; pass --dir");
    f.dir = tmpl;
    own_scratch_dir = tmpl;
  }
  std::fprintf(stderr, "preparing %llu MiB of random bytes ...\n",
               static_cast<unsigned long long>(f.save_bytes >> 20));
  const std::string load_before = bench::LoadAverage();
  const Pool pool(f);
  uint64_t saves = 0;  // pool windows used so far, across every job

  auto fs = storage::DefaultFileSystem();
  const auto [raw_write_s, raw_read_s] = storage::RawWriteReadBytes(
      fs.get(), f.dir, pool.data(), f.save_bytes, f.chunk_bytes, 16, 4);

  std::vector<ThroughputRow> throughput;
  std::optional<RepairResult> repair;
  std::vector<RestoreRow> restore;
  if (f.parts.count("throughput")) throughput = RunThroughput(f, pool, &saves);
  if (f.parts.count("restore")) restore = RunRestore(f, pool, &saves);
  if (f.parts.count("repair")) repair = RunRepair(f, pool, &saves);

  PrintMachine(f, load_before);
  if (!throughput.empty()) PrintThroughput(f, throughput, raw_write_s);
  if (repair.has_value()) PrintRepair(f, *repair);
  if (!restore.empty()) PrintRestore(f, restore, raw_read_s);
  std::fflush(stdout);
  if (own) std::filesystem::remove_all(f.dir);
  return 0;
}

}  // namespace
}  // namespace snapback

int main(int argc, char** argv) { return snapback::Main(argc, argv); }
