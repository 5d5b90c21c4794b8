// Recovery benchmark (issue 4): how soon snapback's failure detector notices a
// failed rank (MTTD) and how soon the job trains again (MTTR), as
// distributions over real failures injected one after the other into one
// running job, same machine, same run:
//
//   local-crash   snapback-launch, 2 ranks; SIGKILL a random rank at a random step
//   local-freeze  the same with SIGSTOP (a frozen process: heartbeats stop)
//   slurm-crash   a real private Slurm cluster (testing/slurm_cluster.h), 2 ranks
//                 in one batch job submitted once with --requeue; SIGKILL a rank;
//                 the detector requeues the job (skipped, with the reason, when
//                 Slurm cannot run here)
//
//   MTTD    = Incident.detected_unix_ms       - the time the bench sent the signal
//   MTTR    = Incident.first_new_step_unix_ms - the time the bench sent the signal
//   restore = Incident.restored_unix_ms       - Incident.ranks_back_unix_ms
//
// MTTR as the coordinator logs it includes two things a real job would not
// pay in the same way: the demo job checks every restore by recomputing the
// reference state from step 0 before its first new step (so it grows with
// the step the job reached), and the first new step reaches the coordinator
// only with the rank's next heartbeat (the bench measures that lag from the
// progress files and prints it under "checks").
//
// Each figure is printed beside the defaults of the tools users have today,
// from /work/shared/research/anchors-failure.md:
//   - torchrun (torch.distributed.elastic) rendezvous keep-alive, 5 s x 3 =
//     ~15 s to notice a dead agent: §1a, row "torch.distributed.elastic
//     rendezvous";
//   - Slurm requeue with the default hold-off (cred_expire 120 s + 1), node
//     death -> running again in ~157 s: §2, row "Slurm end to end [E]", and
//     §4.5;
//   - NCCL process-group timeout 600 s, the floor for noticing a hung or
//     frozen peer: §1a, row "PyTorch NCCL watchdog".
// and beside the targets of issue 4: MTTD <= 1 s for a crash and <= 10 s for
// a frozen process; MTTR <= 5 s + restore time locally and <= 30 s with Slurm.
//
//   recovery_bench [--kinds local-crash,local-freeze,slurm-crash] [--failures 20]
//                  [--seed N]
//
// The private Slurm cluster needs root. The tools (snapback-launch,
// snapback-demo-job) are taken from $SNAPBACK_BIN_DIR, else from ../bin
// beside this binary.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/flags.h"
#include "failure-detector/slurm_adapter.h"
#include "server/server.h"
#include "testing/job_harness.h"
#include "testing/slurm_cluster.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

ABSL_FLAG(std::string, kinds, "local-crash,local-freeze,slurm-crash",
          "failure kinds, comma-separated");
ABSL_FLAG(int, failures, 20, "failures per kind");
ABSL_FLAG(uint64_t, seed, 0, "random seed (0: a fresh one, printed)");

