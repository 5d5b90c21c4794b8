// snapback-server: parses flags into ServerOptions and runs the Server until
// SIGTERM or SIGINT. Exit codes: 0 after a clean shutdown, 1 when the server
// cannot run, 2 for bad flags. Every failure is one line on stderr saying
// what to do.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <thread>
#include <tuple>

#include "absl/flags/flag.h"
#include "absl/flags/internal/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/malloc_tuning.h"
#include "failure-detector/exec_adapter.h"
#include "failure-detector/slurm_adapter.h"
#include "server/server.h"
#include "storage/file_system.h"

ABSL_FLAG(std::string, data_dir, "",
          "chunks (segments/, index/) and coordinator metadata (meta/) live here "
          "(required; created if missing)");
ABSL_FLAG(std::string, listen, "127.0.0.1:7420", "address to serve on (port 0 = any)");
ABSL_FLAG(std::string, role, "",
          "storage, coordinator, or empty for both in one process");
ABSL_FLAG(std::string, storage_endpoints, "",
          "coordinator role: the storage nodes, HOST:PORT,...");
ABSL_FLAG(std::string, coordinator, "",
          "storage role: join this coordinator's cluster (HOST:PORT): register, "
          "heartbeat, forward chunks to peers, copy chunks for repair");
ABSL_FLAG(std::string, advertise, "",
          "storage role: the HOST:PORT clients and peers reach this node at (default: "
          "the bound --listen address)");
ABSL_FLAG(std::string, failure_domain, "",
          "storage role: failure domain label (rack, host, zone); replicas go to "
          "distinct domains");
ABSL_FLAG(absl::Duration, node_heartbeat, absl::Seconds(1),
          "storage role with --coordinator: heartbeat interval");
ABSL_FLAG(absl::Duration, scrub_interval, absl::Hours(24),
          "storage role with --coordinator: re-read and verify every chunk this often "
          "(0 = only on demand)");
ABSL_FLAG(uint64_t, scrub_mb_per_sec, 64, "storage role: background scrub pace, MiB/s");
ABSL_FLAG(uint64_t, repair_mb_per_sec, 128,
          "storage role: MiB/s this node copies for repair; coordinator: MiB/s of "
          "repair asked of the whole cluster (x2)");
ABSL_FLAG(
    std::string, rebuild_from_tier, "",
    "coordinator of a cluster whose metadata was lost: rebuild the catalogue from "
    "these storage nodes (HOST:PORT,...) before serving; needs an empty --data-dir");
ABSL_FLAG(absl::Duration, node_suspect_after, absl::Seconds(3),
          "coordinator: a storage node silent this long is SUSPECT (no new chunks)");
ABSL_FLAG(absl::Duration, node_down_after, absl::Seconds(15),
          "coordinator: a storage node silent this long is DOWN (its copies are "
          "re-replicated)");
ABSL_FLAG(std::string, tls_cert, "",
          "serve TLS with this PEM certificate chain (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "the PEM key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "require client certificates signed by this CA (mTLS)");
ABSL_FLAG(std::string, storage_tls_ca, "",
          "coordinator role: talk TLS to the storage nodes, trusting this CA");
ABSL_FLAG(std::string, storage_tls_cert, "",
          "coordinator role: client certificate for storage nodes that require mTLS");
ABSL_FLAG(std::string, storage_tls_key, "", "the PEM key of --storage-tls-cert");
ABSL_FLAG(std::string, storage_tls_server_name, "",
          "name checked in the storage nodes' certificates instead of the endpoint host");
ABSL_FLAG(bool, allow_insecure_remote, false,
          "allow plaintext on a non-loopback address");
ABSL_FLAG(uint64_t, segment_mb, 256, "segment file size in MiB, 1..65536");
ABSL_FLAG(uint64_t, min_free_mb, 256,
          "refuse new chunks (RESOURCE_EXHAUSTED) when the data volume would have less "
          "than this many MiB free; deletes and compaction go on (0 = only at ENOSPC)");
ABSL_FLAG(uint64_t, reserve_mb, 64,
          "MiB held in DATA_DIR/space-reserve and released when the volume fills anyway, "
          "so deletes, compaction and metadata writes can proceed (0 = no reserve)");
ABSL_FLAG(std::string, io, "auto",
          "segment writes: auto (io_uring, else pwrite), io_uring, pwrite");
