// snapback-launch: the local scheduler. Runs the N ranks of a job on this
// machine under the coordinator's failure detector, and restarts them as a
// new incarnation when the detector orders it.
//
//   snapback-launch --job J --nproc N [--endpoint HOST:PORT] -- CMD [ARGS...]
//
// Each rank runs CMD with SNAPBACK_JOB, SNAPBACK_RANK, SNAPBACK_WORLD_SIZE,
// SNAPBACK_INCARNATION and SNAPBACK_ENDPOINT set, in a process group of its
// own. The launcher holds a Launch stream to the coordinator: it says hello
// (the coordinator registers the job bound to scheduler "local" and answers
// with the incarnation to run), reports every rank exit, and obeys Start
// (stop any ranks still running — SIGTERM, then SIGKILL after --stop-grace —
// and start the new incarnation) and Cancel orders. It never restarts ranks
// on its own: the detector decides, so every restart is in the incident log.
// When it loses the coordinator it keeps the ranks running and reconnects.
//
// Rank exit codes (docs/failure_detection.md): 0 done; 78 do not restart
// (the detector gives up and cancels the job); 75 or any other code, or a
// signal: restart.
//
// Launcher exit codes: 0 every rank finished; 1 the job was cancelled (the
// detector gave up: the reason is printed); 2 bad usage; 69 the coordinator
// could not be reached at start.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "failure-detector/rank_group.h"
#include "snapback/v1/detector.grpc.pb.h"

namespace {

namespace v1 = snapback::v1;
using snapback::detector::ExitClass;
using snapback::detector::LaunchSpec;
using snapback::detector::RankExit;
using snapback::detector::RankGroup;

constexpr char kUsage[] =
    "usage: snapback-launch --job JOB --nproc N [--endpoint HOST:PORT]\n"
    "         [--stop-grace DURATION] [--heartbeat-ms MS] [--connect-timeout DURATION]\n"
    "         [--quiet] -- CMD [ARGS...]\n"
    "\n"
    "  --job JOB              job id, [A-Za-z0-9._-]{1,128}\n"
    "  --nproc N              ranks to run on this machine (the world size)\n"
    "  --endpoint HOST:PORT   the coordinator (default $SNAPBACK_ENDPOINT, else\n"
    "                         127.0.0.1:7420)\n"
    "  --stop-grace D         SIGTERM to SIGKILL when stopping ranks (default 3s)\n"
    "  --heartbeat-ms MS      the ranks' heartbeat interval (sets "
    "SNAPBACK_HEARTBEAT_MS;\n"
    "                         default: the client's, 1000)\n"
    "  --connect-timeout D    give up when the coordinator cannot be reached at start\n"
    "                         (default 30s)\n"
    "  --quiet                no progress lines, only errors and the incident summary\n"
    "\n"
    "Ranks get SNAPBACK_JOB, SNAPBACK_RANK, SNAPBACK_WORLD_SIZE, SNAPBACK_INCARNATION\n"
    "and SNAPBACK_ENDPOINT. Rank exit codes: 0 done, 78 do not restart, anything\n"
    "else (or a signal) restart. Exit: 0 job finished, 1 job cancelled, 2 usage,\n"
    "69 coordinator unreachable.\n";

constexpr int kExitCancelled = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnavailable = 69;

[[noreturn]] void Usage(const std::string& message) {
  std::fprintf(stderr, "snapback-launch: %s (see --help)\n", message.c_str());
  std::exit(kExitUsage);
}

struct Flags {
  std::string job;
  int nproc = 0;
  std::string endpoint;
  absl::Duration stop_grace = absl::Seconds(3);
  absl::Duration connect_timeout = absl::Seconds(30);
  int heartbeat_ms = 0;
  bool quiet = false;
  std::vector<std::string> argv;
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  int i = 1;
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg == "--quiet") {
      f.quiet = true;
      continue;
    }
    std::string value;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      Usage(absl::StrCat(arg, " needs a value"));
    }
    if (arg == "--job") {
      f.job = value;
    } else if (arg == "--nproc") {
      if (!absl::SimpleAtoi(value, &f.nproc) || f.nproc < 1 || f.nproc > 4096) {
        Usage(absl::StrCat("--nproc '", value, "' must be a count in 1..4096"));
      }
    } else if (arg == "--endpoint") {
      f.endpoint = value;
    } else if (arg == "--stop-grace" || arg == "--connect-timeout") {
      absl::Duration d;
      if (!absl::ParseDuration(value, &d) || d < absl::ZeroDuration()) {
        Usage(absl::StrCat(arg, " '", value, "' must be a duration such as 3s"));
      }
      (arg == "--stop-grace" ? f.stop_grace : f.connect_timeout) = d;
    } else if (arg == "--heartbeat-ms") {
      if (!absl::SimpleAtoi(value, &f.heartbeat_ms) || f.heartbeat_ms < 10) {
        Usage(absl::StrCat("--heartbeat-ms '", value, "' must be at least 10"));
      }
    } else {
      Usage(absl::StrCat("unknown flag ", arg));
    }
  }
  for (; i < argc; ++i) f.argv.push_back(argv[i]);
  if (f.job.empty()) Usage("--job is required");
  if (f.nproc < 1) Usage("--nproc is required");
  if (f.argv.empty()) Usage("no rank command: put it after --");
  if (f.endpoint.empty()) {
    const char* env = std::getenv("SNAPBACK_ENDPOINT");
    f.endpoint = env != nullptr && *env != '\0' ? env : "127.0.0.1:7420";
  }
  return f;
}

