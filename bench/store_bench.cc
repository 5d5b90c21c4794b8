// End-to-end chunk-store benchmark (db_bench style): write and read
// throughput of 4 MiB chunks, printed beside a raw baseline measured in the
// same run on the same disk through the same io_uring code (sequential
// O_DIRECT writes and reads of the same bytes), as ratios.
//
//   store_bench [--dir DIR] [--mib 1024] [--chunk-mib 4] [--threads 2]
//               [--reps 3] [--batch 16] [--io auto|io_uring|pwrite]
//
// --batch is the number of chunks per Put() call (the storage service puts
// what one stream buffered: up to 64 MiB).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/types/span.h"
#include "bench/raw_io.h"
#include "common/codec.h"
#include "common/flags.h"
#include "common/malloc_tuning.h"
#include "storage/chunk_store.h"
#include "storage/file_system.h"
#include "testing/test_util.h"

ABSL_FLAG(std::string, dir, "", "scratch directory (default: a temporary one here)");
ABSL_FLAG(uint64_t, mib, 1024, "MiB written per repetition");
ABSL_FLAG(uint64_t, chunk_mib, 4, "chunk size in MiB");
ABSL_FLAG(uint64_t, threads, 2, "writer threads");
ABSL_FLAG(uint64_t, reps, 3, "repetitions (the median is reported)");
ABSL_FLAG(uint64_t, batch, 16, "chunks per Put");
ABSL_FLAG(std::string, io, "auto", "segment writes: auto, io_uring or pwrite");

