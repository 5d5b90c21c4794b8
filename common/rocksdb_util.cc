#include "common/rocksdb_util.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace snapback::internal_rocksdb {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what,
                       const DbLabel& db) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(db.name, " ", what, ": ", s.ToString());
  if (s.IsCorruption()) {
    return absl::DataLossError(absl::StrCat(msg, "; ", db.on_corruption));
  }
  if (s.IsNoSpace()) {
    return absl::ResourceExhaustedError(
        absl::StrCat(msg, "; free space on the data volume"));
  }
  if (s.IsIOError()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

}  // namespace snapback::internal_rocksdb
