// snapback-cluster-demo: step 5 of ./dev demo, a storage node taken away.
//
//   snapback-cluster-demo --endpoint C save   --job J --steps 3 --mib 16
//   snapback-cluster-demo --endpoint C state
//   snapback-cluster-demo --endpoint C repair --timeout 120s
//   snapback-cluster-demo --endpoint C verify --job J --steps 3 --mib 16
//
// `save` runs a 4-rank job (in-process checkpointers) against a cluster
// coordinator and saves --steps checkpoints of deterministic data; `state`
// prints the node map and the replica state; `repair` waits until no
// committed chunk is below its replication, printing progress; `verify`
// restores every step on every rank and compares it bit for bit with the
// regenerated data. Exit codes: 0 good, 1 failure or mismatch, 2 bad flags.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "common/hash.h"
#include "snapback/client.h"
#include "snapback/v1/cluster.grpc.pb.h"

ABSL_FLAG(std::string, endpoint, "127.0.0.1:7420", "the coordinator, HOST:PORT");
ABSL_FLAG(std::string, job, "cluster-demo", "job id");
ABSL_FLAG(int, steps, 3, "checkpoints to save / verify, 1..1000");
ABSL_FLAG(int, ranks, 4, "ranks of the job, 1..64");
ABSL_FLAG(uint64_t, mib, 16, "MiB per rank per checkpoint, 1..4096");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(120),
          "repair, wait-nodes: how long to wait");
ABSL_FLAG(int, nodes, 3, "wait-nodes: how many nodes must be UP and reconciled");

namespace {

constexpr char kProgram[] = "snapback-cluster-demo";
constexpr char kUsage[] =
    "usage: snapback-cluster-demo [--endpoint HOST:PORT] "
    "save|state|repair|verify|wait-nodes\n"
    "                             [--job J] [--steps N] [--ranks N] [--mib N] [--timeout "
    "D]\n"
    "\n"
    "Saves a job to a storage cluster, shows its replica state, waits for repair, and\n"
    "verifies every checkpoint bit for bit (step 5 of ./dev demo).";

int Fail(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", kProgram, what.c_str());
  return 1;
}

// Rank r's bytes at `step`: deterministic, different per step and rank.
std::string Data(int rank, int step, uint64_t bytes) {
  std::string out(bytes, '\0');
  uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(step * 131 + rank + 1);
  for (size_t i = 0; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&out[i], &x, 8);
  }
  return out;
}

std::vector<std::unique_ptr<snapback::Checkpointer>> Ranks(snapback::Client* client) {
  std::vector<std::unique_ptr<snapback::Checkpointer>> ranks;
  for (int r = 0; r < absl::GetFlag(FLAGS_ranks); ++r) {
    snapback::CheckpointerOptions o;
    o.job_id = absl::GetFlag(FLAGS_job);
    o.rank = r;
    o.world_size = absl::GetFlag(FLAGS_ranks);
    o.incarnation = 1;
    o.heartbeat_interval = absl::ZeroDuration();
    o.compress = false;
    o.staging_bytes = 4 * (absl::GetFlag(FLAGS_mib) << 20);
    auto ck = client->NewCheckpointer(o);
    if (!ck.ok()) {
      std::fprintf(stderr, "%s: rank %d: %s\n", kProgram, r,
                   ck.status().ToString().c_str());
      return {};
    }
    ranks.push_back(*std::move(ck));
  }
  return ranks;
}

absl::StatusOr<snapback::v1::ReplicaState> State(
    snapback::v1::ClusterService::Stub* stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  snapback::v1::ReplicaState st;
  grpc::Status s =
      stub->GetReplicaState(&ctx, snapback::v1::GetReplicaStateRequest(), &st);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return st;
}

