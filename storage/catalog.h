// CatalogStore: small key -> value records a storage node keeps for the
// coordinator (each committed checkpoint's job record and manifests), so
// that a coordinator whose metadata is lost can rebuild its catalogue from
// the nodes. One file per key under DIR/catalog/, named by the SHA-256 of
// the key (the file holds the key's length, the key, the value), written
// to a temporary file, fsynced, renamed, and the directory fsynced: a record
// is either all there or absent after a crash.
//
// Thread-safe.
#ifndef SNAPBACK_STORAGE_CATALOG_H_
#define SNAPBACK_STORAGE_CATALOG_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace snapback::storage {

class CatalogStore {
 public:
  // Most bytes of one key / one value.
  static constexpr size_t kMaxKeyBytes = 1024;
  static constexpr size_t kMaxValueBytes = 64u << 20;

  // Creates DIR/catalog if needed and removes leftover temporary files.
  static absl::StatusOr<std::unique_ptr<CatalogStore>> Open(const std::string& dir);

  absl::Status Put(const std::string& key, const std::string& value);
  // Entries whose key starts with `prefix`, in key order, strictly after
  // `start_after`, until `max_bytes` of values are collected (at least one
  // entry). Returns true when nothing follows.
  absl::StatusOr<bool> List(const std::string& prefix, const std::string& start_after,
                            size_t max_bytes,
                            std::vector<std::pair<std::string, std::string>>* out);
  // Absent keys are ignored.
  absl::Status Delete(const std::vector<std::string>& keys);

 private:
  explicit CatalogStore(std::string dir) : dir_(std::move(dir)) {}
  // DIR/catalog/<hex SHA-256 of the key>.
  std::string PathOf(const std::string& key) const;
  const std::string dir_;
  absl::Mutex mu_;  // one writer at a time (rename + directory fsync)
};

}  // namespace snapback::storage

#endif  // SNAPBACK_STORAGE_CATALOG_H_
