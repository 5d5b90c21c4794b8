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
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
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

// One Launch stream and its reader thread; orders are queued for the
// session, which owns the ranks.
class LaunchStream {
 public:
  LaunchStream(v1::DetectorService::Stub* stub, const v1::LauncherHello& hello) {
    stream_ = stub->Launch(&ctx_);
    v1::LauncherEvent ev;
    *ev.mutable_hello() = hello;
    ok_ = stream_->Write(ev);
    reader_ = std::thread([this] { Read(); });
  }
  ~LaunchStream() {
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

// How a launch ends: its exit code, and whether the job's incident timeline
// is printed (only when every rank finished or the detector cancelled it).
struct End {
  int exit_code;
  bool print_incidents = false;
};

// The session with the coordinator, step by step as in launcher.h, over as
// many Launch streams as reconnects take. Owns the ranks. Runs on the
// calling thread only.
class Session {
 public:
  // `opts` has its defaults filled in; `sigfd` reads SIGINT/SIGTERM (or is
  // -1). Both outlive the session.
  Session(const LauncherOptions& opts, std::shared_ptr<grpc::Channel> channel, int sigfd);

  // Waits up to connect_timeout for the coordinator. False (logged) when it
  // cannot be reached.
  bool Connect();
  // Serves streams, reconnecting after each lost one, until the launch ends;
  // returns its exit code.
  int Run();

 private:
  // Step 1: the hello that opens every stream, naming the incarnation still
  // running here (0 when none is).
  v1::LauncherHello Hello() const;
  // One stream from hello to its end. Polls every 10 ms: orders first (a
  // restart must not wait behind exits), then exits, then signals. The End
  // when the launch is over; nullopt when the stream ended (`*status` says
  // why).
  std::optional<End> Serve(grpc::Status* status);
  // Step 2: stops the ranks of an older incarnation and starts `start`'s;
  // ignores an overtaken order or a repeat of the running one. Waits on
  // StopAll (up to stop_grace). An End (kExitUsage) when ranks cannot start.
  std::optional<End> HandleStart(const v1::StartOrder& start);
  // Step 4: stops the ranks (up to stop_grace) and ends with kExitCancelled.
  End HandleCancel(const v1::CancelOrder& cancel);
  // Step 3: reports every exit seen so far, without waiting, and counts the
  // ranks that finished.
  void ReportExits(LaunchStream& stream);
  // Step 5: once every rank finished, half-closes and waits (up to 5 s) for
  // the coordinator to end the stream; nullopt while ranks still run.
  std::optional<End> FinishWhenAllDone(LaunchStream& stream);
  // SIGINT/SIGTERM, if one arrived (no wait): stops the ranks and ends with
  // 128 + the signal.
  std::optional<End> HandleSignal();
  // After a lost stream: a refusal ends the launch (kExitUsage); anything
  // else waits for the channel up to the backoff, which then doubles.
  std::optional<End> Reconnect(const grpc::Status& status);
  // A progress line on stdout, unless quiet.
  void Say(const std::string& line) const;

  const LauncherOptions& opts_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DetectorService::Stub> stub_;
  const int sigfd_;
  std::string host_;
  RankGroup group_;
  int done_ = 0;  // ranks of the current incarnation that finished
  absl::Duration backoff_ = absl::Milliseconds(200);
};

// The ranks get the coordinator's address, the heartbeat interval when set,
// and the CA the launcher trusts (the client library in the ranks trusts the
// same CA).
LaunchSpec MakeSpec(const LauncherOptions& opts) {
  LaunchSpec spec{.job_id = opts.job_id,
                  .nproc = opts.nproc,
                  .argv = opts.argv,
                  .endpoint = opts.endpoint,
                  .env = {}};
  if (opts.heartbeat_ms > 0) {
    spec.env["SNAPBACK_HEARTBEAT_MS"] = absl::StrCat(opts.heartbeat_ms);
  }
  if (!opts.channel.tls_root_ca_file.empty()) {
    spec.env["SNAPBACK_TLS_CA"] = opts.channel.tls_root_ca_file;
  }
  return spec;
}

Session::Session(const LauncherOptions& opts, std::shared_ptr<grpc::Channel> channel,
                 int sigfd)
    : opts_(opts),
      channel_(std::move(channel)),
      stub_(v1::DetectorService::NewStub(channel_)),
      sigfd_(sigfd),
      group_(MakeSpec(opts)) {}

bool Session::Connect() {
  if (!channel_->WaitForConnected(
          absl::ToChronoTime(absl::Now() + opts_.connect_timeout))) {
    SNAPBACK_LOG(
        Error,
        "cannot reach the coordinator at %s within %s: start snapback-server, or "
        "pass --endpoint",
        opts_.endpoint, absl::FormatDuration(opts_.connect_timeout));
    return false;
  }
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  host_ = host;
  return true;
}

int Session::Run() {
  for (;;) {
    grpc::Status status;
    std::optional<End> end = Serve(&status);
    if (!end.has_value()) end = Reconnect(status);
    if (!end.has_value()) continue;
    if (end->print_incidents) PrintIncidents(stub_.get(), opts_.job_id);
    return end->exit_code;
  }
}

v1::LauncherHello Session::Hello() const {
  v1::LauncherHello hello;
  hello.set_job_id(opts_.job_id);
  hello.set_nproc(opts_.nproc);
  hello.set_hostname(host_);
  hello.set_pid(getpid());
  hello.set_running_incarnation(group_.running() > 0 ? group_.incarnation() : 0);
  return hello;
}

std::optional<End> Session::Serve(grpc::Status* status) {
  LaunchStream stream(stub_.get(), Hello());
  bool ended = false;
  while (!ended) {
    std::optional<v1::LauncherOrder> order =
        stream.Next(absl::Milliseconds(10), &ended, status);
    if (order.has_value() && order->has_start()) {
      if (std::optional<End> end = HandleStart(order->start())) return end;
      continue;
    }
    if (order.has_value() && order->has_cancel()) return HandleCancel(order->cancel());
    // Exits wait in the group until a live stream can report them.
    if (ended) break;
    ReportExits(stream);
    if (std::optional<End> end = FinishWhenAllDone(stream)) return end;
    if (std::optional<End> end = HandleSignal()) return end;
  }
  return std::nullopt;
}

std::optional<End> Session::HandleStart(const v1::StartOrder& start) {
  const int64_t inc = start.incarnation();
  // An order for an older incarnation was overtaken by a newer one.
  if (inc < group_.incarnation()) return std::nullopt;
  // The incarnation already running (a reconnect): leave the ranks alone.
  if (inc == group_.incarnation() && group_.running() > 0) return std::nullopt;
  if (group_.running() > 0) {
    Say(absl::StrCat("stopping incarnation ", group_.incarnation(), " (", start.reason(),
                     ")"));
    group_.StopAll(opts_.stop_grace);
  }
  if (absl::Status s = group_.Start(inc); !s.ok()) {
    SNAPBACK_LOG(Error, "%s", s.message());
    return End{.exit_code = kExitUsage, .print_incidents = false};
  }
  done_ = 0;
  Say(absl::StrCat("job ", opts_.job_id, ": incarnation ", inc, " started, ", opts_.nproc,
                   " rank(s)"));
  return std::nullopt;
}

End Session::HandleCancel(const v1::CancelOrder& cancel) {
  group_.StopAll(opts_.stop_grace);
  SNAPBACK_LOG(Error, "job %s cancelled by the coordinator: %s", opts_.job_id,
               cancel.reason());
  return End{.exit_code = kExitCancelled, .print_incidents = true};
}

void Session::ReportExits(LaunchStream& stream) {
  while (std::optional<RankExit> exit = group_.WaitExit(absl::ZeroDuration())) {
    v1::RankExited ev;
    ev.set_incarnation(exit->incarnation);
    ev.set_rank(exit->rank);
    ev.set_exit_code(exit->exit_code);
    ev.set_signal(exit->signal);
    ev.set_exit_class(exit->cls == ExitClass::kDone        ? v1::EXIT_DONE
                      : exit->cls == ExitClass::kNoRestart ? v1::EXIT_NO_RESTART
                                                           : v1::EXIT_RESTART);
    ev.set_description(exit->Describe());
    stream.Report(ev);
    if (exit->cls == ExitClass::kDone) {
      ++done_;
    } else {
      Say(exit->Describe());
    }
  }
}

std::optional<End> Session::FinishWhenAllDone(LaunchStream& stream) {
  if (done_ != opts_.nproc) return std::nullopt;
  Say(absl::StrCat("job ", opts_.job_id, ": every rank finished"));
  stream.Close(absl::Seconds(5));
  return End{.exit_code = kExitFinished, .print_incidents = true};
}

std::optional<End> Session::HandleSignal() {
  signalfd_siginfo si;
  if (sigfd_ < 0 || read(sigfd_, &si, sizeof(si)) != sizeof(si)) return std::nullopt;
  Say(absl::StrCat(strsignal(static_cast<int>(si.ssi_signo)), ": stopping the ranks"));
  group_.StopAll(opts_.stop_grace);
  return End{.exit_code = 128 + static_cast<int>(si.ssi_signo), .print_incidents = false};
}

std::optional<End> Session::Reconnect(const grpc::Status& status) {
  // The coordinator went away or refused us.
  const grpc::StatusCode code = status.error_code();
  if (code == grpc::StatusCode::INVALID_ARGUMENT ||
      code == grpc::StatusCode::FAILED_PRECONDITION ||
      code == grpc::StatusCode::NOT_FOUND) {
    SNAPBACK_LOG(Error, "the coordinator refused job %s: %s", opts_.job_id,
                 status.error_message());
    group_.StopAll(opts_.stop_grace);
    return End{.exit_code = kExitUsage, .print_incidents = false};
  }
  Say(absl::StrCat("lost the coordinator (", status.error_message(),
                   "); ranks keep running, reconnecting"));
  channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + backoff_));
  backoff_ = std::min(backoff_ * 2, absl::Seconds(5));
  return std::nullopt;
}

void Session::Say(const std::string& line) const {
  if (opts_.quiet) return;
  std::printf("snapback-launch: %s\n", line.c_str());
  std::fflush(stdout);
}

// Closes the signalfd when the launch is over.
struct SigfdCloser {
  int fd;
  ~SigfdCloser() {
    if (fd >= 0) close(fd);
  }
};

// Blocks SIGINT/SIGTERM in the calling thread and returns a signalfd that
// reads them (-1 if it cannot be made). Called before the channel starts
// gRPC's threads, so that they inherit the mask.
int BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
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
  // SIGINT/SIGTERM stop the ranks before the launcher goes.
  const SigfdCloser sigfd{BlockStopSignals()};
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      rpc::MakeChannel(opts.endpoint, opts.channel);
  if (!channel.ok()) return channel.status();
  Session session(opts, *std::move(channel), sigfd.fd);
  if (!session.Connect()) return kExitUnavailable;
  return session.Run();
}

}  // namespace snapback::launcher
