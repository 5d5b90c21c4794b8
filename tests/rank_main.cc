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

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "snapback/client.h"
#include "testing/test_util.h"

namespace {

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
  snapback::ClientOptions co;
  snapback::CheckpointerOptions o;
  std::vector<int64_t> steps = {1};
  uint64_t mib = 4;
  bool restore_check = false;
  bool report_rss = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Fail(a + " needs a value");
      return argv[++i];
    };
    auto number = [&]() -> int64_t {
      int64_t n;
      std::string v = value();
      if (!absl::SimpleAtoi(v, &n)) Fail(a + " needs a number");
      return n;
    };
    if (a == "--endpoint")
      co.endpoint = value();
    else if (a == "--job")
      o.job_id = value();
    else if (a == "--rank")
      o.rank = static_cast<int>(number());
    else if (a == "--world")
      o.world_size = static_cast<int>(number());
    else if (a == "--incarnation")
      o.incarnation = number();
    else if (a == "--mib")
      mib = number();
    else if (a == "--chunk-kib")
      o.chunk_bytes = number() << 10;
    else if (a == "--staging-mib") {
      o.staging_bytes = number() << 20;
      report_rss = true;
    } else if (a == "--restore-check")
      restore_check = true;
    else if (a == "--steps") {
      steps.clear();
      for (absl::string_view s : absl::StrSplit(value(), ',')) {
        int64_t n;
        if (!absl::SimpleAtoi(s, &n)) Fail("--steps takes numbers separated by commas");
        steps.push_back(n);
      }
    } else
      Fail("unknown flag " + a);
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