// The Launch stream and its reader thread; orders are queued for the main
// loop, which owns the ranks.
class Session {
 public:
  Session(v1::DetectorService::Stub* stub, const v1::LauncherHello& hello) {
    stream_ = stub->Launch(&ctx_);
    v1::LauncherEvent ev;
    *ev.mutable_hello() = hello;
    ok_ = stream_->Write(ev);
    reader_ = std::thread([this] { Read(); });
  }
  ~Session() {
    ctx_.TryCancel();
    reader_.join();
  }
  // Half-closes and waits (up to `timeout`) for the coordinator to end the
  // stream, so every exit reported so far has been read before we go.
  void Close(absl::Duration timeout) {
    {
      absl::MutexLock lock(&write_mu_);
      if (ok_) ok_ = stream_->WritesDone();
    }
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&ended_), timeout);
  }
  void Report(const v1::RankExited& exit) {
    v1::LauncherEvent ev;
    *ev.mutable_exited() = exit;
    absl::MutexLock lock(&write_mu_);
    if (ok_) ok_ = stream_->Write(ev);
  }
  // The next order, or nullopt after `timeout`. `*ended` turns true (with
  // the status) when the stream is over.
  std::optional<v1::LauncherOrder> Next(absl::Duration timeout, bool* ended,
                                        grpc::Status* status) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !orders_.empty() || ended_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (!orders_.empty()) {
      v1::LauncherOrder o = std::move(orders_.front());
      orders_.pop_front();
      return o;
    }
    *ended = ended_;
    *status = status_;
    return std::nullopt;
  }

 private:
  void Read() {
    v1::LauncherOrder order;
    while (stream_->Read(&order)) {
      absl::MutexLock lock(&mu_);
      orders_.push_back(order);
    }
    grpc::Status s = stream_->Finish();
    absl::MutexLock lock(&mu_);
    ended_ = true;
    status_ = s;
  }

  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::LauncherEvent, v1::LauncherOrder>> stream_;
  absl::Mutex write_mu_;
  bool ok_ = true;
  absl::Mutex mu_;
  std::deque<v1::LauncherOrder> orders_;
  bool ended_ = false;
  grpc::Status status_;
  std::thread reader_;
};

std::string Ms(int64_t a, int64_t b) {
  return a == 0 || b == 0 ? "-" : absl::StrFormat("%.2f s", (b - a) / 1000.0);
}

