// Launcher: snapback-launch as a library — the local scheduler. Runs the N
// ranks of a job on this machine under the coordinator's failure detector,
// and restarts them as a new incarnation when the detector orders it.
//
// The session with the coordinator (proto snapback.v1.DetectorService.Launch):
//   1. hello: job, nproc, hostname, pid and the incarnation still running
//      here (0 at start). The coordinator registers the job bound to
//      scheduler "local" and answers with a Start order.
//   2. Start(incarnation): stop any ranks still running (SIGTERM to each
//      rank's process group, SIGKILL after stop_grace) and start the new
//      incarnation (RankGroup). A Start for the incarnation already running
//      (a reconnect) leaves the ranks alone; one for an older incarnation
//      was overtaken and is ignored.
//   3. Every rank exit is reported (RankExited, classified by RankGroup's
//      exit-code contract). Exits that happen while the stream is down wait
//      and are reported on the next stream.
//   4. Cancel: stop the ranks and end with kExitCancelled.
//   5. When every rank of the current incarnation has finished: half-close
//      and wait (up to 5 s) for the coordinator to end the stream, so the
//      last exit report is read before the launcher goes.
// The launcher never restarts ranks on its own: the detector decides, so
// every restart is in the incident log. When it loses the coordinator it
// keeps the ranks running and reconnects (backoff 200 ms doubling to 5 s).
// At the end it prints the job's incident timeline (MTTD, MTTR, steps lost).
//
// SIGINT and SIGTERM stop the ranks and end the launch with 128 + the
// signal. Run() blocks them in the calling thread and reads them from a
// signalfd; call it before any other thread starts (so that none of them
// takes the signal instead), as snapback-launch's main() does. They stay
// blocked when Run() returns: a caller that carries on restores its mask.
//
// Progress lines go to stdout ("snapback-launch: ..."; none with quiet),
// errors to stderr.
#ifndef SNAPBACK_LAUNCHER_LAUNCHER_H_
#define SNAPBACK_LAUNCHER_LAUNCHER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rpc/channel.h"

namespace snapback::launcher {

// The exit codes of a launch (and of snapback-launch).
inline constexpr int kExitFinished = 0;   // every rank finished
inline constexpr int kExitCancelled = 1;  // the detector gave up: reason printed
// Bad usage, the coordinator refused the job, or the ranks could not be
// started.
inline constexpr int kExitUsage = 2;
inline constexpr int kExitUnavailable = 69;  // no coordinator within connect_timeout
// A signal stopped the launch: 128 + the signal number.

struct LauncherOptions {
  // The job id, [A-Za-z0-9._-]{1,128} (the coordinator checks it).
  // Default: "" (required)
  std::string job_id;
  // Ranks to run on this machine: the world size, 1..4096.
  // Default: 0 (required)
  int nproc = 0;
  // The rank command; argv[0] is looked up in PATH.
  // Default: {} (required)
  std::vector<std::string> argv;

  // The coordinator, HOST:PORT; the ranks get it as SNAPBACK_ENDPOINT.
  // Default: "" ($SNAPBACK_ENDPOINT, else 127.0.0.1:7420)
  std::string endpoint;
  // Transport security to the coordinator (rpc/channel.h). When
  // channel.tls_root_ca_file is set the ranks get it as SNAPBACK_TLS_CA (the
  // client library's CA). The client certificate (mTLS) is the launcher's
  // only: the ranks do not get it.
  // Default: plaintext; tls_root_ca_file "" means $SNAPBACK_TLS_CA if set
  rpc::ChannelOptions channel;

  // SIGTERM to SIGKILL when stopping ranks.
  // Default: 3 s
  absl::Duration stop_grace = absl::Seconds(3);
  // Give up (kExitUnavailable) when the coordinator cannot be reached at
  // start within this long.
  // Default: 30 s
  absl::Duration connect_timeout = absl::Seconds(30);
  // The ranks' heartbeat interval in ms (SNAPBACK_HEARTBEAT_MS), at least 10;
  // 0 leaves it to the client library (1000).
  // Default: 0
  int heartbeat_ms = 0;
  // No progress lines; errors and the incident summary only.
  // Default: false
  bool quiet = false;
};

class Launcher {
 public:
  // Runs the launch to its end and returns its exit code (above).
  // INVALID_ARGUMENT when the options are incomplete or out of range, and
  // MakeChannel's error when the channel cannot be made (a TLS file that
  // cannot be read): nothing was started then. Blocks for the life of the
  // job.
  static absl::StatusOr<int> Run(const LauncherOptions& options);
};

}  // namespace snapback::launcher

#endif  // SNAPBACK_LAUNCHER_LAUNCHER_H_