ABSL_FLAG(
    std::string, index_recovery, "strict",
    "strict: refuse to open a damaged index or metadata WAL; drop-torn-tail: drop an "
    "incomplete last WAL record, only after a power cut (docs/storage_format.md)");
ABSL_FLAG(absl::Duration, checkpoint_lease, absl::Minutes(30),
          "abort a WRITING checkpoint idle this long");
ABSL_FLAG(absl::Duration, gc_grace, absl::Minutes(10),
          "delete unreferenced chunks only after this long");
ABSL_FLAG(absl::Duration, gc_interval, absl::Minutes(5),
          "run retention + GC this often; 0 = only on request");
ABSL_FLAG(uint32_t, keep_last, 3,
          "retention for jobs registered without a policy (0 = keep all)");
ABSL_FLAG(double, fail_phi, 8,
          "failure detector: declare a rank whose heartbeats stopped failed at this "
          "phi-accrual suspicion, 1..1000");
ABSL_FLAG(
    double, hang_factor, 10,
    "a step that does not advance for X times the median step time is a hang, 1..1000");
ABSL_FLAG(absl::Duration, hang_floor, absl::Seconds(60),
          "... but a hang is never declared sooner than this");
ABSL_FLAG(absl::Duration, save_budget, absl::Minutes(10),
          "longest a rank may spend saving");
ABSL_FLAG(absl::Duration, restore_budget, absl::Minutes(10),
          "longest a rank may spend restoring");
ABSL_FLAG(
    int, max_restarts, 3,
    "restarts without a newly committed checkpoint before the detector gives up on a "
    "job, 0..1000");
ABSL_FLAG(
    bool, slurm, false,
    "restart jobs that run under Slurm (registered with SLURM_JOB_ID) with scontrol "
    "requeue; submit them with sbatch --requeue");
ABSL_FLAG(
    std::string, exec_restart_command, "",
    "the exec scheduler: shell command run to restart a job registered with scheduler "
    "\"exec\"; {job}, {scheduler_job_id}, {incarnation}, {world_size} and {reason} are "
    "replaced (shell-quoted)");
ABSL_FLAG(std::string, exec_cancel_command, "", "the exec scheduler: cancel command");
ABSL_FLAG(std::string, exec_status_command, "", "the exec scheduler: status command");
ABSL_FLAG(absl::Duration, sla_mttr, absl::Minutes(5),
          "SLA report target: p90 time from detection to the first new step");
ABSL_FLAG(absl::Duration, sla_lost_work, absl::Minutes(10),
          "SLA report target: p90 work lost per incident (fault - commit of the restored "
          "step)");
ABSL_FLAG(absl::Duration, sla_mttd, absl::Minutes(1),
          "SLA report target: p90 time from a fault to its detection");
ABSL_FLAG(double, sla_goodput, 0.95,
          "SLA report target: productive share of a job's wall time, 0..1");
ABSL_FLAG(std::string, ready_file, "", "write the bound port to this file once serving");
ABSL_FLAG(
    std::string, http_listen, "127.0.0.1:7421",
    "serve /metrics (Prometheus) and an index page over HTTP here (plaintext: "
    "loopback only without --allow-insecure-remote; \"\" = off); when not given and "
    "--listen's port is not 7420, any free port on 127.0.0.1 (see the listening line "
    "or --http-ready-file), so servers started side by side do not collide");
ABSL_FLAG(std::string, http_ready_file, "",
          "write the bound HTTP port to this file once serving");