// The job's incident timeline, as the detector logged it.
void PrintIncidents(v1::DetectorService::Stub* stub, const std::string& job) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::ListIncidentsRequest req;
  req.set_job_id(job);
  v1::ListIncidentsResponse resp;
  grpc::Status s = stub->ListIncidents(&ctx, req, &resp);
  if (!s.ok()) {
    std::fprintf(stderr, "snapback-launch: cannot read the incident log: %s\n",
                 s.error_message().c_str());
    return;
  }
  if (resp.incidents().empty()) {
    std::printf("snapback-launch: job %s: no incidents\n", job.c_str());
    return;
  }
  std::printf("snapback-launch: job %s: %d incident(s)\n", job.c_str(),
              resp.incidents_size());
  std::printf("  %-3s %-15s %-4s %-9s %-9s %-9s %-9s %-6s %s\n", "#", "kind", "rank",
              "MTTD", "restart", "restored", "MTTR", "lost", "reason");
  for (const v1::Incident& i : resp.incidents()) {
    const int64_t lost = i.restored_step() < 0
                             ? -1
                             : std::max<int64_t>(0, i.last_step() - i.restored_step());
    std::printf("  %-3lld %-15s %-4d %-9s %-9s %-9s %-9s %-6s %s\n",
                static_cast<long long>(i.seq()), i.kind().c_str(), i.rank(),
                Ms(i.last_healthy_unix_ms(), i.detected_unix_ms()).c_str(),
                Ms(i.detected_unix_ms(), i.restart_requested_unix_ms()).c_str(),
                Ms(i.detected_unix_ms(), i.restored_unix_ms()).c_str(),
                Ms(i.detected_unix_ms(), i.first_new_step_unix_ms()).c_str(),
                lost < 0 ? "-" : absl::StrCat(lost).c_str(), i.reason().c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags = ParseFlags(argc, argv);
  // SIGINT/SIGTERM stop the ranks before the launcher goes; read them from
  // a signalfd in the main loop.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const int sigfd = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);

  auto channel = grpc::CreateChannel(flags.endpoint, grpc::InsecureChannelCredentials());
  auto stub = v1::DetectorService::NewStub(channel);
  if (!channel->WaitForConnected(
          absl::ToChronoTime(absl::Now() + flags.connect_timeout))) {
    std::fprintf(stderr,
                 "snapback-launch: cannot reach the coordinator at %s within %s: start "
                 "snapback-server, or pass --endpoint\n",
                 flags.endpoint.c_str(),
                 absl::FormatDuration(flags.connect_timeout).c_str());
    return kExitUnavailable;
  }

  LaunchSpec spec{.job_id = flags.job,
                  .nproc = flags.nproc,
                  .argv = flags.argv,
                  .endpoint = flags.endpoint,
                  .env = {}};
  if (flags.heartbeat_ms > 0) {
    spec.env["SNAPBACK_HEARTBEAT_MS"] = absl::StrCat(flags.heartbeat_ms);
  }
  RankGroup group(spec);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  auto say = [&](const std::string& line) {
    if (!flags.quiet) {
      std::printf("snapback-launch: %s\n", line.c_str());
      std::fflush(stdout);
    }
  };

  int done = 0;  // ranks of the current incarnation that finished
  int exit_code = 0;
  bool running = true;
  absl::Duration backoff = absl::Milliseconds(200);
  while (running) {
    v1::LauncherHello hello;
    hello.set_job_id(flags.job);
    hello.set_nproc(flags.nproc);
    hello.set_hostname(host);
    hello.set_pid(getpid());
    hello.set_running_incarnation(group.running() > 0 ? group.incarnation() : 0);
    Session session(stub.get(), hello);
    bool ended = false;
    grpc::Status status;
    while (!ended) {
      // Orders first (a restart must not wait behind exits), then exits,
      // then signals.
      std::optional<v1::LauncherOrder> order =
          session.Next(absl::Milliseconds(10), &ended, &status);
      if (order.has_value() && order->has_start()) {
        const int64_t inc = order->start().incarnation();
        // An order for an older incarnation was overtaken by a newer one.
        if (inc < group.incarnation()) continue;
        if (inc != group.incarnation() || group.running() == 0) {
          if (group.running() > 0) {
            say(absl::StrCat("stopping incarnation ", group.incarnation(), " (",
                             order->start().reason(), ")"));
            group.StopAll(flags.stop_grace);
          }
          absl::Status s = group.Start(inc);
          if (!s.ok()) {
            std::fprintf(stderr, "snapback-launch: %s\n",
                         std::string(s.message()).c_str());
            return kExitUsage;
          }
          done = 0;
          say(absl::StrCat("job ", flags.job, ": incarnation ", inc, " started, ",
                           flags.nproc, " rank(s)"));
        }
        continue;
      }
      if (order.has_value() && order->has_cancel()) {
        group.StopAll(flags.stop_grace);
        std::fprintf(stderr, "snapback-launch: job %s cancelled by the coordinator: %s\n",
                     flags.job.c_str(), order->cancel().reason().c_str());
        exit_code = kExitCancelled;
        running = false;
        break;
      }
      // Exits wait in the group until a live stream can report them.
      if (ended) break;
      while (std::optional<RankExit> exit = group.WaitExit(absl::ZeroDuration())) {
        v1::RankExited ev;
        ev.set_incarnation(exit->incarnation);
        ev.set_rank(exit->rank);
        ev.set_exit_code(exit->exit_code);
        ev.set_signal(exit->signal);
        ev.set_exit_class(exit->cls == ExitClass::kDone        ? v1::EXIT_DONE
                          : exit->cls == ExitClass::kNoRestart ? v1::EXIT_NO_RESTART
                                                               : v1::EXIT_RESTART);
        ev.set_description(exit->Describe());
        session.Report(ev);
        if (exit->cls == ExitClass::kDone) {
          ++done;
        } else {
          say(exit->Describe());
        }
      }
      if (done == flags.nproc) {
        say(absl::StrCat("job ", flags.job, ": every rank finished"));
        session.Close(absl::Seconds(5));
        running = false;
        break;
      }
      signalfd_siginfo si;
      if (sigfd >= 0 && read(sigfd, &si, sizeof(si)) == sizeof(si)) {
        say(absl::StrCat(strsignal(static_cast<int>(si.ssi_signo)),
                         ": stopping the ranks"));
        group.StopAll(flags.stop_grace);
        return 128 + static_cast<int>(si.ssi_signo);
      }
    }
    if (!running) break;
    // The coordinator went away or refused us.
    const grpc::StatusCode code = status.error_code();
    if (code == grpc::StatusCode::INVALID_ARGUMENT ||
        code == grpc::StatusCode::FAILED_PRECONDITION ||
        code == grpc::StatusCode::NOT_FOUND) {
      std::fprintf(stderr, "snapback-launch: the coordinator refused job %s: %s\n",
                   flags.job.c_str(), status.error_message().c_str());
      group.StopAll(flags.stop_grace);
      return kExitUsage;
    }
    say(absl::StrCat("lost the coordinator (", status.error_message(),
                     "); ranks keep running, reconnecting"));
    channel->WaitForConnected(absl::ToChronoTime(absl::Now() + backoff));
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  PrintIncidents(stub.get(), flags.job);
  return exit_code;
}
