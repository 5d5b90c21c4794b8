#include "bench/raw_io.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/time/clock.h"

namespace snapback::storage {
namespace {

void Die(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "raw baseline: %s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

}  // namespace

// One O_DIRECT file; the same bytes copied into an aligned
// buffer and written sequentially in blocks of `batch` chunks (the store's
// group size) through the same File::WriteAt (io_uring, 16 x 1 MiB in
// flight), then one fdatasync; then read back sequentially by `threads`
// threads, one chunk-sized O_DIRECT read at a time each, like the store's
// readers.
std::pair<double, double> RawWriteRead(FileSystem* fs, const std::string& dir,
                                       const std::vector<EncodedChunk>& chunks, int batch,
                                       int threads) {
  std::string path = dir + "/raw.bin";
  auto file = fs->Open(path, {.write = true, .create = true, .direct_io = true});
  Die(file.status(), "open raw file");
  if (!(*file)->direct_io())
    std::fprintf(stderr, "warning: O_DIRECT refused; raw is buffered\n");
  const size_t chunk = AlignUp(chunks[0].data.size());
  AlignedBuffer buf(chunk * batch);
  uint64_t off = 0;
  absl::Time t0 = absl::Now();
  for (size_t i = 0; i < chunks.size(); i += batch) {
    size_t used = 0;
    for (size_t j = i; j < std::min(chunks.size(), i + batch); ++j) {
      std::memcpy(buf.data() + used, chunks[j].data.data(), chunks[j].data.size());
      used += AlignUp(chunks[j].data.size());
    }
    Die((*file)->WriteAt(off, {buf.data(), used}), "raw write");
    off += used;
  }
  Die((*file)->Sync(), "raw sync");
  double write_s = absl::ToDoubleSeconds(absl::Now() - t0);
  std::atomic<uint64_t> next{0};
  auto reader = [&] {
    AlignedBuffer piece(chunk);
    for (uint64_t pos; (pos = next.fetch_add(chunk)) < off;) {
      Die((*file)->ReadAt(pos, {piece.data(), std::min<uint64_t>(chunk, off - pos)}),
          "raw read");
    }
  };
  t0 = absl::Now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(reader);
  for (auto& t : pool) t.join();
  double read_s = absl::ToDoubleSeconds(absl::Now() - t0);
  file->reset();
  std::filesystem::remove(path);
  return {write_s, read_s};
}

std::pair<double, double> RawWriteReadBytes(FileSystem* fs, const std::string& dir,
                                            const char* data, uint64_t bytes,
                                            uint64_t piece, int batch, int threads) {
  std::vector<EncodedChunk> chunks;
  for (uint64_t off = 0; off < bytes; off += piece) {
    EncodedChunk c;
    c.data.assign(data + off, std::min(piece, bytes - off));
    chunks.push_back(std::move(c));
  }
  return RawWriteRead(fs, dir, chunks, batch, threads);
}

}  // namespace snapback::storage