void PrintState(snapback::v1::ClusterService::Stub* stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  snapback::v1::NodeMap map;
  if (stub->ListNodes(&ctx, snapback::v1::ListNodesRequest(), &map).ok()) {
    std::printf("   node map version %llu\n",
                static_cast<unsigned long long>(map.version()));
  }
  auto st = State(stub);
  if (!st.ok()) return;
  for (const auto& n : st->nodes()) {
    std::string domain;
    for (const auto& m : map.nodes()) {
      if (m.node_id() == n.node_id()) domain = m.failure_domain();
    }
    std::printf("   %-22s %-8s %-13s %6llu chunks %8.1f MB\n", n.node_id().c_str(),
                domain.c_str(), snapback::v1::NodeState_Name(n.state()).c_str(),
                static_cast<unsigned long long>(n.chunks()), n.bytes() / 1e6);
  }
  std::printf(
      "   committed chunks %llu (%.1f MB); under-replicated %llu (%.1f MB); no live copy "
      "%llu\n",
      static_cast<unsigned long long>(st->chunks()), st->bytes() / 1e6,
      static_cast<unsigned long long>(st->under_replicated_chunks()),
      st->under_replicated_bytes() / 1e6,
      static_cast<unsigned long long>(st->lost_chunks()));
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args =
      snapback::ParseCommandLineOrExit(argc, argv, kProgram, kUsage, __FILE__,
                                       /*allow_positional=*/true)
          .args;
  if (args.size() != 1)
    snapback::ExitBadFlag(kProgram, "name one command: save, state, repair or verify");
  const std::string cmd = args[0];
  const int steps = absl::GetFlag(FLAGS_steps);
  const uint64_t mib = absl::GetFlag(FLAGS_mib);
  if (steps < 1 || steps > 1000)
    snapback::ExitBadFlag(kProgram, "--steps must be 1..1000");
  if (mib < 1 || mib > 4096) snapback::ExitBadFlag(kProgram, "--mib must be 1..4096");
  const int ranks_n = absl::GetFlag(FLAGS_ranks);
  if (ranks_n < 1 || ranks_n > 64)
    snapback::ExitBadFlag(kProgram, "--ranks must be 1..64");
  const std::string endpoint = absl::GetFlag(FLAGS_endpoint);
  auto channel = grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials());
  auto stub = snapback::v1::ClusterService::NewStub(channel);

  if (cmd == "state") {
    PrintState(stub.get());
    return 0;
  }
  if (cmd == "wait-nodes") {
    const absl::Time end = absl::Now() + absl::GetFlag(FLAGS_timeout);
    for (;;) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      snapback::v1::NodeMap map;
      int up = 0;
      if (stub->ListNodes(&ctx, snapback::v1::ListNodesRequest(), &map).ok()) {
        for (const auto& n : map.nodes()) {
          up += n.state() == snapback::v1::NODE_UP && n.reconciled() ? 1 : 0;
        }
      }
      if (up >= absl::GetFlag(FLAGS_nodes)) {
        std::printf("   %d storage nodes UP (node map version %llu)\n", up,
                    static_cast<unsigned long long>(map.version()));
        return 0;
      }
      if (absl::Now() > end)
        return Fail("the storage nodes did not come up within --timeout");
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  if (cmd == "repair") {
    const absl::Time start = absl::Now();
    const absl::Time end = start + absl::GetFlag(FLAGS_timeout);
    // First the detection: a node stops heartbeating, SUSPECT, then DOWN.
    for (std::string down;; absl::SleepFor(absl::Milliseconds(50))) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      snapback::v1::NodeMap map;
      if (stub->ListNodes(&ctx, snapback::v1::ListNodesRequest(), &map).ok()) {
        for (const auto& n : map.nodes()) {
          if (n.state() == snapback::v1::NODE_DOWN) down = n.node_id();
        }
      }
      if (!down.empty()) {
        std::printf(
            "   %5.1f s  node %s is DOWN (no heartbeat for the grace period); map "
            "version %llu; repair starts\n",
            absl::ToDoubleSeconds(absl::Now() - start), down.c_str(),
            static_cast<unsigned long long>(map.version()));
        break;
      }
      if (absl::Now() > end) return Fail("no node went DOWN within --timeout");
    }
    double last_print = -1;
    for (;;) {
      auto st = State(stub.get());
      if (!st.ok()) return Fail(st.status().ToString());
      const double t = absl::ToDoubleSeconds(absl::Now() - start);
      if (st->under_replicated_chunks() == 0 && st->chunks() > 0) {
        std::printf(
            "   repaired: every committed chunk has its copies again after %.1f s "
            "(%llu copies, %.1f MB moved node to node)\n",
            t, static_cast<unsigned long long>(st->repaired_chunks()),
            st->repaired_bytes() / 1e6);
        PrintState(stub.get());
        return st->lost_chunks() == 0 ? 0 : Fail("chunks with no live copy remain");
      }
      if (t - last_print >= 0.5) {
        std::printf(
            "   %5.1f s  under-replicated %llu chunks (%.1f MB), repaired %llu, ETA %.1f "
            "s\n",
            t, static_cast<unsigned long long>(st->under_replicated_chunks()),
            st->under_replicated_bytes() / 1e6,
            static_cast<unsigned long long>(st->repaired_chunks()), st->eta_seconds());
        last_print = t;
      }
      if (absl::Now() > end) return Fail("repair did not finish within --timeout");
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  if (cmd != "save" && cmd != "verify") {
    snapback::ExitBadFlag(
        kProgram, "unknown command '" + cmd + "'; use save, state, repair or verify");
  }
  snapback::ClientOptions co;
  co.endpoint = endpoint;
  auto client = snapback::Client::Connect(co);
  if (!client.ok()) return Fail(client.status().ToString());
  auto ranks = Ranks(client->get());
  if (ranks.empty()) return 1;
  const uint64_t bytes = mib << 20;
  for (int step = 1; step <= steps; ++step) {
    if (cmd == "save") {
      std::vector<std::string> data;
      for (int r = 0; r < ranks_n; ++r) data.push_back(Data(r, step, bytes));
      const absl::Time start = absl::Now();
      std::vector<snapback::SaveHandle> handles;
      for (int r = 0; r < ranks_n; ++r) {
        snapback::TensorView t;
        t.name = "w";
        t.dtype = snapback::DType::kUInt8;
        t.shape = {static_cast<int64_t>(bytes)};
        t.data = data[r].data();
        auto h = ranks[r]->Save(step, {t});
        if (!h.ok()) return Fail(h.status().ToString());
        handles.push_back(*h);
      }
      for (auto& h : handles) {
        absl::Status s = h.Wait();
        if (!s.ok()) return Fail(s.ToString());
      }
      std::printf("   step %d committed: %d ranks x %llu MiB in %.2f s\n", step, ranks_n,
                  static_cast<unsigned long long>(mib),
                  absl::ToDoubleSeconds(absl::Now() - start));
    } else {
      const absl::Time start = absl::Now();
      for (int r = 0; r < ranks_n; ++r) {
        auto got = ranks[r]->Restore(step);
        if (!got.ok()) return Fail(got.status().ToString());
        if (got->tensors.size() != 1 || got->tensors[0].bytes != Data(r, step, bytes)) {
          return Fail(
              absl::StrCat("step ", step, " rank ", r, " restored different bytes"));
        }
      }
      std::printf(
          "   step %d: all %d ranks restored bit-exact (SHA-256 verified) in %.2f s\n",
          step, ranks_n, absl::ToDoubleSeconds(absl::Now() - start));
    }
  }
  for (auto& r : ranks) (void)r->Close();
  return 0;
}