namespace snapback {
namespace {

using ::snapback::testing::Slurp;

using ::snapback::testing::Launcher;
using ::snapback::testing::Progress;
using ::snapback::testing::Subprocess;

// The job: small state so the figures are the detector's and the
// scheduler's, not the disk's.
constexpr int kRanks = 2;
constexpr int kMib = 4;
constexpr int kStepMs = 50;
constexpr int kSaveEvery = 5;
// Never reached: the bench stops the job after its last failure.
constexpr int kSteps = 1000000;

// Baselines (see the top of the file) and targets, in seconds.
constexpr double kTorchrunKeepAlive = 15;
constexpr double kSlurmRequeueDefault = 157;
constexpr double kNcclTimeout = 600;
constexpr double kTargetMttdCrash = 1;
constexpr double kTargetMttdFreeze = 10;
constexpr double kTargetMttrLocalOverRestore = 5;
constexpr double kTargetMttrSlurm = 30;

const char* const kAllKinds[] = {"local-crash", "local-freeze", "slurm-crash"};

struct Flags {
  std::vector<std::string> kinds = {std::begin(kAllKinds), std::end(kAllKinds)};
  int failures = 20;
  uint64_t seed = std::random_device{}();
};

constexpr char kUsage[] =
    "usage: recovery_bench [--kinds local-crash,local-freeze,slurm-crash] [--failures "
    "N]\n"
    "                      [--seed N]\n"
    "\n"
    "Measures MTTD and MTTR over real failures (SIGKILL, SIGSTOP, Slurm requeue).";

[[noreturn]] void Usage(const std::string& why) { ExitBadFlag("recovery_bench", why); }

Flags ParseFlags(int argc, char** argv) {
  ParseCommandLineOrExit(argc, argv, "recovery_bench", kUsage, __FILE__);
  Flags f;
  f.kinds = absl::StrSplit(absl::GetFlag(FLAGS_kinds), ',', absl::SkipEmpty());
  for (const std::string& k : f.kinds) {
    if (std::find(std::begin(kAllKinds), std::end(kAllKinds), k) == std::end(kAllKinds)) {
      Usage(absl::StrCat("unknown kind ", k));
    }
  }
  f.failures = absl::GetFlag(FLAGS_failures);
  if (f.failures < 1) Usage("bad --failures");
  if (absl::GetFlag(FLAGS_seed) != 0) f.seed = absl::GetFlag(FLAGS_seed);
  return f;
}

// One injected failure and what the coordinator logged for it.
struct Sample {
  int rank = -1;
  int64_t step = -1;       // the rank's step when it was signalled
  double injected_ms = 0;  // Unix ms, the bench's clock (the same machine's)
  v1::Incident incident;
  // When the bench saw a rank of the new incarnation past its restored step
  // in its progress file (Unix ms; 0 = not seen).
  double seen_first_step_ms = 0;

