// snapback-launch: the local scheduler. Flags to LauncherOptions; the launch
// itself is launcher/launcher.h (Launcher::Run), which says how the session
// with the coordinator goes.
//
//   snapback-launch --job J --nproc N [--endpoint HOST:PORT] -- CMD [ARGS...]
//
// Rank exit codes (docs/failure_detection.md): 0 done; 78 do not restart
// (the detector gives up and cancels the job); 75 or any other code, or a
// signal: restart.
//
// Launcher exit codes: 0 every rank finished; 1 the job was cancelled (the
// detector gave up: the reason is printed); 2 bad usage (or the coordinator
// refused the job); 69 the coordinator could not be reached at start; 128+N
// stopped by signal N (SIGINT, SIGTERM).
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "launcher/launcher.h"

ABSL_FLAG(std::string, job, "", "job id, [A-Za-z0-9._-]{1,128} (required)");
ABSL_FLAG(int, nproc, 0,
          "ranks to run on this machine, the world size, 1..4096 (required)");
ABSL_FLAG(std::string, endpoint, "",
          "the coordinator, HOST:PORT (empty: $SNAPBACK_ENDPOINT, else 127.0.0.1:7420)");
ABSL_FLAG(absl::Duration, stop_grace, absl::Seconds(3),
          "SIGTERM to SIGKILL when stopping ranks");
ABSL_FLAG(int, heartbeat_ms, 0,
          "the ranks' heartbeat interval in ms, at least 10 (sets SNAPBACK_HEARTBEAT_MS; "
          "0: the client's, 1000)");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(30),
          "give up (exit 69) when the coordinator cannot be reached at start");
ABSL_FLAG(bool, quiet, false, "no progress lines, only errors and the incident summary");
ABSL_FLAG(std::string, tls_ca, "",
          "talk TLS to the coordinator, trusting this PEM CA; the ranks get it as "
          "SNAPBACK_TLS_CA (empty: $SNAPBACK_TLS_CA, else plaintext)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM client certificate for a coordinator that requires mTLS (with --tls-key; "
          "the launcher's only, the ranks do not get it)");
ABSL_FLAG(std::string, tls_key, "", "the PEM key of --tls-cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "name checked in the coordinator's certificate (empty: the endpoint's host)");

namespace {

constexpr char kProgram[] = "snapback-launch";
constexpr char kUsage[] =
    "usage: snapback-launch --job JOB --nproc N [--endpoint HOST:PORT] [flags] -- CMD "
    "[ARGS...]\n"
    "  e.g. snapback-launch --job my-run --nproc 4 -- ./train --lr 3e-4\n"
    "\n"
    "The local scheduler: runs N ranks of CMD on this machine under the coordinator's\n"
    "failure detector, and restarts them all as a new incarnation when the detector\n"
    "orders it. Ranks get SNAPBACK_JOB, SNAPBACK_RANK, SNAPBACK_WORLD_SIZE,\n"
    "SNAPBACK_INCARNATION and SNAPBACK_ENDPOINT. Rank exit codes: 0 done, 78 do not\n"
    "restart, anything else (or a signal) restart. Exit: 0 job finished, 1 job\n"
    "cancelled, 2 usage, 69 coordinator unreachable, 128+N stopped by signal N.";

absl::Duration NonNegative(const char* name, absl::Duration d) {
  if (d < absl::ZeroDuration()) {
    snapback::ExitBadFlag(kProgram,
                          absl::StrCat("--", name, " '", absl::FormatDuration(d),
                                       "' must be a duration such as 3s"));
  }
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  const snapback::CommandLine line =
      snapback::ParseCommandLineOrExit(argc, argv, kProgram, kUsage, __FILE__);
  snapback::launcher::LauncherOptions o;
  o.job_id = absl::GetFlag(FLAGS_job);
  o.nproc = absl::GetFlag(FLAGS_nproc);
  o.argv = line.args;
  o.endpoint = absl::GetFlag(FLAGS_endpoint);
  o.channel.tls_root_ca_file = absl::GetFlag(FLAGS_tls_ca);
  o.channel.tls_client_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.channel.tls_client_key_file = absl::GetFlag(FLAGS_tls_key);
  o.channel.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  o.stop_grace = NonNegative("stop-grace", absl::GetFlag(FLAGS_stop_grace));
  o.connect_timeout =
      NonNegative("connect-timeout", absl::GetFlag(FLAGS_connect_timeout));
  o.heartbeat_ms = absl::GetFlag(FLAGS_heartbeat_ms);
  o.quiet = absl::GetFlag(FLAGS_quiet);
  if (o.nproc != 0 && (o.nproc < 1 || o.nproc > 4096)) {
    snapback::ExitBadFlag(
        kProgram, absl::StrCat("--nproc '", o.nproc, "' must be a count in 1..4096"));
  }
  if (o.heartbeat_ms != 0 && o.heartbeat_ms < 10) {
    snapback::ExitBadFlag(kProgram, absl::StrCat("--heartbeat-ms '", o.heartbeat_ms,
                                                 "' must be at least 10"));
  }
  if (o.job_id.empty()) snapback::ExitBadFlag(kProgram, "--job is required");
  if (o.nproc == 0) snapback::ExitBadFlag(kProgram, "--nproc is required");
  if (o.argv.empty()) snapback::ExitBadFlag(kProgram, "no rank command: put it after --");

  absl::StatusOr<int> exit_code = snapback::launcher::Launcher::Run(o);
  if (!exit_code.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram,
                 std::string(exit_code.status().message()).c_str());
    return snapback::launcher::kExitUsage;
  }
  return *exit_code;
}
