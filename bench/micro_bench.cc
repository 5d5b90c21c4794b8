// Micro benchmarks of the per-chunk CPU work (Google Benchmark), each beside
// memcpy of the same bytes as the baseline: SHA-256, xxh64, encode, decode.
#include <cstring>
#include <string>

#include "benchmark/benchmark.h"
#include "common/codec.h"
#include "common/hash.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

constexpr size_t kChunk = 4 << 20;

const std::string& Weights() {
  static const std::string w = testing::MakeBytes(kChunk, 1, true);
  return w;
}

void BM_Memcpy(benchmark::State& state) {
  std::string dst(kChunk, '\0');
  for (auto _ : state) {
    std::memcpy(dst.data(), Weights().data(), kChunk);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(state.iterations() * kChunk);
}
BENCHMARK(BM_Memcpy);

void BM_Sha256(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(Sha256(Weights()));
  state.SetBytesProcessed(state.iterations() * kChunk);
}
BENCHMARK(BM_Sha256);

void BM_Xxh64(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(Checksum64(Weights()));
  state.SetBytesProcessed(state.iterations() * kChunk);
}
BENCHMARK(BM_Xxh64);

void BM_Encode(benchmark::State& state) {
  Codec codec = static_cast<Codec>(state.range(0));
  for (auto _ : state) {
    auto c = EncodeChunk(Weights(), {.codec = codec, .element_size = 4, .min_saving = 0});
    benchmark::DoNotOptimize(c);
  }
  state.SetBytesProcessed(state.iterations() * kChunk);
  state.SetLabel(CodecName(codec));
}
BENCHMARK(BM_Encode)->Arg(0)->Arg(1)->Arg(2);

void BM_Verify(benchmark::State& state) {
  Codec codec = static_cast<Codec>(state.range(0));
  auto c = *EncodeChunk(Weights(), {.codec = codec, .element_size = 4, .min_saving = 0});
  std::string scratch;
  for (auto _ : state) benchmark::DoNotOptimize(VerifyChunk(c, &scratch));
  state.SetBytesProcessed(state.iterations() * kChunk);
  state.SetLabel(CodecName(codec));
}
BENCHMARK(BM_Verify)->Arg(0)->Arg(1)->Arg(2);

}  // namespace
}  // namespace snapback

BENCHMARK_MAIN();