  double Seconds(int64_t unix_ms) const { return (unix_ms - injected_ms) / 1000.0; }
  double mttd() const { return Seconds(incident.detected_unix_ms()); }
  double mttr() const { return Seconds(incident.first_new_step_unix_ms()); }
  double restore() const {
    return (incident.restored_unix_ms() - incident.ranks_back_unix_ms()) / 1000.0;
  }
  // The scheduler's part: restart ordered -> every new rank beating.
  double relaunch() const {
    return (incident.ranks_back_unix_ms() - incident.restart_requested_unix_ms()) /
           1000.0;
  }
};

struct KindResult {
  std::string kind;
  std::string skipped;  // why the kind did not run, if it did not
  std::vector<Sample> samples;
  std::vector<std::string> notes;  // anything odd
  int restores_ok = 0;
  int restores_bad = 0;
  double wall_s = 0;
};

// The job under test, whoever schedules it.
struct Job {
  server::Server* server;
  std::string id;
  std::string progress_dir;
  int signal;                     // SIGKILL or SIGSTOP
  absl::Duration first_progress;  // how long the first incarnation may take to start
  absl::Duration recovery;        // how long one recovery may take
};

std::vector<v1::Incident> Incidents(const Job& job) {
  auto list = job.server->TEST_coordinator_store()->ListIncidents(job.id);
  return list.ok() ? *std::move(list) : std::vector<v1::Incident>{};
}

// Waits until `rank` runs incarnation `inc` or a later one at `step` or later.
std::optional<Progress> WaitForStep(const Job& job, int rank, int64_t inc, int64_t step,
                                    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    std::optional<Progress> p = testing::ReadProgress(job.progress_dir, rank);
    if (p.has_value() && p->incarnation >= inc && p->step >= step) return p;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return std::nullopt;
}

// What the bench saw of one rank's progress file after a failure.
struct RankWatch {
  int64_t start_step = -1;   // its first step in the new incarnation (restored)
  double first_step_ms = 0;  // Unix ms it was first seen past start_step
};

void Watch(const Job& job, int rank, int64_t failed_incarnation, RankWatch& w) {
  std::optional<Progress> p = testing::ReadProgress(job.progress_dir, rank);
  if (!p.has_value() || p->incarnation <= failed_incarnation) return;
  if (w.start_step < 0) {
    w.start_step = p->step;
  } else if (w.first_step_ms == 0 && p->step > w.start_step) {
    w.first_step_ms = absl::ToUnixMicros(absl::Now()) / 1000.0;
  }
}

// Injects `n` failures into the running job, one after the other: each
// strikes a random rank a random 6-15 steps past the step the job last
// restored (so at least one checkpoint was taken since), and the next one
// waits until the incident of this one is closed (the job made its first new
// step).
void InjectFailures(const Job& job, int n, std::mt19937_64& rng, KindResult& out) {
  const char* sig = job.signal == SIGKILL ? "SIGKILL" : "SIGSTOP";
  int64_t inc = 1;
  int64_t base = 0;      // the step the current incarnation started from
  size_t accounted = 0;  // incidents explained so far
  for (int k = 0; k < n; ++k) {
    const int rank = static_cast<int>(rng() % kRanks);
    const int64_t target = base + 6 + static_cast<int64_t>(rng() % 10);
    std::optional<Progress> p =
        WaitForStep(job, rank, inc, target, k == 0 ? job.first_progress : job.recovery);
    if (!p.has_value()) {
      out.notes.push_back(absl::StrCat("failure ", k + 1, ": rank ", rank,
                                       " never reached step ", target, " of incarnation ",
                                       inc, "; stopped here"));
      return;
    }
    std::vector<v1::Incident> before = Incidents(job);
    for (size_t i = accounted; i < before.size(); ++i) {
      out.notes.push_back(
          absl::StrCat("an incident the bench did not cause (a false "
                       "detection?): ",
                       before[i].ShortDebugString()));
    }
    accounted = before.size();

    Sample s;
    s.rank = rank;
    s.step = p->step;
    s.injected_ms = absl::ToUnixMicros(absl::Now()) / 1000.0;
    if (kill(p->pid, job.signal) != 0) {
      out.notes.push_back(absl::StrCat("failure ", k + 1, ": kill(", p->pid, ", ", sig,
                                       "): ", std::strerror(errno), "; stopped here"));
      return;
    }
    // The incident is closed when its first new step is logged. Meanwhile
    // the progress files show when a rank of the new incarnation really
    // finished its first step: the coordinator learns of it only with that
    // rank's next heartbeat.
    std::optional<v1::Incident> closed;
    std::vector<RankWatch> watch(kRanks);
    const absl::Time deadline = absl::Now() + job.recovery;
    absl::Time settle = absl::InfiniteFuture();  // how long to watch after closing
    while (absl::Now() < deadline && absl::Now() < settle) {
      for (int r = 0; r < kRanks; ++r) Watch(job, r, p->incarnation, watch[r]);
      if (!closed.has_value()) {
        std::vector<v1::Incident> list = Incidents(job);
        if (list.size() > accounted && list[accounted].first_new_step_unix_ms() > 0) {
          closed = list[accounted];
          settle = absl::Now() + absl::Seconds(1);
        }
      }
      if (closed.has_value() &&
          std::any_of(watch.begin(), watch.end(),
                      [](const RankWatch& w) { return w.first_step_ms > 0; })) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    for (const RankWatch& w : watch) {
      if (w.first_step_ms > 0 &&
          (s.seen_first_step_ms == 0 || w.first_step_ms < s.seen_first_step_ms)) {
        s.seen_first_step_ms = w.first_step_ms;
      }
    }
    if (!closed.has_value()) {
      std::vector<v1::Incident> list = Incidents(job);
      out.notes.push_back(absl::StrCat(
          "failure ", k + 1, ": not recovered within ",
          absl::FormatDuration(job.recovery), "; stopped here. ",
          list.size() > accounted ? list[accounted].ShortDebugString() : "no incident"));
      return;
    }
    ++accounted;
    s.incident = *closed;
    const v1::Incident& i = s.incident;
    const char* want_kind = job.signal == SIGKILL ? "rank exit" : "heartbeat loss";
    if (i.kind() != want_kind || i.rank() != rank || i.incarnation() != p->incarnation) {
      out.notes.push_back(absl::StrCat("failure ", k + 1, ": ", sig, " to rank ", rank,
                                       " of incarnation ", p->incarnation,
                                       " was logged as: ", i.ShortDebugString()));
    }
    if (!i.scheduler_error().empty()) {
      out.notes.push_back(
          absl::StrCat("failure ", k + 1, ": scheduler error: ", i.scheduler_error()));
    }
    std::fprintf(stderr,
                 "  %s %2d/%d: %s rank %d at step %lld (incarnation %lld): detected "
                 "+%.2f s, ranks back +%.2f s, restored step %lld in %.2f s, first new "
                 "step +%.2f s\n",
                 out.kind.c_str(), k + 1, n, sig, rank, static_cast<long long>(s.step),
                 static_cast<long long>(p->incarnation), s.mttd(),
                 s.Seconds(i.ranks_back_unix_ms()),
                 static_cast<long long>(i.restored_step()), s.restore(), s.mttr());
    base = std::max<int64_t>(0, i.restored_step());
    inc = i.new_incarnation();
    out.samples.push_back(std::move(s));  // `i` refers into `s`: last
  }
  // A false detection after the last failure shows up here.
  std::vector<v1::Incident> after = Incidents(job);
  for (size_t i = accounted; i < after.size(); ++i) {
    out.notes.push_back(absl::StrCat("an incident the bench did not cause: ",
                                     after[i].ShortDebugString()));
  }
}

// "restored STEP ok MS ms" lines of the demo job: each restore is checked
// bit-exact against an uninterrupted run.
void CountRestores(const std::vector<std::string>& lines, KindResult& out) {
  for (const std::string& l : lines) {
    if (!absl::StartsWith(l, "restored ")) continue;
    if (absl::StrContains(l, " ok ")) {
      ++out.restores_ok;
    } else {
      ++out.restores_bad;
      out.notes.push_back(absl::StrCat("restore not bit-exact: ", l));
    }
  }
}

server::ServerOptions BenchServerOptions(const std::string& data_dir) {
  server::ServerOptions o;
  o.data_dir = data_dir;
  o.listen = "127.0.0.1:0";
  // The failure schedule is random: a failure may land before the save that
  // follows a restore has committed on both ranks. The restart-loop guard
  // (3 restarts without a newly committed step) must not end the run; it
  // does not change any timing.
  o.detector.monitor.max_restarts_without_progress = 1000;
  return o;
}

std::vector<std::string> DemoJobArgs(const std::string& progress_dir) {
  return {
      "--steps",        absl::StrCat(kSteps), "--save-every", absl::StrCat(kSaveEvery),
      "--mib",          absl::StrCat(kMib),   "--step-ms",    absl::StrCat(kStepMs),
      "--progress-dir", progress_dir};
}

// snapback-launch on this machine, with its defaults (heartbeat 1 s, stop
// grace 3 s).
KindResult RunLocal(const std::string& kind, int signal, int failures,
                    std::mt19937_64& rng) {
  KindResult out;
  out.kind = kind;
  testing::TempDir dir;
  auto server = server::Server::Start(BenchServerOptions(dir.path() + "/node"));
  if (!server.ok()) {
    out.skipped = absl::StrCat("the server did not start: ", server.status().ToString());
    return out;
  }
  const std::string progress = dir.path() + "/progress";
  std::filesystem::create_directories(progress);
  std::vector<std::string> argv = {Subprocess::BinPath("snapback-launch"),
                                   "--job",
                                   kind,
                                   "--nproc",
                                   absl::StrCat(kRanks),
                                   "--endpoint",
                                   (*server)->address(),
                                   "--",
                                   Subprocess::BinPath("snapback-demo-job")};
  for (std::string& a : DemoJobArgs(progress)) argv.push_back(std::move(a));
  {
    Launcher launcher(argv);
    const Job job{.server = server->get(),
                  .id = kind,
                  .progress_dir = progress,
                  .signal = signal,
                  .first_progress = absl::Seconds(60),
                  .recovery = absl::Seconds(60)};
    InjectFailures(job, failures, rng, out);
    // SIGTERM: the launcher stops the ranks (a frozen one is continued
    // first) and exits.
    launcher.Signal(SIGTERM);
    if (launcher.Wait(absl::Seconds(30)) < 0) {
      out.notes.push_back("snapback-launch did not stop within 30 s of SIGTERM");
    }
    CountRestores(launcher.Lines("restored "), out);
  }
  (*server)->Shutdown();
  return out;
}

// A private Slurm cluster (munged + slurmctld + slurmd on loopback), one
// batch job of two ranks submitted once with --requeue; the detector requeues
// it through the slurm adapter after each failure.
KindResult RunSlurm(int failures, std::mt19937_64& rng) {
  KindResult out;
  out.kind = "slurm-crash";
  // A short path: munge's socket lives under it.
  char tmpl[] = "/tmp/sbrecXXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    out.skipped = absl::StrCat("mkdtemp: ", std::strerror(errno));
    return out;
  }
  const std::string dir = tmpl;
  chmod(dir.c_str(), 0711);  // munged wants every directory above its socket searchable
  std::filesystem::create_directories(dir + "/slurm");
  std::filesystem::create_directories(dir + "/progress");
  auto cleanup = [&] {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  };
  auto cluster = testing::SlurmCluster::Start(dir + "/slurm");
  if (!cluster.ok()) {
    out.skipped = absl::StrCat(absl::IsFailedPrecondition(cluster.status())
                                   ? "Slurm cannot run here: "
                                   : "the Slurm cluster did not start: ",
                               cluster.status().message());
    cleanup();
    return out;
  }
  server::ServerOptions o = BenchServerOptions(dir + "/node");
  detector::SlurmAdapterOptions so;
  so.env = (*cluster)->env();
  auto slurm = std::make_shared<detector::SlurmAdapter>(so);
  o.scheduler_adapters.push_back(slurm);
  auto server = server::Server::Start(o);
  if (!server.ok()) {
    out.skipped = absl::StrCat("the server did not start: ", server.status().ToString());
    (*cluster)->Stop();
    cleanup();
    return out;
  }

  // The batch script, as in tests/slurm_restart_test.cc: both ranks are the
  // job's one task; a requeue runs the script again and the ranks learn the
  // new incarnation from the coordinator.
  const std::string output = dir + "/job.out";
  const std::string script = dir + "/job.sh";
  std::string demo = Subprocess::BinPath("snapback-demo-job");
  for (const std::string& a : DemoJobArgs(dir + "/progress"))
    absl::StrAppend(&demo, " ", a);
  std::ofstream(script) << "#!/bin/sh\n"
                        << "pids=\n"
                        << "for r in $(seq 0 " << kRanks - 1 << "); do\n"
                        << "  SNAPBACK_RANK=$r " << demo << " &\n"
                        << "  pids=\"$pids $!\"\n"
                        << "done\n"
                        << "rc=0\n"
                        << "for p in $pids; do wait $p || rc=1; done\n"
                        << "exit $rc\n";
  chmod(script.c_str(), 0755);
  const std::string job_id = "slurm-crash";
  // Exported to the job by sbatch (--export=ALL is Slurm's default).
  setenv("SNAPBACK_ENDPOINT", (*server)->address().c_str(), 1);
  setenv("SNAPBACK_JOB", job_id.c_str(), 1);
  setenv("SNAPBACK_WORLD_SIZE", absl::StrCat(kRanks).c_str(), 1);
  unsetenv("SNAPBACK_INCARNATION");
  unsetenv("SNAPBACK_DEMO_FAULTS");
  absl::StatusOr<std::string> id =
      (*cluster)->Sbatch(script, {"--open-mode=append", absl::StrCat("--output=", output),
                                  "--job-name=snapback-bench"});
  if (!id.ok()) {
    out.skipped = absl::StrCat("sbatch failed: ", id.status().ToString());
  } else {
    const Job job{.server = server->get(),
                  .id = job_id,
                  .progress_dir = dir + "/progress",
                  .signal = SIGKILL,
                  .first_progress = absl::Seconds(90),
                  .recovery = absl::Seconds(120)};
    InjectFailures(job, failures, rng, out);
    const detector::JobBinding binding{.job_id = job_id,
                                       .world_size = kRanks,
                                       .scheduler = "slurm",
                                       .scheduler_job_id = *id};
    if (absl::Status s = slurm->Cancel(binding, "benchmark done"); !s.ok()) {
      out.notes.push_back(absl::StrCat("scancel: ", s.ToString()));
    }
    if (out.samples.size() < static_cast<size_t>(failures)) {
      out.notes.push_back(absl::StrCat("Slurm logs: ", (*cluster)->LogTail(10)));
    }
  }
  (*server)->Shutdown();
  (*cluster)->Stop();
  std::vector<std::string> lines = absl::StrSplit(Slurp(output), '\n');
  CountRestores(lines, out);
  cleanup();
  return out;
}

// Nearest-rank percentile of `v` (not empty).
double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p * v.size()));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

