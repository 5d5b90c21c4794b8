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

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/malloc_tuning.h"
#include "failure-detector/exec_adapter.h"
#include "failure-detector/slurm_adapter.h"
#include "server/server.h"
#include "storage/file_system.h"

namespace {

constexpr char kUsage[] =
    "usage: snapback-server --data-dir DIR [--listen HOST:PORT]\n"
    "         [--role storage|coordinator [--storage-endpoints HOST:PORT,...]]\n"
    "         [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]\n"
    "         [--storage-tls-ca FILE [--storage-tls-cert FILE --storage-tls-key FILE]\n"
    "          [--storage-tls-server-name NAME]]\n"
    "         [--allow-insecure-remote] [--segment-mb N] [--io auto|io_uring|pwrite]\n"
    "         [--index-recovery strict|drop-torn-tail] [--checkpoint-lease DURATION]\n"
    "         [--gc-grace DURATION] [--gc-interval DURATION] [--keep-last N]\n"
    "         [--hang-factor X] [--hang-floor D] [--fail-phi X] [--save-budget D]\n"
    "         [--restore-budget D] [--max-restarts N] [--slurm]\n"
    "         [--exec-restart-command CMD] [--exec-cancel-command CMD]\n"
    "         [--exec-status-command CMD] [--ready-file PATH]\n"
    "\n"
    "  --data-dir DIR         chunks (segments/, index/) and coordinator metadata\n"
    "                         (meta/) live here (required; created if missing)\n"
    "  --listen HOST:PORT     address to serve on (default 127.0.0.1:7420; port 0 = "
    "any)\n"
    "  --role ROLE            storage, coordinator, or omitted for both in one process\n"
    "  --storage-endpoints L  coordinator role: the storage nodes, HOST:PORT,...\n"
    "  --tls-cert/--tls-key   serve TLS with this PEM certificate chain and key\n"
    "  --tls-client-ca FILE   require client certificates signed by this CA (mTLS)\n"
    "  --storage-tls-ca FILE  coordinator role: talk TLS to the storage nodes, trusting\n"
    "                         this CA; --storage-tls-cert/--storage-tls-key add a\n"
    "                         client certificate (mTLS); --storage-tls-server-name\n"
    "                         overrides the name checked in their certificates\n"
    "  --allow-insecure-remote  allow plaintext on a non-loopback address\n"
    "  --segment-mb N         segment file size in MiB (default 256)\n"
    "  --io MODE              segment writes: auto (io_uring, else pwrite), io_uring, "
    "pwrite\n"
    "  --index-recovery MODE  strict (default): refuse to open a damaged index or\n"
    "                         metadata WAL; drop-torn-tail: drop an incomplete last\n"
    "                         WAL record, only after a power cut "
    "(docs/storage_format.md)\n"
    "  --checkpoint-lease D   abort a WRITING checkpoint idle this long (default 30m)\n"
    "  --gc-grace D           delete unreferenced chunks only after this long (default "
    "10m)\n"
    "  --gc-interval D        run retention + GC this often; 0 = only on request "
    "(default 5m)\n"
    "  --keep-last N          retention for jobs registered without a policy (default "
    "3)\n"
    "  --fail-phi X           failure detector: declare a rank whose heartbeats stopped\n"
    "                         failed at this phi-accrual suspicion (default 8)\n"
    "  --hang-factor X        a step that does not advance for X times the median\n"
    "                         step time is a hang (default 10) ...\n"
    "  --hang-floor D         ... but never less than D (default 60s)\n"
    "  --save-budget D        longest a rank may spend saving (default 10m)\n"
    "  --restore-budget D     longest a rank may spend restoring (default 10m)\n"
    "  --max-restarts N       restarts without a newly committed checkpoint before the\n"
    "                         detector gives up on a job (default 3)\n"
    "  --slurm                restart jobs that run under Slurm (registered with\n"
    "                         SLURM_JOB_ID) with scontrol requeue; submit them with\n"
    "                         sbatch --requeue (scontrol/scancel from PATH, SLURM_CONF\n"
    "                         from the environment)\n"
    "  --exec-restart-command CMD  the exec scheduler: shell commands run for jobs\n"
    "  --exec-cancel-command CMD   registered with scheduler \"exec\"; {job},\n"
    "  --exec-status-command CMD   {scheduler_job_id}, {incarnation}, {world_size} and\n"
    "                              {reason} are replaced (shell-quoted)\n"
    "  --ready-file PATH      write the bound port to PATH once serving\n"
    "\n"
    "Durations are like 90s, 30m, 1h30m.\n";

[[noreturn]] void BadFlag(const std::string& message) {
  std::fprintf(stderr, "snapback-server: %s (see --help)\n", message.c_str());
  std::exit(2);
}

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "snapback-server: %s\n", message.c_str());
  std::exit(1);
}

