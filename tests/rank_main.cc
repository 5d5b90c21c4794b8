// snapback-test-rank: one training rank as a process, for the multi-process
// client tests. Saves deterministic tensors (a function of rank and step),
// or restores and checks them bit for bit.
//
//   snapback-test-rank --endpoint H:P --job J --rank R --world W
//       [--incarnation I] [--steps 1,2,3] [--mib N] [--chunk-kib K]
//       [--staging-mib S] [--restore-check]
//
// Prints "saving STEP" before each Save(), "saved STEP" after it is durable
// and committed, "restored STEP" after a verified restore, and with
// --staging-mib "rss BASE PEAK" (KiB, VmRSS before the saves and VmHWM
// after). Exit 0 on success, 1 on any failure (one line on stderr).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/flags.h"
#include "snapback/client.h"
#include "testing/test_util.h"

ABSL_FLAG(std::string, endpoint, "",
          "the server, HOST:PORT (default: SNAPBACK_ENDPOINT)");
ABSL_FLAG(std::string, job, "", "job id (default: SNAPBACK_JOB)");
ABSL_FLAG(int, rank, snapback::CheckpointerOptions{}.rank,
          "rank (default: SNAPBACK_RANK)");
ABSL_FLAG(int, world, snapback::CheckpointerOptions{}.world_size,
          "world size (default: SNAPBACK_WORLD_SIZE)");
ABSL_FLAG(int64_t, incarnation, snapback::CheckpointerOptions{}.incarnation,
          "incarnation (default: SNAPBACK_INCARNATION)");
ABSL_FLAG(uint64_t, mib, 4, "MiB of tensor data per save");
ABSL_FLAG(int64_t, chunk_kib, 0, "chunk size in KiB (0: the library's default)");
ABSL_FLAG(int64_t, staging_mib, 0,
          "staging memory in MiB (0: the library's default); set = report peak RSS");
ABSL_FLAG(bool, restore_check, false, "restore the latest step first and verify it");
ABSL_FLAG(std::string, steps, "1", "steps to save, comma-separated");

namespace {

constexpr char kUsage[] =
    "usage: snapback-test-rank [--endpoint HOST:PORT] [--job J] [--rank R] [--world N]\n"
    "                          [--steps 1,2,...] [--mib N] [--restore-check]\n"
    "\n"
    "One rank of the client process tests: saves synthetic tensors at the given steps.";

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "snapback-test-rank: %s\n", what.c_str());
  std::exit(1);
}

uint64_t ProcStatusKib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0)
      return std::strtoull(line.c_str() + std::strlen(field), nullptr, 10);
  }
  return 0;
}

std::string TensorBytes(int rank, int64_t step, uint64_t bytes) {
  return snapback::testing::MakeBytes(bytes, rank * 1000003ull + step, false);
}

}  // namespace

int main(int argc, char** argv) {
  snapback::ParseCommandLineOrExit(argc, argv, "snapback-test-rank", kUsage, __FILE__);
  snapback::ClientOptions co;
  snapback::CheckpointerOptions o;
  co.endpoint = absl::GetFlag(FLAGS_endpoint);
  o.job_id = absl::GetFlag(FLAGS_job);
  o.rank = absl::GetFlag(FLAGS_rank);
  o.world_size = absl::GetFlag(FLAGS_world);
  o.incarnation = absl::GetFlag(FLAGS_incarnation);
  const uint64_t mib = absl::GetFlag(FLAGS_mib);
  if (absl::GetFlag(FLAGS_chunk_kib) > 0)
    o.chunk_bytes = absl::GetFlag(FLAGS_chunk_kib) << 10;
  const bool report_rss = absl::GetFlag(FLAGS_staging_mib) > 0;
  if (report_rss) o.staging_bytes = absl::GetFlag(FLAGS_staging_mib) << 20;
  const bool restore_check = absl::GetFlag(FLAGS_restore_check);
  std::vector<int64_t> steps;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_steps), ',')) {
    int64_t n;
    if (!absl::SimpleAtoi(s, &n)) Fail("--steps takes numbers separated by commas");
    steps.push_back(n);
  }
  o.compress = false;
  auto client = snapback::Client::Connect(co);
  if (!client.ok()) Fail(client.status().ToString());
  auto ck = (*client)->NewCheckpointer(o);
  if (!ck.ok()) Fail(ck.status().ToString());
  const int rank = o.rank;

  if (restore_check) {
    auto r = (*ck)->Restore();
    if (!r.ok()) Fail(r.status().ToString());
    if (r->tensors.size() != 1 ||
        r->tensors[0].bytes != TensorBytes(rank, r->step, mib << 20)) {
      Fail("restored bytes differ from what was saved at step " +
           std::to_string(r->step));
    }
    std::printf("restored %lld\n", static_cast<long long>(r->step));
    std::fflush(stdout);
    return 0;
  }

  const uint64_t base_rss = ProcStatusKib("VmRSS:");
  for (int64_t step : steps) {
    std::string w = TensorBytes(rank, step, mib << 20);
    snapback::TensorView t{.name = "w",
                           .dtype = snapback::DType::kUInt8,
                           .shape = {static_cast<int64_t>(w.size())}};
    t.data = w.data();
    std::printf("saving %lld\n", static_cast<long long>(step));
    std::fflush(stdout);
    auto h = (*ck)->Save(step, {t});
    if (!h.ok()) Fail(h.status().ToString());
    absl::Status s = h->Wait();
    if (!s.ok()) Fail(s.ToString());
    std::printf("saved %lld\n", static_cast<long long>(step));
    std::fflush(stdout);
  }
  if (report_rss) {
    std::printf("rss %llu %llu\n", static_cast<unsigned long long>(base_rss),
                static_cast<unsigned long long>(ProcStatusKib("VmHWM:")));
  }
  absl::Status s = (*ck)->Close();
  if (!s.ok()) Fail(s.ToString());
  return 0;
}