template <typename F>
std::vector<double> Column(const KindResult& r, F f) {
  std::vector<double> v;
  for (const Sample& s : r.samples) v.push_back(f(s));
  return v;
}

std::string Dist(const std::vector<double>& v) {
  return absl::StrFormat("%7.2f %7.2f %7.2f", Percentile(v, 0.5), Percentile(v, 0.9),
                         Percentile(v, 1.0));
}

void Report(const Flags& flags, const std::vector<KindResult>& results) {
  std::printf(
      "\nrecovery_bench: %d failures per kind, %d ranks x %d MiB, %d ms steps, a save "
      "every %d steps, heartbeat 1 s (default), seed %llu\n",
      flags.failures, kRanks, kMib, kStepMs, kSaveEvery,
      static_cast<unsigned long long>(flags.seed));
  std::printf(
      "MTTD = detected - signal sent; MTTR = first new step - signal sent; restore = "
      "ranks back -> restored; relaunch = restart ordered -> ranks back (seconds)\n\n");
  std::printf("%-13s %3s   %-23s   %-23s   %-23s   %-8s\n", "", "",
              "-------- MTTD ---------", "-------- MTTR ---------",
              "------- restore -------", "relaunch");
  std::printf("%-13s %3s   %7s %7s %7s   %7s %7s %7s   %7s %7s %7s   %8s\n", "kind", "n",
              "p50", "p90", "max", "p50", "p90", "max", "p50", "p90", "max", "p50");
  for (const KindResult& r : results) {
    if (r.samples.empty()) {
      std::printf(
          "%-13s %3d   skipped: %s\n", r.kind.c_str(), 0,
          r.skipped.empty() ? "no failure completed (see below)" : r.skipped.c_str());
      continue;
    }
    std::printf("%-13s %3zu   %s   %s   %s   %8.2f\n", r.kind.c_str(), r.samples.size(),
                Dist(Column(r, [](const Sample& s) { return s.mttd(); })).c_str(),
                Dist(Column(r, [](const Sample& s) { return s.mttr(); })).c_str(),
                Dist(Column(r, [](const Sample& s) { return s.restore(); })).c_str(),
                Percentile(Column(r, [](const Sample& s) { return s.relaunch(); }), 0.5));
  }

  std::printf(
      "\nvs the defaults of the tools users have today (anchors-failure.md; ours = "
      "p50):\n");
  auto baseline = [](const KindResult& r, const char* what, double ours, double theirs,
                     const char* tool) {
    std::printf("  %-13s %-8s %7.2f s  vs %5.0f s  %-44s %6.0fx sooner\n", r.kind.c_str(),
                what, ours, theirs, tool, theirs / std::max(ours, 1e-3));
  };
  for (const KindResult& r : results) {
    if (r.samples.empty()) continue;
    const double mttd =
        Percentile(Column(r, [](const Sample& s) { return s.mttd(); }), 0.5);
    const double mttr =
        Percentile(Column(r, [](const Sample& s) { return s.mttr(); }), 0.5);
    if (absl::StrContains(r.kind, "freeze")) {
      baseline(r, "detect", mttd, kNcclTimeout, "NCCL timeout (hung/frozen peer)");
    } else {
      baseline(r, "detect", mttd, kTorchrunKeepAlive,
               "torchrun rendezvous keep-alive (5 s x 3)");
    }
    baseline(r, "recover", mttr, kSlurmRequeueDefault, "Slurm requeue, default hold-off");
  }

  std::printf("\ntargets (met = all n failures within the target):\n");
  auto target = [](const KindResult& r, const std::string& what, double worst,
                   double limit, const std::string& detail) {
    std::printf("  %-13s %-30s worst %6.2f s%-24s %s\n", r.kind.c_str(), what.c_str(),
                worst, detail.c_str(), worst <= limit ? "met" : "NOT MET");
  };
  for (const KindResult& r : results) {
    if (r.samples.empty()) continue;
    const bool freeze = absl::StrContains(r.kind, "freeze");
    const double mttd_max =
        Percentile(Column(r, [](const Sample& s) { return s.mttd(); }), 1.0);
    const double limit = freeze ? kTargetMttdFreeze : kTargetMttdCrash;
    target(r, absl::StrFormat("MTTD <= %.0f s", limit), mttd_max, limit, "");
    if (absl::StartsWith(r.kind, "slurm")) {
      target(r, absl::StrFormat("MTTR <= %.0f s", kTargetMttrSlurm),
             Percentile(Column(r, [](const Sample& s) { return s.mttr(); }), 1.0),
             kTargetMttrSlurm, "");
    } else {
      // Per failure: MTTR minus that failure's own restore time.
      const double worst = Percentile(
          Column(r, [](const Sample& s) { return s.mttr() - s.restore(); }), 1.0);
      target(r, absl::StrFormat("MTTR <= %.0f s + restore", kTargetMttrLocalOverRestore),
             worst, kTargetMttrLocalOverRestore, " (MTTR - restore)");
    }
  }

  std::printf("\nchecks and anything odd:\n");
  for (const KindResult& r : results) {
    if (r.samples.empty() && !r.skipped.empty()) {
      std::printf("  %-13s skipped: %s\n", r.kind.c_str(), r.skipped.c_str());
      continue;
    }
    std::printf(
        "  %-13s %zu/%d failures recovered in %.0f s; restores bit-exact: %d of %d\n",
        r.kind.c_str(), r.samples.size(), flags.failures, r.wall_s, r.restores_ok,
        r.restores_ok + r.restores_bad);
    std::vector<double> lag;
    for (const Sample& s : r.samples) {
      if (s.seen_first_step_ms > 0) {
        lag.push_back((s.incident.first_new_step_unix_ms() - s.seen_first_step_ms) /
                      1000.0);
      }
    }
    if (!lag.empty()) {
      std::printf(
          "  %-13s the log's first new step came %.2f s (p50; max %.2f s) after the "
          "bench saw it in a progress file: the step rides on the rank's next "
          "heartbeat\n",
          r.kind.c_str(), Percentile(lag, 0.5), Percentile(lag, 1.0));
    }
    if (!r.samples.empty()) {
      // A recovery more than twice the median is worth a look.
      const double median =
          Percentile(Column(r, [](const Sample& s) { return s.mttr(); }), 0.5);
      for (size_t k = 0; k < r.samples.size(); ++k) {
        const Sample& s = r.samples[k];
        if (s.mttr() > 2 * median) {
          std::printf(
              "  %-13s failure %zu: MTTR %.2f s (median %.2f): detected +%.2f, restart "
              "ordered +%.2f, ranks back +%.2f, restored +%.2f\n",
              r.kind.c_str(), k + 1, s.mttr(), median, s.mttd(),
              s.Seconds(s.incident.restart_requested_unix_ms()),
              s.Seconds(s.incident.ranks_back_unix_ms()),
              s.Seconds(s.incident.restored_unix_ms()));
        }
      }
    }
    for (const std::string& n : r.notes) {
      std::printf("  %-13s %s\n", r.kind.c_str(), n.c_str());
    }
  }
}