absl::Duration ParseDurationFlag(const std::string& name, const std::string& value,
                                 bool zero_ok) {
  absl::Duration d;
  if (!absl::ParseDuration(value, &d) || d < absl::ZeroDuration() ||
      (!zero_ok && d == absl::ZeroDuration()) || d == absl::InfiniteDuration()) {
    BadFlag(absl::StrCat("--", name, " '", value, "' must be a ",
                         zero_ok ? "" : "positive ", "duration such as 90s, 30m or 1h"));
  }
  return d;
}

struct Flags {
  snapback::server::ServerOptions options;
  bool slurm = false;
  snapback::detector::ExecAdapterOptions exec;
  std::string io = "auto";
  std::string ready_file;
};

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  flags.options.listen = "127.0.0.1:7420";
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg.substr(0, 2) != "--") {
      BadFlag(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name(arg.substr(2));
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "slurm") {
      flags.slurm = true;
      continue;
    }
    if (name == "allow-insecure-remote") {
      if (has_value && value != "true" && value != "false") {
        BadFlag("--allow-insecure-remote takes no value (or =true/=false)");
      }
      flags.options.allow_insecure_remote = !has_value || value == "true";
      continue;
    }
    static constexpr const char* kValueFlags[] = {"data-dir",
                                                  "listen",
                                                  "role",
                                                  "storage-endpoints",
                                                  "tls-cert",
                                                  "tls-key",
                                                  "tls-client-ca",
                                                  "storage-tls-ca",
                                                  "storage-tls-cert",
                                                  "storage-tls-key",
                                                  "storage-tls-server-name",
                                                  "segment-mb",
                                                  "io",
                                                  "index-recovery",
                                                  "checkpoint-lease",
                                                  "gc-grace",
                                                  "gc-interval",
                                                  "keep-last",
                                                  "fail-phi",
                                                  "hang-factor",
                                                  "hang-floor",
                                                  "save-budget",
                                                  "restore-budget",
                                                  "max-restarts",
                                                  "exec-restart-command",
                                                  "exec-cancel-command",
                                                  "exec-status-command",
                                                  "ready-file"};
    if (std::find(std::begin(kValueFlags), std::end(kValueFlags), name) ==
        std::end(kValueFlags)) {
      BadFlag(absl::StrCat("unknown flag --", name));
    }
    if (!has_value) {
      if (i + 1 >= argc) BadFlag(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    if (name == "data-dir") {
      flags.options.data_dir = value;
    } else if (name == "listen") {
      flags.options.listen = value;
    } else if (name == "role") {
      if (!value.empty() && value != "storage" && value != "coordinator") {
        BadFlag(absl::StrCat("unknown --role '", value,
                             "'; use storage, coordinator, or omit it for both"));
      }
      flags.options.role = value;
    } else if (name == "storage-endpoints") {
      flags.options.storage_endpoints =
          absl::StrSplit(value, ',', absl::SkipWhitespace());
      if (flags.options.storage_endpoints.empty()) {
        BadFlag("--storage-endpoints needs at least one HOST:PORT");
      }
    } else if (name == "storage-tls-ca") {
      flags.options.storage_client.tls_root_ca_file = value;
    } else if (name == "storage-tls-cert") {
      flags.options.storage_client.tls_client_cert_file = value;
    } else if (name == "storage-tls-key") {
      flags.options.storage_client.tls_client_key_file = value;
    } else if (name == "storage-tls-server-name") {
      flags.options.storage_client.tls_server_name = value;
    } else if (name == "checkpoint-lease") {
      flags.options.coordinator.checkpoint_lease = ParseDurationFlag(name, value, false);
    } else if (name == "gc-grace") {
      flags.options.coordinator.gc_grace = ParseDurationFlag(name, value, true);
    } else if (name == "gc-interval") {
      flags.options.gc_interval = ParseDurationFlag(name, value, true);
    } else if (name == "keep-last") {
      uint32_t n = 0;
      if (!absl::SimpleAtoi(value, &n)) {
        BadFlag(absl::StrCat("--keep-last '", value,
                             "' must be a count of checkpoints (0 = keep all)"));
      }
      flags.options.coordinator.default_keep_last = n;
    } else if (name == "tls-cert") {
      flags.options.tls_cert_file = value;
    } else if (name == "tls-key") {
      flags.options.tls_key_file = value;
    } else if (name == "tls-client-ca") {
      flags.options.tls_client_ca_file = value;
    } else if (name == "segment-mb") {
      uint64_t mb = 0;
      if (!absl::SimpleAtoi(value, &mb) || mb < 1 || mb > (64u << 10)) {
        BadFlag(
            absl::StrCat("--segment-mb '", value, "' must be a size in MiB, 1..65536"));
      }
      flags.options.store.segment_bytes = mb << 20;
    } else if (name == "io") {
      if (value != "auto" && value != "io_uring" && value != "pwrite") {
        BadFlag(absl::StrCat("--io '", value, "' must be auto, io_uring or pwrite"));
      }
      flags.io = value;
    } else if (name == "index-recovery") {
      // One flag for both databases: the operator decides after a power
      // cut, and the same cut hit both.
      if (value == "strict") {
        flags.options.store.index_recovery = snapback::storage::IndexRecovery::kStrict;
      } else if (value == "drop-torn-tail") {
        flags.options.store.index_recovery =
            snapback::storage::IndexRecovery::kDropTornTail;
      } else {
        BadFlag(absl::StrCat("--index-recovery '", value,
                             "' must be strict or drop-torn-tail"));
      }
    } else if (name == "fail-phi" || name == "hang-factor") {
      double x = 0;
      if (!absl::SimpleAtod(value, &x) || !(x >= 1 && x <= 1000)) {
        BadFlag(absl::StrCat("--", name, " '", value, "' must be a number in 1..1000"));
      }
      (name == "fail-phi" ? flags.options.detector.monitor.fail_phi
                          : flags.options.detector.monitor.hang_factor) = x;
      if (name == "fail-phi") {
        flags.options.detector.monitor.suspect_phi =
            std::min(flags.options.detector.monitor.suspect_phi, x);
      }
    } else if (name == "hang-floor") {
      flags.options.detector.monitor.hang_floor = ParseDurationFlag(name, value, false);
    } else if (name == "save-budget") {
      flags.options.detector.monitor.save_budget = ParseDurationFlag(name, value, false);
    } else if (name == "restore-budget") {
      flags.options.detector.monitor.restore_budget =
          ParseDurationFlag(name, value, false);
    } else if (name == "max-restarts") {
      int n = 0;
      if (!absl::SimpleAtoi(value, &n) || n < 0 || n > 1000) {
        BadFlag(absl::StrCat("--max-restarts '", value, "' must be a count in 0..1000"));
      }
      flags.options.detector.monitor.max_restarts_without_progress = n;
    } else if (name == "exec-restart-command") {
      flags.exec.restart_command = value;
    } else if (name == "exec-cancel-command") {
      flags.exec.cancel_command = value;
    } else if (name == "exec-status-command") {
      flags.exec.status_command = value;
    } else if (name == "ready-file") {
      flags.ready_file = value;
    } else {
      BadFlag(absl::StrCat("unknown flag --", name));
    }
  }
  if (flags.options.data_dir.empty()) {
    BadFlag(
        "--data-dir is required: the directory where this server keeps chunks and/or "
        "checkpoint metadata");
  }
  if (flags.options.role == "coordinator" && flags.options.storage_endpoints.empty()) {
    BadFlag("--role=coordinator needs --storage-endpoints HOST:PORT[,...]");
  }
  if (flags.options.role != "coordinator" && !flags.options.storage_endpoints.empty()) {
    BadFlag("--storage-endpoints is only for --role=coordinator");
  }
  flags.options.coordinator.recovery = flags.options.store.index_recovery;
  if (flags.slurm) {
    flags.options.scheduler_adapters.push_back(
        std::make_shared<snapback::detector::SlurmAdapter>());
  }
  if (!flags.exec.restart_command.empty() || !flags.exec.cancel_command.empty() ||
      !flags.exec.status_command.empty()) {
    flags.options.scheduler_adapters.push_back(
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
    std::fprintf(stderr, "snapback-server: %s, shutting down\n",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT");
    (*server)->Shutdown(absl::Seconds(10));
  });

  // The ready file first, then the "listening" line: a supervisor that sees
  // the line (or the file) can rely on both.
  bool ready_ok = true;
  if (!flags.ready_file.empty() && !WriteReadyFile(flags.ready_file, (*server)->port())) {
    ready_ok = false;
    std::fprintf(stderr, "snapback-server: cannot write --ready-file %s: %s\n",
                 flags.ready_file.c_str(), std::strerror(errno));
    // Wake the signal thread so the process shuts down the same way.
    kill(getpid(), SIGTERM);
  } else {
    const std::string& role = (*server)->role();
    const std::string where =
        role == "coordinator"
            ? absl::StrCat("storage ",
                           absl::StrJoin(flags.options.storage_endpoints, ","))
            : absl::StrCat("io ", (*server)->io_mode());
    std::printf("snapback-server listening on %s (role %s, data %s, %s)\n",
                (*server)->address().c_str(),
                role.empty() ? "storage+coordinator" : role.c_str(),
                flags.options.data_dir.c_str(), where.c_str());
    std::fflush(stdout);
  }

  (*server)->Wait();
  signal_thread.join();
  server->reset();
  return ready_ok ? 0 : 1;
}
