#include "testing/test_util.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace snapback::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/snapback-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) std::abort();
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string MakeBytes(size_t n, uint64_t seed, bool float_like) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  if (float_like) {
    std::normal_distribution<float> dist(0.0f, 0.02f);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      float f = dist(rng);
      std::memcpy(&out[i], &f, 4);
    }
    for (; i < n; ++i) out[i] = static_cast<char>(rng());
    return out;
  }
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&out[i], &v, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<char>(rng());
  return out;
}

EncodedChunk MakeChunk(size_t n, uint64_t seed, bool float_like,
                       const EncodeOptions& options) {
  auto chunk = EncodeChunk(MakeBytes(n, seed, float_like), options);
  if (!chunk.ok()) std::abort();
  return *std::move(chunk);
}

uint64_t DiskUsage(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += e.file_size();
  }
  return total;
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace snapback::testing
