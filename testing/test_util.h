// Helpers shared by the storage tests: temporary directories and chunks.
#ifndef SNAPBACK_TESTING_TEST_UTIL_H_
#define SNAPBACK_TESTING_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>

#include "common/codec.h"

namespace snapback::testing {

// A fresh directory under $TEST_TMPDIR or /tmp, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// `n` bytes that look like fp32 weights (compressible with shuffle+zstd)
// when `float_like`, else random bytes.
std::string MakeBytes(size_t n, uint64_t seed, bool float_like = false);

// An encoded chunk of `n` bytes (codec chosen by `options`).
EncodedChunk MakeChunk(size_t n, uint64_t seed, bool float_like = false,
                       const EncodeOptions& options = {.codec = Codec::kNone});

// The whole of the file at `path`; "" when it cannot be read.
std::string Slurp(const std::string& path);

// Total size of the regular files under `dir`.
uint64_t DiskUsage(const std::string& dir);

}  // namespace snapback::testing

#endif  // SNAPBACK_TESTING_TEST_UTIL_H_
