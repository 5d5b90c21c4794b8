// snapback-storage-demo: pushes synthetic model weights through a running
// storage node and reads them back.
//
//   snapback-storage-demo --endpoint 127.0.0.1:7420 --mib 384 --chunk-mib 4 --streams 2
//
// The tensors are generated deterministically (half fp32 weights with a
// normal-ish distribution, half bf16), chunked, encoded with shuffle+zstd
// (element size 4 or 2), streamed on N concurrent PutChunks streams, read back
// on N GetChunks streams (the client verifies SHA-256), then decoded and
// compared bit for bit with the regenerated source. Prints a table of figures
// and the node's Stat. Exit codes: 0 all good, 1 failure or mismatch, 2 bad
// flags. Memory: about the encoded size of the data, held once.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/codec.h"
#include "common/flags.h"
#include "common/hash.h"
#include "rpc/storage_client.h"

ABSL_FLAG(std::string, endpoint, "", "the storage node, HOST:PORT (required)");
ABSL_FLAG(uint64_t, mib, 384, "MiB of synthetic checkpoint to stream");
ABSL_FLAG(uint64_t, chunk_mib, 4, "chunk size in MiB, 1..16");
ABSL_FLAG(int, streams, 2, "parallel upload streams, 1..64");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the node's certificate (TLS)");

namespace {

using snapback::ChunkId;
using snapback::EncodedChunk;
using snapback::internal_client::StorageClient;
using snapback::internal_client::StorageClientOptions;

constexpr char kProgram[] = "snapback-storage-demo";
constexpr char kUsage[] =
    "usage: snapback-storage-demo --endpoint HOST:PORT [--mib 384] [--chunk-mib 4]\n"
    "                             [--streams 2] [--tls-ca FILE]\n"
    "\n"
    "Streams a synthetic fp32/bf16 checkpoint through a storage node and reads it back\n"
    "verified bit for bit (step 1 of ./dev demo).";

[[noreturn]] void BadFlag(const std::string& message) {
  snapback::ExitBadFlag(kProgram, message);
}

struct Flags {
  std::string endpoint;
  uint64_t mib = 384;
  uint64_t chunk_mib = 4;
  int streams = 2;
  std::string tls_ca;
};

Flags ParseFlags(int argc, char** argv) {
  snapback::ParseCommandLineOrExit(argc, argv, kProgram, kUsage, __FILE__);
  Flags flags;
  flags.endpoint = absl::GetFlag(FLAGS_endpoint);
  flags.mib = absl::GetFlag(FLAGS_mib);
  if (flags.mib < 1 || flags.mib > (1u << 20)) {
    BadFlag("--mib must be a positive number of MiB");
  }
  flags.chunk_mib = absl::GetFlag(FLAGS_chunk_mib);
  if (flags.chunk_mib < 1 || flags.chunk_mib > 16) {
    BadFlag("--chunk-mib must be 1..16 (the node's default chunk limit is 16 MiB)");
  }
  flags.streams = absl::GetFlag(FLAGS_streams);
  if (flags.streams < 1 || flags.streams > 64) BadFlag("--streams must be 1..64");
  flags.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  if (flags.endpoint.empty()) {
    BadFlag("--endpoint is required: the HOST:PORT a snapback-server prints on start");
  }
  return flags;
}

// The synthetic checkpoint: chunk i is generated from i alone, so any chunk
// can be regenerated for the final comparison. The first half of the chunks
// are fp32 tensors, the rest bf16.
struct Plan {
  uint64_t total_bytes;
  uint64_t chunk_bytes;
  size_t chunks;
  size_t fp32_chunks;

