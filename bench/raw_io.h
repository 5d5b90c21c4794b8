// Raw disk baselines for the benchmarks: the same bytes written and read
// through the same storage::File code (io_uring or pwrite, O_DIRECT), with
// none of snapback's work, so a benchmark can print its ratio to the disk.
#ifndef SNAPBACK_BENCH_RAW_IO_H_
#define SNAPBACK_BENCH_RAW_IO_H_

#include <string>
#include <utility>
#include <vector>

#include "common/codec.h"
#include "storage/file_system.h"

namespace snapback::storage {

// Writes `chunks`' encoded bytes sequentially to DIR/raw.bin in blocks of
// `batch` chunks (one aligned buffer each) then fdatasyncs; reads them back
// with `threads` threads, one chunk-sized O_DIRECT read at a time each.
// Returns (write seconds, read seconds); exits the process on an I/O error.
std::pair<double, double> RawWriteRead(FileSystem* fs, const std::string& dir,
                                       const std::vector<EncodedChunk>& chunks, int batch,
                                       int threads);

// The same for `bytes` bytes of `data` in pieces of `piece` bytes.
std::pair<double, double> RawWriteReadBytes(FileSystem* fs, const std::string& dir,
                                            const char* data, uint64_t bytes,
                                            uint64_t piece, int batch, int threads);

}  // namespace snapback::storage

#endif  // SNAPBACK_BENCH_RAW_IO_H_
