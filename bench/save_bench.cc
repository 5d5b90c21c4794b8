// Checkpoint save/restore benchmark: one rank against an embedded server in
// this process (coordinator + storage, real disk), each figure printed beside
// its baseline from the same run:
//   Save() blocking time      vs  memcpy of the same bytes
//   overlap-mode blocking     vs  the 5 ms budget
//   time to durable           vs  raw O_DIRECT write of the same bytes
//   restore (verified)        vs  raw O_DIRECT read of the same bytes
//   bytes sent for 100 %, 10 % and 0 % of chunks changed
//
//   save_bench [--dir DIR] [--mib 256,1024]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/raw_io.h"
#include "common/flags.h"
#include "common/malloc_tuning.h"
#include "server/server.h"
#include "snapback/client.h"
#include "testing/test_util.h"

ABSL_FLAG(std::string, dir, "", "scratch directory (default: a temporary one here)");
ABSL_FLAG(std::string, mib, "256,1024", "checkpoint sizes in MiB, comma-separated");

namespace snapback {
namespace {

constexpr char kUsage[] =
    "usage: save_bench [--dir DIR] [--mib 256,1024]\n"
    "\n"
    "Checkpointer::Save (blocked time, durable time) and restore beside memcpy and raw\n"
    "writes/reads of the same bytes.";

[[noreturn]] void Die(const absl::Status& s, const char* what) {
  std::fprintf(stderr, "save_bench: %s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

void RunSize(const std::string& dir, uint64_t mib) {
  const uint64_t bytes = mib << 20;
  std::fprintf(stderr, "preparing %llu MiB of fp32 weights ...\n",
               static_cast<unsigned long long>(mib));
  std::string weights = testing::MakeBytes(bytes, mib, true);

  std::filesystem::remove_all(dir + "/node");
  server::ServerOptions so;
  so.data_dir = dir + "/node";
  auto server = server::Server::Start(so);
  if (!server.ok()) Die(server.status(), "start server");
  auto client = Client::Connect({.endpoint = (*server)->address()});
  if (!client.ok()) Die(client.status(), "connect");

  auto make = [&](const std::string& job, bool overlap) {
    CheckpointerOptions o;
    o.job_id = job;
    o.rank = 0;
    o.world_size = 1;
    o.incarnation = 1;
    o.overlap = overlap;
    // The staging half of the cap holds a whole checkpoint, so Save() never
    // waits for uploads (see CheckpointerOptions::staging_bytes).
    o.staging_bytes = 2 * bytes + (64 << 20);
    auto ck = (*client)->NewCheckpointer(o);
    if (!ck.ok()) Die(ck.status(), "checkpointer");
    return *std::move(ck);
  };
  TensorView t{
      .name = "w", .dtype = DType::kFloat32, .shape = {static_cast<int64_t>(bytes / 4)}};
  t.data = weights.data();

  // memcpy baseline into warm memory (as the staging pool is after a save).
  std::string copy(bytes, '\0');
  std::memcpy(copy.data(), weights.data(), bytes);
  absl::Time t0 = absl::Now();
  std::memcpy(copy.data(), weights.data(), bytes);
  const absl::Duration memcpy_time = absl::Now() - t0;
  copy = std::string();

  auto ck = make("bench", false);
  struct Row {
    const char* what;
    SaveStats stats;
  };
  std::vector<Row> rows;
  auto save = [&](int64_t step, const char* what) {
    auto h = ck->Save(step, {t});
    if (!h.ok()) Die(h.status(), "save");
    absl::Status s = h->Wait();
    if (!s.ok()) Die(s, "save");
    rows.push_back({what, h->stats()});
  };
  save(1, "100% changed (cold pool)");
  for (uint64_t c = 0; c < bytes; c += 10 * (4 << 20)) weights[c + 5] ^= 1;  // 10 %
  save(2, "10% changed");
  save(3, "0% changed");
  for (uint64_t c = 0; c < bytes; c += 4 << 10) weights[c] ^= 1;  // every chunk
  save(4, "100% changed (warm pool)");

  auto ov = make("bench-overlap", true);
  auto oh = ov->Save(1, {t});
  if (!oh.ok()) Die(oh.status(), "overlap save");
  const absl::Duration overlap_blocked = oh->stats().blocked;
  if (absl::Status s = oh->Wait(); !s.ok()) Die(s, "overlap save");
  auto oh2 = ov->Save(2, {t});
  if (!oh2.ok()) Die(oh2.status(), "overlap save");
  const absl::Duration overlap_blocked_warm = oh2->stats().blocked;
  if (absl::Status s = oh2->Wait(); !s.ok()) Die(s, "overlap save");

  auto reader = make("bench", false);
  t0 = absl::Now();
  auto restored = ck->Restore(4);
  const absl::Duration restore_time = absl::Now() - t0;
  if (!restored.ok()) Die(restored.status(), "restore");
  if (restored->tensors[0].bytes != weights) {
    std::fprintf(stderr, "save_bench: restore is not bit-exact\n");
    std::exit(1);
  }
  // Into memory the caller already has (as a training job restores into its
  // model's tensors): no allocation in the timed part.
  std::string target(bytes, '\0');
  MutableTensorView mt{.name = "w",
                       .dtype = DType::kFloat32,
                       .shape = {static_cast<int64_t>(bytes / 4)},
                       .data = target.data()};
  t0 = absl::Now();
  auto into = ck->RestoreInto({mt}, 4);
  const absl::Duration restore_into_time = absl::Now() - t0;
  if (!into.ok()) Die(into.status(), "restore into");
  if (target != weights) {
    std::fprintf(stderr, "save_bench: RestoreInto is not bit-exact\n");
    std::exit(1);
  }
  (void)ck->Close();
  (void)ov->Close();
  server->reset();

  auto fs = storage::DefaultFileSystem();
  auto [raw_write_s, raw_read_s] =
      storage::RawWriteReadBytes(fs.get(), dir, weights.data(), bytes, 4 << 20, 16, 2);

  const double mb = bytes / 1e6;
  std::printf(
      "\n== %llu MiB of fp32, 4 MiB chunks, compression where it pays (fp32: raw), 1 "
      "rank ==\n",
      static_cast<unsigned long long>(mib));
  std::printf("memcpy of the same bytes           %8.1f ms  (%.0f MB/s)\n",
              Ms(memcpy_time), mb / absl::ToDoubleSeconds(memcpy_time));
  std::printf("raw O_DIRECT write + fdatasync     %8.1f ms  (%.0f MB/s)\n",
              raw_write_s * 1e3, mb / raw_write_s);
  std::printf("raw O_DIRECT read                  %8.1f ms  (%.0f MB/s)\n",
              raw_read_s * 1e3, mb / raw_read_s);
  std::printf("\n%-26s %10s %9s %12s %9s %10s %12s %9s\n", "save", "blocked ms",
              "x memcpy", "durable ms", "MB/s", "x raw wr", "sent MB", "% of full");
  const double full_sent = rows[0].stats.sent_bytes;
  for (const Row& r : rows) {
    const double durable_s = absl::ToDoubleSeconds(r.stats.to_durable);
    std::printf("%-26s %10.1f %8.2fx %12.1f %9.0f %9.2fx %12.1f %8.1f%%\n", r.what,
                Ms(r.stats.blocked), Ms(r.stats.blocked) / Ms(memcpy_time),
                durable_s * 1e3, mb / durable_s, raw_write_s / durable_s,
                r.stats.sent_bytes / 1e6, 100.0 * r.stats.sent_bytes / full_sent);
  }
  std::printf(
      "overlap mode: Save() blocked %.2f ms (cold pool), %.2f ms (warm); budget 5 ms\n",
      Ms(overlap_blocked), Ms(overlap_blocked_warm));
  std::printf("restore (SHA-256 verified) %.1f ms = %.0f MB/s, %.2fx raw read time\n",
              Ms(restore_time), mb / absl::ToDoubleSeconds(restore_time),
              absl::ToDoubleSeconds(restore_time) / raw_read_s);
  std::printf("restore into caller memory  %.1f ms = %.0f MB/s, %.2fx raw read time\n",
              Ms(restore_into_time), mb / absl::ToDoubleSeconds(restore_into_time),
              absl::ToDoubleSeconds(restore_into_time) / raw_read_s);
}

int Main(int argc, char** argv) {
  TuneMallocForLargeBuffers();
  ParseCommandLineOrExit(argc, argv, "save_bench", kUsage, __FILE__);
  std::string dir = absl::GetFlag(FLAGS_dir);
  std::vector<uint64_t> sizes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_mib), ',')) {
    uint64_t n;
    if (!absl::SimpleAtoi(s, &n) || n == 0) {
      ExitBadFlag("save_bench", "--mib takes sizes in MiB, e.g. 256,1024");
    }
    sizes.push_back(n);
  }
  const bool own = dir.empty();
  if (own) {
    std::string tmpl = std::filesystem::current_path().string() + "/.bench-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::fprintf(stderr, "save_bench: cannot create a scratch dir here; pass --dir\n");
      return 1;
    }
    dir = tmpl;
  }
  for (uint64_t mib : sizes) RunSize(dir, mib);
  if (own) std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace snapback

int main(int argc, char** argv) { return snapback::Main(argc, argv); }