  uint64_t ChunkSize(size_t i) const {
    return std::min(chunk_bytes, total_bytes - i * chunk_bytes);
  }
  bool IsFp32(size_t i) const { return i < fp32_chunks; }
};

// splitmix64: fast, deterministic, good enough for synthetic weights.
uint64_t Mix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A weight with std ~0.02: the sum of four uniform 16-bit values is close
// enough to normal for a compressor, and far cheaper than Box-Muller.
float Weight(uint64_t& state) {
  const uint64_t r = Mix(state);
  const uint32_t sum =
      (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
  const float u = static_cast<float>(sum) / 65536.0f - 2.0f;  // mean 0, std 0.577
  return u * (0.02f / 0.577f);
}

std::string GenerateChunk(const Plan& plan, size_t i) {
  std::string out(plan.ChunkSize(i), '\0');
  uint64_t state = 0x5eed0000ull + i;
  size_t pos = 0;
  if (plan.IsFp32(i)) {
    for (; pos + 4 <= out.size(); pos += 4) {
      const float w = Weight(state);
      std::memcpy(&out[pos], &w, 4);
    }
  } else {
    for (; pos + 2 <= out.size(); pos += 2) {
      const float w = Weight(state);
      uint32_t bits;
      std::memcpy(&bits, &w, 4);
      const uint16_t bf16 = static_cast<uint16_t>(bits >> 16);  // truncating
      std::memcpy(&out[pos], &bf16, 2);
    }
  }
  for (; pos < out.size(); ++pos) out[pos] = static_cast<char>(Mix(state));
  return out;
}

// One updating line on a terminal; a line per quarter otherwise (logs).
class Progress {
 public:
  Progress(std::string label, uint64_t total)
      : label_(std::move(label)),
        total_(total),
        tty_(isatty(STDERR_FILENO) != 0),
        start_(absl::Now()) {}

  void Add(uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    done_ += bytes;
    const double fraction = total_ ? static_cast<double>(done_) / total_ : 1.0;
    const double secs = absl::ToDoubleSeconds(absl::Now() - start_);
    const std::string line = absl::StrFormat(
        "%s %6.1f / %.1f MiB (%3.0f%%) %8.1f MB/s", label_, done_ / 1048576.0,
        total_ / 1048576.0, fraction * 100, secs > 0 ? done_ / secs / 1e6 : 0);
    if (tty_) {
      std::fprintf(stderr, "\r%s", line.c_str());
      if (done_ >= total_) std::fputc('\n', stderr);
    } else {
      const int quarter = static_cast<int>(fraction * 4);
      if (quarter > last_quarter_) {
        last_quarter_ = quarter;
        std::fprintf(stderr, "%s\n", line.c_str());
      }
    }
  }

 private:
  const std::string label_;
  const uint64_t total_;
  const bool tty_;
  const absl::Time start_;
  absl::Mutex mu_;
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  int last_quarter_ ABSL_GUARDED_BY(mu_) = 0;
};

// Runs fn(group_begin, group_end) for groups of `group` chunks on `threads`
// threads, stopping early after the first error. Returns that error.
template <typename Fn>
absl::Status RunGroups(size_t chunks, size_t group, int threads, Fn fn) {
  std::atomic<size_t> next{0};
  absl::Mutex mu;
  absl::Status first_error;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      while (true) {
        {
          absl::MutexLock lock(&mu);
          if (!first_error.ok()) return;
        }
        const size_t begin = next.fetch_add(group);
        if (begin >= chunks) return;
        absl::Status status = fn(begin, std::min(chunks, begin + group));
        if (!status.ok()) {
          absl::MutexLock lock(&mu);
          if (first_error.ok()) first_error = status;
          return;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  return first_error;
}

double MBps(uint64_t bytes, absl::Duration d) {
  const double secs = absl::ToDoubleSeconds(d);
  return secs > 0 ? bytes / secs / 1e6 : 0;
}

int Run(const Flags& flags) {
  Plan plan;
  plan.total_bytes = flags.mib << 20;
  plan.chunk_bytes = flags.chunk_mib << 20;
  plan.chunks = (plan.total_bytes + plan.chunk_bytes - 1) / plan.chunk_bytes;
  plan.fp32_chunks = (plan.chunks + 1) / 2;
  // Chunks per Put/Get call: at most one server-side batch (64 MiB), and
  // small enough that each stream makes several calls, for progress lines.
  const uint64_t group_bytes =
      std::min<uint64_t>(64u << 20, plan.total_bytes / (8 * flags.streams));
  const size_t group = std::max<size_t>(1, group_bytes / plan.chunk_bytes);
  const int cpu_threads = std::max(1u, std::thread::hardware_concurrency());

  StorageClientOptions options;
  options.tls_root_ca_file = flags.tls_ca;
  auto client = StorageClient::Connect(flags.endpoint, options);
  if (!client.ok()) {
    std::fprintf(stderr, "snapback-storage-demo: %s\n",
                 client.status().ToString().c_str());
    return 1;
  }

  std::printf(
      "snapback storage demo: %llu MiB in %zu chunks of %llu MiB, %d streams, node %s\n",
      static_cast<unsigned long long>(flags.mib), plan.chunks,
      static_cast<unsigned long long>(flags.chunk_mib), flags.streams,
      flags.endpoint.c_str());

  // 1. Generate and encode (client side work, timed on its own).
  std::vector<EncodedChunk> encoded(plan.chunks);
  absl::Time t0 = absl::Now();
  absl::Status status =
      RunGroups(plan.chunks, 1, cpu_threads, [&](size_t i, size_t) -> absl::Status {
        std::string raw = GenerateChunk(plan, i);
        snapback::EncodeOptions encode;
        encode.codec = snapback::Codec::kShuffleZstd;
        encode.element_size = plan.IsFp32(i) ? 4 : 2;
        auto chunk = snapback::EncodeChunk(raw, encode);
        if (!chunk.ok()) return chunk.status();
        encoded[i] = *std::move(chunk);
        return absl::OkStatus();
      });
  const absl::Duration encode_time = absl::Now() - t0;
  if (!status.ok()) {
    std::fprintf(stderr, "snapback-storage-demo: encoding: %s\n",
                 status.ToString().c_str());
    return 1;
  }
  uint64_t encoded_bytes = 0, fp32_raw = 0, fp32_enc = 0, bf16_raw = 0, bf16_enc = 0;
  std::vector<ChunkId> ids(plan.chunks);
  for (size_t i = 0; i < plan.chunks; ++i) {
    ids[i] = encoded[i].id;
    encoded_bytes += encoded[i].data.size();
    (plan.IsFp32(i) ? fp32_raw : bf16_raw) += encoded[i].raw_length;
    (plan.IsFp32(i) ? fp32_enc : bf16_enc) += encoded[i].data.size();
  }

  // 2. Write on N concurrent streams.
  std::atomic<int> stored{0}, already_present{0};
  Progress write_progress("write", plan.total_bytes);
  t0 = absl::Now();
  status = RunGroups(
      plan.chunks, group, flags.streams, [&](size_t begin, size_t end) -> absl::Status {
        auto span = absl::MakeConstSpan(encoded).subspan(begin, end - begin);
        auto put = (*client)->Put(span);
        if (!put.ok()) return put.status();
        stored += put->stored;
        already_present += put->already_present;
        uint64_t raw = 0;
        for (const EncodedChunk& c : span) raw += c.raw_length;
        write_progress.Add(raw);
        return absl::OkStatus();
      });
  const absl::Duration write_time = absl::Now() - t0;
  if (!status.ok()) {
    std::fprintf(stderr, "snapback-storage-demo: write failed: %s\n",
                 status.ToString().c_str());
    return 1;
  }
  encoded.clear();
  encoded.shrink_to_fit();

  // 3. Read back on N streams; the client verifies every chunk's SHA-256.
  std::vector<EncodedChunk> fetched(plan.chunks);
  Progress read_progress("read ", plan.total_bytes);
  t0 = absl::Now();
  status = RunGroups(
      plan.chunks, group, flags.streams, [&](size_t begin, size_t end) -> absl::Status {
        auto got = (*client)->Get(absl::MakeConstSpan(ids).subspan(begin, end - begin));
        if (!got.ok()) return got.status();
        uint64_t raw = 0;
        for (size_t i = begin; i < end; ++i) {
          fetched[i] = std::move((*got)[i - begin]);
          raw += fetched[i].raw_length;
        }
        read_progress.Add(raw);
        return absl::OkStatus();
      });
  const absl::Duration read_time = absl::Now() - t0;
  if (!status.ok()) {
    std::fprintf(stderr, "snapback-storage-demo: read failed: %s\n",
                 status.ToString().c_str());
    return 1;
  }

  // 4. Bit-exact comparison with the regenerated source (not timed).
  std::atomic<size_t> mismatches{0};
  status = RunGroups(plan.chunks, 1, cpu_threads, [&](size_t i, size_t) -> absl::Status {
    const std::string expected = GenerateChunk(plan, i);
    std::string decoded(fetched[i].raw_length, '\0');
    absl::Status s = snapback::DecodeChunk(fetched[i], absl::MakeSpan(decoded));
    if (!s.ok() || decoded != expected || fetched[i].id != snapback::Sha256(expected)) {
      ++mismatches;
      std::fprintf(stderr,
                   "snapback-storage-demo: chunk %zu (%s) differs from its source%s\n", i,
                   ids[i].ShortHex().c_str(),
                   s.ok() ? "" : absl::StrCat(": ", s.message()).c_str());
    }
    return absl::OkStatus();
  });

  auto stat = (*client)->Stat();

  const uint64_t logical = plan.total_bytes;
  std::printf("\n%-26s %s\n", "figure", "value");
  std::printf("%-26s %llu (%.1f MiB)\n", "logical bytes",
              static_cast<unsigned long long>(logical), logical / 1048576.0);
  std::printf("%-26s %llu (%.1f MiB)\n", "encoded bytes",
              static_cast<unsigned long long>(encoded_bytes), encoded_bytes / 1048576.0);
  std::printf("%-26s %.3f (fp32 %.3f, bf16 %.3f)\n", "ratio (logical/encoded)",
              encoded_bytes ? static_cast<double>(logical) / encoded_bytes : 0.0,
              fp32_enc ? static_cast<double>(fp32_raw) / fp32_enc : 0.0,
              bf16_enc ? static_cast<double>(bf16_raw) / bf16_enc : 0.0);
  std::printf("%-26s %.1f MB/s (%d threads, client only)\n", "encode throughput",
              MBps(logical, encode_time), cpu_threads);
  std::printf("%-26s %.1f MB/s logical, %.1f MB/s on the wire (%.2f s)\n",
              "write throughput", MBps(logical, write_time),
              MBps(encoded_bytes, write_time), absl::ToDoubleSeconds(write_time));
  std::printf("%-26s %d stored, %d already present\n", "write result", stored.load(),
              already_present.load());
  std::printf("%-26s %.1f MB/s logical (%.2f s)\n", "read+verify throughput",
              MBps(logical, read_time), absl::ToDoubleSeconds(read_time));
  std::printf("%-26s %zu of %zu chunks differ\n", "bit-exact check", mismatches.load(),
              plan.chunks);
  if (stat.ok()) {
    std::printf(
        "%-26s %llu chunks, %.1f MiB raw, %.1f MiB encoded, %llu segments, "
        "%.1f MiB on disk\n",
        "server store", static_cast<unsigned long long>(stat->chunks()),
        stat->raw_bytes() / 1048576.0, stat->encoded_bytes() / 1048576.0,
        static_cast<unsigned long long>(stat->segments()),
        stat->file_bytes() / 1048576.0);
    std::printf("%-26s %llu puts, %llu dedup hits, %llu group commits, io %s\n",
                "server activity", static_cast<unsigned long long>(stat->puts()),
                static_cast<unsigned long long>(stat->dedup_hits()),
                static_cast<unsigned long long>(stat->group_commits()),
                stat->io_mode().c_str());
  } else {
    std::printf("%-26s unavailable: %s\n", "server store",
                stat.status().ToString().c_str());
  }
  if (!status.ok() || mismatches.load() != 0) {
    std::fprintf(stderr, "snapback-storage-demo: FAILED: data read back differs\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(ParseFlags(argc, argv)); }
