// snapback-demo-job: one rank of a synthetic training job, for ./dev demo.
//
// Every rank holds four fp32 "layers" (64 MiB by default). Each step
// deterministically updates the head every step and one block of a body
// layer now and then, so a state at step s is a pure function of (rank, s):
// a restarted rank can prove that what it restored is bit-identical to what
// an uninterrupted run had, and that its final state is too.
//
//   snapback-demo-job --steps 30 --save-every 5 [--mib 64] [--step-ms 0]
//                     [--kill-self-mid-save STEP] [--progress-dir DIR]
// Job, rank, world size, incarnation and endpoint come from SNAPBACK_*
// (snapback-launch sets them). --step-ms stands for the compute of a step;
// --progress-dir makes each rank keep DIR/rank<R> up to date with
// "PID INCARNATION STEP" (for a demo that picks a rank to kill or freeze);
// --kill-self-mid-save acts in incarnation 1 only.
//
// Fault injection for the failure-detector tests, from the environment:
//   SNAPBACK_DEMO_FAULTS="INC:RANK:WHAT:N[,...]"  in incarnation INC, rank RANK:
//     train    SIGKILLs itself at the N-th step it runs
//     save     SIGKILLs itself right after its N-th Save() returned (mid-upload)
//     restore  SIGKILLs itself N ms into its restore (at once when there is
//              nothing to restore)
//     hang     stops advancing at the N-th step (heartbeats go on: a hung
//              collective)
//     exit78   exits with 78 ("do not restart") at the N-th step
//
// Prints one line per event: "start", "restored STEP ok", "save STEP stall_ms
// new_MB logical_MB durable_ms committed", "done STEP ok". Exits 0 when the
// final state matches the uninterrupted run, 1 on any failure.
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/flags.h"
#include "snapback/client.h"

ABSL_FLAG(int64_t, steps, 30, "train this many steps");
ABSL_FLAG(int64_t, save_every, 5, "save a checkpoint every this many steps");
ABSL_FLAG(uint64_t, mib, 64, "MiB of fp32 parameters per rank");
ABSL_FLAG(
    int64_t, kill_self_mid_save, -1,
    "SIGKILL this rank right after Save() of this step returns (incarnation 1 only)");
ABSL_FLAG(int64_t, step_ms, 0, "milliseconds of stand-in compute per step");
ABSL_FLAG(std::string, progress_dir, "",
          "keep DIR/rank<R> up to date with \"PID INCARNATION STEP\"");

namespace {

constexpr char kUsage[] =
    "usage: snapback-demo-job [--steps N] [--save-every N] [--mib N] [--step-ms N]\n"
    "                         [--kill-self-mid-save STEP] [--progress-dir DIR]\n"
    "\n"
    "One rank of a synthetic training job (./dev demo, the failure-detector tests).\n"
    "Job, rank, world size, incarnation and endpoint come from SNAPBACK_* "
    "(snapback-launch\n"
    "sets them). Exits 0 when the final state matches an uninterrupted run.";

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "snapback-demo-job: %s\n", what.c_str());
  std::exit(1);
}

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

constexpr int kLayers = 4;
constexpr size_t kBlock = 1 << 18;  // floats per update block (1 MiB)

struct Model {
  std::vector<std::vector<float>> layers;

  Model(int rank, size_t floats_per_layer) : layers(kLayers) {
    for (int l = 0; l < kLayers; ++l) {
      layers[l].resize(floats_per_layer);
      for (size_t i = 0; i < floats_per_layer; ++i) {
        layers[l][i] =
            static_cast<float>((Mix(rank * 131 + l * 7 + i) % 2001) - 1000) * 1e-4f;
      }
    }
  }