namespace snapback::storage {
namespace {

struct Flags {
  std::string dir;
  uint64_t mib = 1024;
  uint64_t chunk_mib = 4;
  int threads = 2;
  int reps = 3;
  int batch = 16;
  IoEngine engine = IoEngine::kAuto;
};

constexpr char kUsage[] =
    "usage: store_bench [--dir DIR] [--mib N] [--chunk-mib N] [--threads N] [--reps N]\n"
    "                   [--batch N] [--io auto|io_uring|pwrite]\n"
    "\n"
    "Chunk store write and read throughput beside dd/raw O_DIRECT writes of the same "
    "bytes.";

[[noreturn]] void Usage(const std::string& why) { ExitBadFlag("store_bench", why); }

Flags Parse(int argc, char** argv) {
  ParseCommandLineOrExit(argc, argv, "store_bench", kUsage, __FILE__);
  Flags f;
  f.dir = absl::GetFlag(FLAGS_dir);
  for (auto [name, value] : {std::pair{"mib", absl::GetFlag(FLAGS_mib)},
                             std::pair{"chunk-mib", absl::GetFlag(FLAGS_chunk_mib)},
                             std::pair{"threads", absl::GetFlag(FLAGS_threads)},
                             std::pair{"reps", absl::GetFlag(FLAGS_reps)},
                             std::pair{"batch", absl::GetFlag(FLAGS_batch)}}) {
    if (value == 0) Usage(absl::StrCat("--", name, " needs a positive number"));
  }
  f.mib = absl::GetFlag(FLAGS_mib);
  f.chunk_mib = absl::GetFlag(FLAGS_chunk_mib);
  f.threads = static_cast<int>(absl::GetFlag(FLAGS_threads));
  f.reps = static_cast<int>(absl::GetFlag(FLAGS_reps));
  f.batch = static_cast<int>(absl::GetFlag(FLAGS_batch));
  const std::string io = absl::GetFlag(FLAGS_io);
  if (io == "auto") {
    f.engine = IoEngine::kAuto;
  } else if (io == "io_uring") {
    f.engine = IoEngine::kIoUring;
  } else if (io == "pwrite") {
    f.engine = IoEngine::kPwrite;
  } else {
    Usage("--io is auto, io_uring or pwrite");
  }
  return f;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Die(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "store_bench: %s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

struct StoreTimes {
  double write_s, read_s;
  uint64_t file_bytes;
  std::string io_mode;
};

StoreTimes StoreWriteRead(std::shared_ptr<FileSystem> fs, const std::string& dir,
                          const std::vector<EncodedChunk>& chunks, int threads, int batch,
                          bool verify) {
  std::filesystem::remove_all(dir);
  ChunkStoreOptions o;
  o.fs = std::move(fs);
  o.verify_on_put = verify;
  o.background_compaction = false;
  auto store = ChunkStore::Open(dir, o);
  Die(store.status(), "open store");
  std::atomic<size_t> next{0};
  auto writer = [&] {
    for (size_t i; (i = next.fetch_add(batch)) < chunks.size();) {
      size_t n = std::min<size_t>(batch, chunks.size() - i);
      Die((*store)->Put(absl::MakeConstSpan(chunks).subspan(i, n)), "put");
    }
  };
  absl::Time t0 = absl::Now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(writer);
  for (auto& t : pool) t.join();
  double write_s = absl::ToDoubleSeconds(absl::Now() - t0);
  pool.clear();
  next = 0;
  std::atomic<uint64_t> bad{0};
  auto reader = [&] {
    for (size_t i; (i = next.fetch_add(1)) < chunks.size();) {
      auto got = (*store)->GetOne(chunks[i].id);
      if (!got.ok() || got->data.size() != chunks[i].data.size()) ++bad;
    }
  };
  t0 = absl::Now();
  for (int t = 0; t < threads; ++t) pool.emplace_back(reader);
  for (auto& t : pool) t.join();
  double read_s = absl::ToDoubleSeconds(absl::Now() - t0);
  if (bad > 0) {
    std::fprintf(stderr, "store_bench: %llu chunks did not read back\n",
                 static_cast<unsigned long long>(bad.load()));
    std::exit(1);
  }
  ChunkStoreStats stats = (*store)->Stats();
  return {write_s, read_s, stats.file_bytes, stats.io_mode};
}

int Main(int argc, char** argv) {
  TuneMallocForLargeBuffers();  // as snapback-server does
  Flags f = Parse(argc, argv);
  std::string dir = f.dir;
  bool own_dir = dir.empty();
  if (own_dir) {
    std::string tmpl = std::filesystem::current_path().string() + "/.bench-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr)
      Usage("cannot create a scratch dir here; pass --dir");
    dir = tmpl;
  }
  auto fs = NewPosixFileSystem({.engine = f.engine});
  Die(fs.status(), "file system");
  const size_t chunk = f.chunk_mib << 20;
  const size_t n = std::max<uint64_t>(1, (f.mib << 20) / chunk);
  std::printf(
      "store_bench: %zu chunks of %llu MiB (%llu MiB), %d writer/reader threads, "
      "%d chunks per Put, median of %d runs, dir %s\n",
      n, static_cast<unsigned long long>(f.chunk_mib),
      static_cast<unsigned long long>(n * f.chunk_mib), f.threads, f.batch, f.reps,
      dir.c_str());

  struct Workload {
    const char* name;
    bool float_like;
    EncodeOptions enc;
  };
  const Workload workloads[] = {
      {"fp32 random, codec none", false, {.codec = Codec::kNone}},
      {"bf16 weights, shuffle+zstd",
       true,
       {.codec = Codec::kShuffleZstd, .element_size = 2}},
  };
  std::printf("\n%-30s %-26s %10s %10s %8s  %s\n", "workload", "path", "MB/s", "raw MB/s",
              "ratio", "(min..max)");
  for (const Workload& w : workloads) {
    std::fprintf(stderr, "preparing %s ...\n", w.name);
    std::vector<EncodedChunk> chunks;
    uint64_t logical = 0, encoded = 0;
    for (size_t i = 0; i < n; ++i) {
      std::string raw;
      if (w.float_like) {
        // bf16 weights: the upper two bytes of normally distributed fp32.
        std::string fp32 = testing::MakeBytes(2 * chunk, 1000 + i, true);
        raw.resize(chunk);
        for (size_t j = 0; j < chunk / 2; ++j) {
          raw[2 * j] = fp32[4 * j + 2];
          raw[2 * j + 1] = fp32[4 * j + 3];
        }
      } else {
        raw = testing::MakeBytes(chunk, 1000 + i, false);
      }
      auto c = EncodeChunk(raw, w.enc);
      Die(c.status(), "encode");
      logical += c->raw_length;
      encoded += c->data.size();
      chunks.push_back(*std::move(c));
    }
    std::vector<double> raw_w, raw_r, st_w, st_r, st_wv;
    StoreTimes last{};
    for (int r = 0; r < f.reps; ++r) {
      std::fprintf(stderr, "  run %d/%d: raw, store, store+verify\n", r + 1, f.reps);
      // Alternate which goes first: the virtual disk here throttles after
      // bursts, which would otherwise always penalise the second.
      std::pair<double, double> raw_times;
      if (r % 2 == 0)
        raw_times =
            RawWriteRead(fs->get(), dir, chunks, f.batch, f.threads);  // bench/raw_io.h
      last = StoreWriteRead(*fs, dir + "/store", chunks, f.threads, f.batch, false);
      if (r % 2 == 1)
        raw_times =
            RawWriteRead(fs->get(), dir, chunks, f.batch, f.threads);  // bench/raw_io.h
      raw_w.push_back(raw_times.first);
      raw_r.push_back(raw_times.second);
      st_w.push_back(last.write_s);
      st_r.push_back(last.read_s);
      st_wv.push_back(
          StoreWriteRead(*fs, dir + "/store", chunks, f.threads, f.batch, true).write_s);
    }
    const double mb = encoded / 1e6;
    // The disk's speed drifts between runs (a shared virtual disk here), so
    // the ratio is taken within each run, raw and store back to back, and
    // the median of those ratios is reported.
    auto row = [&](const char* path, const std::vector<double>& secs,
                   const std::vector<double>& raw_secs) {
      std::vector<double> ratios;
      for (size_t r = 0; r < secs.size(); ++r) ratios.push_back(raw_secs[r] / secs[r]);
      std::printf("%-30s %-26s %10.0f %10.0f %7.2fx  (%.2f..%.2f)\n", w.name, path,
                  mb / Median(secs), mb / Median(raw_secs), Median(ratios),
                  *std::min_element(ratios.begin(), ratios.end()),
                  *std::max_element(ratios.begin(), ratios.end()));
    };
    row("store write (Put)", st_w, raw_w);
    row("store write + verify", st_wv, raw_w);
    row("store read (Get)", st_r, raw_r);
    std::printf(
        "%-30s logical %.0f MB, encoded %.0f MB (ratio %.2f), on disk %.0f MB, %s\n", "",
        logical / 1e6, encoded / 1e6, static_cast<double>(logical) / encoded,
        last.file_bytes / 1e6, last.io_mode.c_str());
  }
  std::printf(
      "\nratio = median over runs of (raw time / store time) within a run. "
      "MB/s are of encoded bytes (what reaches the disk).\nraw = the same bytes through "
      "the same File code: sequential O_DIRECT writes in blocks of the same size as the "
      "store's groups (+ one fdatasync), and O_DIRECT reads of one chunk at a time by "
      "the "
      "same number of threads.\n'verify' adds the decode + SHA-256 check every server "
      "does on ingest.\n");
  if (own_dir) std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace snapback::storage

int main(int argc, char** argv) { return snapback::storage::Main(argc, argv); }