int Main(int argc, char** argv) {
  const Flags flags = ParseFlags(argc, argv);
  // The tools live in ../bin beside this binary (build/<preset>/bench).
  if (std::getenv("SNAPBACK_BIN_DIR") == nullptr) {
    std::error_code ec;
    const std::filesystem::path self =
        std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) setenv("SNAPBACK_BIN_DIR", (self.parent_path() / "../bin").c_str(), 1);
  }
  for (const char* tool : {"snapback-launch", "snapback-demo-job"}) {
    if (access(Subprocess::BinPath(tool).c_str(), X_OK) != 0) {
      std::fprintf(stderr, "recovery_bench: %s not found (set SNAPBACK_BIN_DIR)\n",
                   Subprocess::BinPath(tool).c_str());
      return 1;
    }
  }
  std::mt19937_64 rng(flags.seed);
  std::vector<KindResult> results;
  for (const std::string& kind : flags.kinds) {
    std::fprintf(stderr, "%s: %d failures ...\n", kind.c_str(), flags.failures);
    const absl::Time start = absl::Now();
    KindResult r = kind == "local-crash"    ? RunLocal(kind, SIGKILL, flags.failures, rng)
                   : kind == "local-freeze" ? RunLocal(kind, SIGSTOP, flags.failures, rng)
                                            : RunSlurm(flags.failures, rng);
    r.wall_s = absl::ToDoubleSeconds(absl::Now() - start);
    if (!r.skipped.empty()) {
      std::fprintf(stderr, "%s skipped: %s\n", kind.c_str(), r.skipped.c_str());
    }
    results.push_back(std::move(r));
  }
  Report(flags, results);
  for (const KindResult& r : results) {
    if (r.skipped.empty() && r.samples.size() < static_cast<size_t>(flags.failures)) {
      return 1;
    }
    if (r.restores_bad > 0) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace snapback

int main(int argc, char** argv) { return snapback::Main(argc, argv); }