  // One training step: the head (last layer) changes every step; one block
  // of a body layer every third step.
  void Step(int rank, int64_t step) {
    auto update = [&](std::vector<float>& w, size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) {
        float g = static_cast<float>(
                      (Mix(rank * 1000003ULL + step * 7919ULL + i) % 2001) - 1000) *
                  1e-6f;
        w[i] = w[i] * 0.999f - g;
      }
    };
    std::vector<float>& head = layers[kLayers - 1];
    const size_t head_blocks = std::max<size_t>(1, head.size() / kBlock);
    const size_t hb = Mix(step * 17 + rank) % head_blocks;
    update(head, hb * kBlock, std::min(head.size(), (hb + 1) * kBlock));
    if (step % 3 == 0) {
      std::vector<float>& body = layers[Mix(step) % (kLayers - 1)];
      const size_t blocks = std::max<size_t>(1, body.size() / kBlock);
      const size_t b = Mix(step * 31 + rank) % blocks;
      update(body, b * kBlock, std::min(body.size(), (b + 1) * kBlock));
    }
  }

  std::vector<snapback::TensorView> Views() const {
    std::vector<snapback::TensorView> views;
    for (int l = 0; l < kLayers; ++l) {
      snapback::TensorView t;
      t.name = absl::StrCat("layer", l, ".weight");
      t.dtype = snapback::DType::kFloat32;
      t.shape = {static_cast<int64_t>(layers[l].size())};
      t.data = layers[l].data();
      views.push_back(std::move(t));
    }
    return views;
  }

  bool operator==(const Model& o) const {
    for (int l = 0; l < kLayers; ++l) {
      if (std::memcmp(layers[l].data(), o.layers[l].data(), layers[l].size() * 4) != 0) {
        return false;
      }
    }
    return true;
  }
};

// Rewrites DIR/rank<R> with "PID INCARNATION STEP" (renamed into place, so
// a reader never sees half a line).
void WriteProgress(const std::string& dir, int rank, int64_t incarnation, int64_t step) {
  if (dir.empty()) return;
  const std::string path = absl::StrCat(dir, "/rank", rank);
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(f, "%d %lld %lld\n", static_cast<int>(getpid()),
               static_cast<long long>(incarnation), static_cast<long long>(step));
  std::fclose(f);
  std::rename(tmp.c_str(), path.c_str());
}

struct Fault {
  std::string what;
  int64_t n = 0;
};

