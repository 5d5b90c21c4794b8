// RocksDB glue shared by the two components that keep a RocksDB: the chunk
// index (storage/chunk_store.cc) and the coordinator's metadata
// (coordinator/). The options both open with (bounded disk footprint, info
// log through SNAPBACK_LOG), one mapping of rocksdb::Status to absl::Status,
// and the conversions between rocksdb::Slice and absl::string_view (distro
// Abseil's string_view is not std::string_view, so Slice cannot take one
// directly).
//
// Thread-safety: free functions over values; thread-safe.
#ifndef SNAPBACK_COMMON_ROCKSDB_UTIL_H_
#define SNAPBACK_COMMON_ROCKSDB_UTIL_H_

#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace snapback::internal_rocksdb {

// How error messages name one database.
struct DbLabel {
  // Leads every message: "<name> <what>: <rocksdb status>", e.g. "index".
  absl::string_view name;
  // Appended ("; <on_corruption>") when RocksDB reports corruption: what the
  // operator should do about it.
  absl::string_view on_corruption;
};

// Sets what every snapback RocksDB shares, on top of the caller's own
// choices (recovery mode, paranoid checks):
//  - a small disk footprint: 4 MiB memtables, WAL preallocation capped at
//    1 MiB (max_total_wal_size; it does not force flushes with one column
//    family), 64 KiB MANIFEST preallocation. RocksDB's defaults preallocate
//    ~70 MiB per WAL (1.1 x a 64 MiB write buffer) plus 4 MiB per MANIFEST,
//    which made an idle data dir take 78 MiB;
//  - no LOG file: RocksDB's info log goes to SNAPBACK_LOG (warnings and
//    errors only), prefixed with `name`. Besides the footprint, this keeps a
//    full volume from aborting the process: Debian's RocksDB is built with
//    assertions, and its file logger asserts on the first line logged after
//    a failed (ENOSPC) write to LOG, which happened at shutdown and at the
//    next start on a full volume.
void ApplyCommonOptions(rocksdb::Options* options, absl::string_view name);

// OK for OK. Otherwise the code says what the caller should do:
//   Corruption -> DATA_LOSS (with db.on_corruption appended);
//   NoSpace    -> RESOURCE_EXHAUSTED ("free space on the data volume");
//   IOError    -> UNAVAILABLE (retry);
//   otherwise  -> INTERNAL.
// `what` names the operation ("open", "read", "write", "scan", ...).
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what,
                       const DbLabel& db);

// The bytes of a Slice as a string_view, and back. Neither copies: the
// result points into the argument's storage.
inline absl::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }
inline rocksdb::Slice Sl(absl::string_view s) {
  return rocksdb::Slice(s.data(), s.size());
}

}  // namespace snapback::internal_rocksdb

#endif  // SNAPBACK_COMMON_ROCKSDB_UTIL_H_