namespace {

constexpr char kProgram[] = "snapback-server";
constexpr char kUsage[] =
    "usage: snapback-server --data-dir DIR [--listen HOST:PORT] [--role "
    "storage|coordinator]"
    " [flags]\n"
    "\n"
    "Runs the snapback coordinator (jobs, checkpoint metadata, failure detector) and/or "
    "a\n"
    "storage node until SIGTERM or SIGINT. Exit codes: 0 after a clean shutdown, 1 when "
    "the\n"
    "server cannot run, 2 for bad flags. Durations are written like 90s, 30m, 1h30m.";

[[noreturn]] void BadFlag(const std::string& message) {
  snapback::ExitBadFlag(kProgram, message);
}

[[noreturn]] void Fail(const std::string& message) {
  snapback::ExitFailure(kProgram, message);
}

absl::Duration DurationFlag(absl::string_view name,
                            const absl::Flag<absl::Duration>& flag, bool zero_ok) {
  return snapback::CheckDurationFlag(kProgram, name, absl::GetFlag(flag), zero_ok);
}

struct Flags {
  snapback::server::ServerOptions options;
  snapback::detector::ExecAdapterOptions exec;
  std::string io;
  std::string ready_file;
  std::string http_ready_file;
};

Flags ParseFlags(int argc, char** argv) {
  snapback::ParseCommandLineOrExit(argc, argv, kProgram, kUsage, __FILE__);
  Flags flags;
  snapback::server::ServerOptions& o = flags.options;
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.role = absl::GetFlag(FLAGS_role);
  if (!o.role.empty() && o.role != "storage" && o.role != "coordinator") {
    BadFlag(absl::StrCat("unknown --role '", o.role,
                         "'; use storage, coordinator, or omit it for both"));
  }
  const std::string endpoints = absl::GetFlag(FLAGS_storage_endpoints);
  o.storage_endpoints = absl::StrSplit(endpoints, ',', absl::SkipWhitespace());
  if (!endpoints.empty() && o.storage_endpoints.empty()) {
    BadFlag("--storage-endpoints needs at least one HOST:PORT");
  }
  o.storage_client.tls_root_ca_file = absl::GetFlag(FLAGS_storage_tls_ca);
  o.storage_client.tls_client_cert_file = absl::GetFlag(FLAGS_storage_tls_cert);
  o.storage_client.tls_client_key_file = absl::GetFlag(FLAGS_storage_tls_key);
  o.storage_client.tls_server_name = absl::GetFlag(FLAGS_storage_tls_server_name);
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  o.allow_insecure_remote = absl::GetFlag(FLAGS_allow_insecure_remote);
  o.coordinator.checkpoint_lease =
      DurationFlag("checkpoint-lease", FLAGS_checkpoint_lease, false);
  o.coordinator.gc_grace = DurationFlag("gc-grace", FLAGS_gc_grace, true);
  o.gc_interval = DurationFlag("gc-interval", FLAGS_gc_interval, true);
  o.coordinator.default_keep_last = absl::GetFlag(FLAGS_keep_last);
  const uint64_t mb = absl::GetFlag(FLAGS_segment_mb);
  if (mb < 1 || mb > (64u << 10)) {
    BadFlag(absl::StrCat("--segment-mb '", mb, "' must be a size in MiB, 1..65536"));
  }
  o.store.segment_bytes = mb << 20;
  for (auto [name, flag, target] :
       {std::tuple{"min-free-mb", &FLAGS_min_free_mb, &o.store.min_free_bytes},
        std::tuple{"reserve-mb", &FLAGS_reserve_mb, &o.store.reserve_bytes}}) {
    const uint64_t v = absl::GetFlag(*flag);
    if (v > (1u << 30)) {
      BadFlag(
          absl::StrCat("--", name, " '", v, "' must be a size in MiB, 0..", 1u << 30));
    }
    *target = v << 20;
  }
  flags.io = absl::GetFlag(FLAGS_io);
  if (flags.io != "auto" && flags.io != "io_uring" && flags.io != "pwrite") {
    BadFlag(absl::StrCat("--io '", flags.io, "' must be auto, io_uring or pwrite"));
  }
  // One flag for both databases: the operator decides after a power cut, and
  // the same cut hit both.
  const std::string recovery = absl::GetFlag(FLAGS_index_recovery);
  if (recovery == "strict") {
    o.store.index_recovery = snapback::storage::IndexRecovery::kStrict;
  } else if (recovery == "drop-torn-tail") {
    o.store.index_recovery = snapback::storage::IndexRecovery::kDropTornTail;
  } else {
    BadFlag(absl::StrCat("--index-recovery '", recovery,
                         "' must be strict or drop-torn-tail"));
  }
  for (auto [name, flag, target] :
       {std::tuple{"fail-phi", &FLAGS_fail_phi, &o.detector.monitor.fail_phi},
        std::tuple{"hang-factor", &FLAGS_hang_factor, &o.detector.monitor.hang_factor}}) {
    const double x = absl::GetFlag(*flag);
    if (!(x >= 1 && x <= 1000)) {
      BadFlag(absl::StrCat("--", name, " '", x, "' must be a number in 1..1000"));
    }
    *target = x;
  }
  o.detector.monitor.suspect_phi =
      std::min(o.detector.monitor.suspect_phi, o.detector.monitor.fail_phi);
  o.detector.monitor.hang_floor = DurationFlag("hang-floor", FLAGS_hang_floor, false);
  o.detector.monitor.save_budget = DurationFlag("save-budget", FLAGS_save_budget, false);
  o.detector.monitor.restore_budget =
      DurationFlag("restore-budget", FLAGS_restore_budget, false);
  const int max_restarts = absl::GetFlag(FLAGS_max_restarts);
  if (max_restarts < 0 || max_restarts > 1000) {
    BadFlag(
        absl::StrCat("--max-restarts '", max_restarts, "' must be a count in 0..1000"));
  }
  o.detector.monitor.max_restarts_without_progress = max_restarts;
  flags.exec.restart_command = absl::GetFlag(FLAGS_exec_restart_command);
  flags.exec.cancel_command = absl::GetFlag(FLAGS_exec_cancel_command);
  flags.exec.status_command = absl::GetFlag(FLAGS_exec_status_command);
  flags.ready_file = absl::GetFlag(FLAGS_ready_file);
  o.sla_targets.set_mttr_seconds(
      absl::ToDoubleSeconds(DurationFlag("sla-mttr", FLAGS_sla_mttr, false)));
  o.sla_targets.set_lost_work_seconds(
      absl::ToDoubleSeconds(DurationFlag("sla-lost-work", FLAGS_sla_lost_work, false)));
  o.sla_targets.set_mttd_seconds(
      absl::ToDoubleSeconds(DurationFlag("sla-mttd", FLAGS_sla_mttd, false)));
  const double goodput = absl::GetFlag(FLAGS_sla_goodput);
  if (!(goodput >= 0 && goodput <= 1)) {
    BadFlag(
        absl::StrCat("--sla-goodput '", goodput, "' must be a ratio in 0..1, e.g. 0.95"));
  }
  o.sla_targets.set_goodput(goodput);
  flags.http_ready_file = absl::GetFlag(FLAGS_http_ready_file);
  o.http_listen = absl::GetFlag(FLAGS_http_listen);
  // Abseil of Debian 12 has no public "was this flag given" (the
  // CommandLineFlag method is private there); this is what it forwards to.
  if (!absl::flags_internal::WasPresentOnCommandLine("http_listen") &&
      !absl::EndsWith(o.listen, ":7420")) {
    o.http_listen = "127.0.0.1:0";
  }
  if (!flags.http_ready_file.empty() && o.http_listen.empty()) {
    BadFlag("--http-ready-file needs an HTTP server; drop --http-listen=\"\"");
  }

  if (o.data_dir.empty()) {
    BadFlag(
        "--data-dir is required: the directory where this server keeps chunks and/or "
        "checkpoint metadata");
  }
  const std::string rebuild = absl::GetFlag(FLAGS_rebuild_from_tier);
  o.rebuild_from_tier = absl::StrSplit(rebuild, ',', absl::SkipWhitespace());
  if (!rebuild.empty() && o.role != "coordinator") {
    BadFlag("--rebuild-from-tier is only for --role=coordinator");
  }
  o.node.coordinator = absl::GetFlag(FLAGS_coordinator);
  o.node.advertise = absl::GetFlag(FLAGS_advertise);
  o.node.failure_domain = absl::GetFlag(FLAGS_failure_domain);
  o.node.heartbeat_interval = DurationFlag("node-heartbeat", FLAGS_node_heartbeat, false);
  o.node.scrub_interval = DurationFlag("scrub-interval", FLAGS_scrub_interval, true);
  o.node.scrub_bytes_per_sec = absl::GetFlag(FLAGS_scrub_mb_per_sec) << 20;
  o.node_repair_bytes_per_sec = absl::GetFlag(FLAGS_repair_mb_per_sec) << 20;
  o.cluster.repair_bytes_per_sec = 2 * o.node_repair_bytes_per_sec;
  o.cluster.suspect_after =
      DurationFlag("node-suspect-after", FLAGS_node_suspect_after, false);
  o.cluster.down_after = DurationFlag("node-down-after", FLAGS_node_down_after, false);
  if (o.cluster.down_after < o.cluster.suspect_after) {
    BadFlag("--node-down-after must be at least --node-suspect-after");
  }
  if (o.role != "storage" && !o.node.coordinator.empty()) {
    BadFlag("--coordinator is only for --role=storage");
  }
  if (o.role != "coordinator" && !o.storage_endpoints.empty()) {
    BadFlag("--storage-endpoints is only for --role=coordinator");
  }
  o.coordinator.recovery = o.store.index_recovery;
  if (absl::GetFlag(FLAGS_slurm)) {
    o.scheduler_adapters.push_back(std::make_shared<snapback::detector::SlurmAdapter>());
  }
  if (!flags.exec.restart_command.empty() || !flags.exec.cancel_command.empty() ||
      !flags.exec.status_command.empty()) {
    o.scheduler_adapters.push_back(
        std::make_shared<snapback::detector::ExecAdapter>(flags.exec));
  }
  return flags;
}

// Written to a temporary name and renamed, so a script polling for the file
// never reads a partial port.
bool WriteReadyFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return false;
  const bool ok = std::fprintf(f, "%d\n", port) > 0;
  if (std::fclose(f) != 0 || !ok) return false;
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  snapback::TuneMallocForLargeBuffers();  // chunk-sized buffers stay in the heap
  // Block the shutdown signals before any thread exists (gRPC starts some),
  // so every thread inherits the mask and only sigwait() below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Flags flags = ParseFlags(argc, argv);