// This rank's fault in this incarnation, from SNAPBACK_DEMO_FAULTS.
std::optional<Fault> MyFault(int rank, int64_t incarnation) {
  const char* env = std::getenv("SNAPBACK_DEMO_FAULTS");
  if (env == nullptr) return std::nullopt;
  for (absl::string_view spec : absl::StrSplit(env, ',', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(spec, ':');
    int64_t inc = 0, r = 0, n = 0;
    if (f.size() != 4 || !absl::SimpleAtoi(f[0], &inc) || !absl::SimpleAtoi(f[1], &r) ||
        !absl::SimpleAtoi(f[3], &n)) {
      Fail(absl::StrCat("bad SNAPBACK_DEMO_FAULTS entry '", spec,
                        "': use INC:RANK:WHAT:N"));
    }
    if (inc == incarnation && r == rank) return Fault{f[2], n};
  }
  return std::nullopt;
}

// The state an uninterrupted run has after `steps` steps.
Model Reference(int rank, size_t floats, int64_t steps) {
  Model m(rank, floats);
  for (int64_t s = 1; s <= steps; ++s) m.Step(rank, s);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  snapback::ParseCommandLineOrExit(argc, argv, "snapback-demo-job", kUsage, __FILE__);
  const int64_t steps = absl::GetFlag(FLAGS_steps);
  const int64_t save_every = absl::GetFlag(FLAGS_save_every);
  const uint64_t mib = absl::GetFlag(FLAGS_mib);
  int64_t kill_at = absl::GetFlag(FLAGS_kill_self_mid_save);
  const int64_t step_ms = absl::GetFlag(FLAGS_step_ms);
  const std::string progress_dir = absl::GetFlag(FLAGS_progress_dir);
  const size_t floats = (mib << 20) / 4 / kLayers;

  auto client = snapback::Client::Connect({});
  if (!client.ok()) Fail(client.status().ToString());
  auto ck = (*client)->NewCheckpointer({});
  if (!ck.ok()) Fail(ck.status().ToString());
  const int rank =
      std::atoi(std::getenv("SNAPBACK_RANK") ? std::getenv("SNAPBACK_RANK") : "0");
  // From SNAPBACK_INCARNATION, or the coordinator's (a Slurm requeue).
  const int64_t incarnation = (*ck)->incarnation();
  if (incarnation != 1) kill_at = -1;
  const std::optional<Fault> fault = MyFault(rank, incarnation);
  auto fault_is = [&](const char* what) {
    return fault.has_value() && fault->what == what;
  };

  Model model(rank, floats);
  int64_t start = 0;
  std::thread verifier;
  auto latest = (*ck)->LatestStep();
  if (!latest.ok()) Fail(latest.status().ToString());
  if (latest->has_value()) {
    // Straight into the model's memory: no extra copy.
    std::vector<snapback::MutableTensorView> targets;
    for (int l = 0; l < kLayers; ++l) {
      targets.push_back({.name = absl::StrCat("layer", l, ".weight"),
                         .dtype = snapback::DType::kFloat32,
                         .shape = {static_cast<int64_t>(floats)},
                         .data = model.layers[l].data()});
    }
    if (fault_is("restore")) {
      // Dies partway into the restore, whatever the restore is doing then.
      std::thread([ms = fault->n] {
        absl::SleepFor(absl::Milliseconds(ms));
        raise(SIGKILL);
      }).detach();
    }
    auto r = (*ck)->RestoreInto(targets, **latest);
    if (!r.ok()) Fail(r.status().ToString());
    start = r->step;
    // The proof that the restore is bit-exact recomputes the reference from
    // step 0, which takes longer the further the job got: run it on a copy,
    // beside training, so it does not delay the first new step (and MTTR).
    verifier = std::thread([rank, floats, start, restored = model,
                            ms = absl::ToDoubleMilliseconds(r->elapsed)] {
      const bool exact = restored == Reference(rank, floats, start);
      std::printf("restored %lld %s %.0f ms\n", static_cast<long long>(start),
                  exact ? "ok" : "MISMATCH", ms);
      std::fflush(stdout);
      if (!exact) Fail("restored state differs from the uninterrupted run");
    });
  } else {
    // Nothing to restore: a restore fault strikes where the restore would be.
    if (fault_is("restore")) raise(SIGKILL);
    std::printf("start\n");
    std::fflush(stdout);
  }

  snapback::SaveHandle last;
  (*ck)->ReportStep(start);
  WriteProgress(progress_dir, rank, incarnation, start);
  int64_t steps_run = 0, saves_run = 0;
  for (int64_t step = start + 1; step <= steps; ++step) {
    ++steps_run;
    if (fault.has_value() && steps_run == fault->n) {
      if (fault->what == "train") raise(SIGKILL);
      if (fault->what == "exit78") {
        std::printf("exiting with 78 (do not restart) at step %lld\n",
                    static_cast<long long>(step));
        std::fflush(stdout);
        std::exit(78);
      }
      if (fault->what == "hang") {
        std::printf("hanging at step %lld\n", static_cast<long long>(step));
        std::fflush(stdout);
        for (;;) absl::SleepFor(absl::Hours(1));  // a collective that never returns
      }
    }
    model.Step(rank, step);
    if (step_ms > 0) absl::SleepFor(absl::Milliseconds(step_ms));  // the step's compute
    (*ck)->ReportStep(step);
    WriteProgress(progress_dir, rank, incarnation, step);
    if (step % save_every != 0) continue;
    // The previous save must be durable before the next (max_inflight 1);
    // its figures are reported now.
    auto h = (*ck)->Save(step, model.Views());
    if (!h.ok()) Fail(h.status().ToString());
    if (fault_is("save") && ++saves_run == fault->n) raise(SIGKILL);
    if (step == kill_at) {
      // The snapshot is taken, the upload is under way: die the hard way.
      std::printf("killing myself mid-save at step %lld\n", static_cast<long long>(step));
      std::fflush(stdout);
      raise(SIGKILL);
    }
    absl::Status s = h->Wait();
    if (!s.ok()) Fail(s.ToString());
    const snapback::SaveStats st = h->stats();
    std::printf("save %lld %.1f %.1f %.1f %.1f %s\n", static_cast<long long>(step),
                absl::ToDoubleMilliseconds(st.blocked), st.new_bytes / 1e6,
                st.logical_bytes / 1e6, absl::ToDoubleMilliseconds(st.to_durable),
                st.checkpoint_committed ? "committed" : "-");
    std::fflush(stdout);
  }
  if (verifier.joinable()) verifier.join();
  if (absl::Status s = (*ck)->Close(); !s.ok()) Fail(s.ToString());
  const bool exact = model == Reference(rank, floats, steps);
  std::printf("done %lld %s\n", static_cast<long long>(steps), exact ? "ok" : "MISMATCH");
  return exact ? 0 : 1;
}
