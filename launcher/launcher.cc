#include "launcher/launcher.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "launcher/rank_group.h"
#include "snapback/v1/detector.grpc.pb.h"

namespace snapback::launcher {
namespace {

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
    SNAPBACK_LOG(Error, "cannot read the incident log: %s", s.error_message());
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

// The value of environment variable `name`, or `fallback` when unset or empty.
std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

absl::Status Validate(const LauncherOptions& o) {
  if (o.job_id.empty()) return absl::InvalidArgumentError("a launch needs a job id");
  if (o.nproc < 1 || o.nproc > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("nproc ", o.nproc, " must be a count in 1..4096"));
  }
  if (o.argv.empty() || o.argv[0].empty()) {
    return absl::InvalidArgumentError("a launch needs a rank command");
  }
  if (o.stop_grace < absl::ZeroDuration() || o.connect_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "stop_grace and connect_timeout must not be negative");
  }
  if (o.heartbeat_ms != 0 && o.heartbeat_ms < 10) {
    return absl::InvalidArgumentError(
        absl::StrCat("heartbeat_ms ", o.heartbeat_ms, " must be at least 10 (or 0)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int> Launcher::Run(const LauncherOptions& options) {
  if (absl::Status s = Validate(options); !s.ok()) return s;
  LauncherOptions opts = options;
  if (opts.endpoint.empty()) {
    opts.endpoint = EnvOr("SNAPBACK_ENDPOINT", "127.0.0.1:7420");
  }
  if (opts.channel.tls_root_ca_file.empty()) {
    opts.channel.tls_root_ca_file = EnvOr("SNAPBACK_TLS_CA", "");
  }
  // SIGINT/SIGTERM stop the ranks before the launcher goes; read them from
  // a signalfd in the main loop. Blocked before the channel starts gRPC's
  // threads, so that they inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const int sigfd = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
  struct SigfdCloser {
    int fd;
    ~SigfdCloser() {
      if (fd >= 0) close(fd);
    }
  } sigfd_closer{sigfd};

  absl::StatusOr<std::shared_ptr<grpc::Channel>> made =
      rpc::MakeChannel(opts.endpoint, opts.channel);
  if (!made.ok()) return made.status();
  std::shared_ptr<grpc::Channel> channel = *std::move(made);
  auto stub = v1::DetectorService::NewStub(channel);
  if (!channel->WaitForConnected(
          absl::ToChronoTime(absl::Now() + opts.connect_timeout))) {
    SNAPBACK_LOG(
        Error,
        "cannot reach the coordinator at %s within %s: start snapback-server, or "
        "pass --endpoint",
        opts.endpoint, absl::FormatDuration(opts.connect_timeout));
    return kExitUnavailable;
  }

  LaunchSpec spec{.job_id = opts.job_id,
                  .nproc = opts.nproc,
                  .argv = opts.argv,
                  .endpoint = opts.endpoint,
                  .env = {}};
  if (opts.heartbeat_ms > 0) {
    spec.env["SNAPBACK_HEARTBEAT_MS"] = absl::StrCat(opts.heartbeat_ms);
  }
  // The client library in the ranks trusts the same CA.
  if (!opts.channel.tls_root_ca_file.empty()) {
    spec.env["SNAPBACK_TLS_CA"] = opts.channel.tls_root_ca_file;
  }
  RankGroup group(spec);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  auto say = [&](const std::string& line) {
    if (!opts.quiet) {
      std::printf("snapback-launch: %s\n", line.c_str());
      std::fflush(stdout);
    }
  };

  int done = 0;  // ranks of the current incarnation that finished
  int exit_code = kExitFinished;
  bool running = true;
  absl::Duration backoff = absl::Milliseconds(200);
  while (running) {
    v1::LauncherHello hello;
    hello.set_job_id(opts.job_id);
    hello.set_nproc(opts.nproc);
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
            group.StopAll(opts.stop_grace);
          }
          absl::Status s = group.Start(inc);
          if (!s.ok()) {
            SNAPBACK_LOG(Error, "%s", s.message());
            return kExitUsage;
          }
          done = 0;
          say(absl::StrCat("job ", opts.job_id, ": incarnation ", inc, " started, ",
                           opts.nproc, " rank(s)"));
        }
        continue;
      }
      if (order.has_value() && order->has_cancel()) {
        group.StopAll(opts.stop_grace);
        SNAPBACK_LOG(Error, "job %s cancelled by the coordinator: %s", opts.job_id,
                     order->cancel().reason());
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
      if (done == opts.nproc) {
        say(absl::StrCat("job ", opts.job_id, ": every rank finished"));
        session.Close(absl::Seconds(5));
        running = false;
        break;
      }
      signalfd_siginfo si;
      if (sigfd >= 0 && read(sigfd, &si, sizeof(si)) == sizeof(si)) {
        say(absl::StrCat(strsignal(static_cast<int>(si.ssi_signo)),
                         ": stopping the ranks"));
        group.StopAll(opts.stop_grace);
        return 128 + static_cast<int>(si.ssi_signo);
      }
    }
    if (!running) break;
    // The coordinator went away or refused us.
    const grpc::StatusCode code = status.error_code();
    if (code == grpc::StatusCode::INVALID_ARGUMENT ||
        code == grpc::StatusCode::FAILED_PRECONDITION ||
        code == grpc::StatusCode::NOT_FOUND) {
      SNAPBACK_LOG(Error, "the coordinator refused job %s: %s", opts.job_id,
                   status.error_message());
      group.StopAll(opts.stop_grace);
      return kExitUsage;
    }
    say(absl::StrCat("lost the coordinator (", status.error_message(),
                     "); ranks keep running, reconnecting"));
    channel->WaitForConnected(absl::ToChronoTime(absl::Now() + backoff));
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  PrintIncidents(stub.get(), opts.job_id);
  return exit_code;
}

}  // namespace snapback::launcher