  snapback::storage::PosixFileSystemOptions fs_options;
  if (flags.io == "io_uring") {
    fs_options.engine = snapback::storage::IoEngine::kIoUring;
  } else if (flags.io == "pwrite") {
    fs_options.engine = snapback::storage::IoEngine::kPwrite;
  }
  auto fs = snapback::storage::NewPosixFileSystem(fs_options);
  if (!fs.ok()) {
    Fail(absl::StrCat("--io ", flags.io, ": ", fs.status().message(),
                      "; use --io=auto to fall back to pwrite"));
  }
  flags.options.store.fs = *fs;

  auto server = snapback::server::Server::Start(flags.options);
  if (!server.ok()) Fail(std::string(server.status().message()));

  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    SNAPBACK_LOG(Info, "%s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    (*server)->Shutdown(absl::Seconds(10));
  });

  // The ready file first, then the "listening" line: a supervisor that sees
  // the line (or the file) can rely on both.
  bool ready_ok = true;
  std::string bad_file;
  if (!flags.ready_file.empty() && !WriteReadyFile(flags.ready_file, (*server)->port())) {
    bad_file = "--ready-file " + flags.ready_file;
  } else if (!flags.http_ready_file.empty() &&
             !WriteReadyFile(flags.http_ready_file, (*server)->http_port())) {
    bad_file = "--http-ready-file " + flags.http_ready_file;
  }
  if (!bad_file.empty()) {
    ready_ok = false;
    SNAPBACK_LOG(Error, "cannot write %s: %s", bad_file, std::strerror(errno));
    // Wake the signal thread so the process shuts down the same way.
    kill(getpid(), SIGTERM);
  } else {
    const std::string& role = (*server)->role();
    const std::string where =
        role == "coordinator"
            ? (flags.options.storage_endpoints.empty()
                   ? std::string("storage cluster (nodes register)")
                   : absl::StrCat("storage ",
                                  absl::StrJoin(flags.options.storage_endpoints, ",")))
            : absl::StrCat(
                  "io ", (*server)->io_mode(),
                  (*server)->node_agent() != nullptr
                      ? absl::StrCat(", node ", (*server)->node_agent()->node_id(),
                                     " of ", flags.options.node.coordinator)
                      : "");
    const std::string http = (*server)->http_port() != 0
                                 ? absl::StrCat("http://", (*server)->http_address())
                                 : std::string("no http");
    std::printf("snapback-server listening on %s (role %s, data %s, %s, %s)\n",
                (*server)->address().c_str(),
                role.empty() ? "storage+coordinator" : role.c_str(),
                flags.options.data_dir.c_str(), where.c_str(), http.c_str());
    std::fflush(stdout);
  }

  (*server)->Wait();
  signal_thread.join();
  server->reset();
  return ready_ok ? 0 : 1;
}
