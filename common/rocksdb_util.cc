#include "common/rocksdb_util.h"

#include <rocksdb/env.h>

#include <cstdarg>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace snapback::internal_rocksdb {
namespace {

// RocksDB's info log as SNAPBACK_LOG lines: "<name>: <message>".
class LogSinkLogger : public rocksdb::Logger {
 public:
  explicit LogSinkLogger(absl::string_view name)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), name_(name) {}

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel() || level == rocksdb::InfoLogLevel::HEADER_LEVEL) return;
    char buf[1024];
    std::vsnprintf(buf, sizeof(buf), format, ap);
    if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL) {
      SNAPBACK_LOG(Error, "rocksdb %s: %s", name_, buf);
    } else {
      SNAPBACK_LOG(Warning, "rocksdb %s: %s", name_, buf);
    }
  }

 private:
  const std::string name_;
};

}  // namespace

void ApplyCommonOptions(rocksdb::Options* options, absl::string_view name) {
  options->write_buffer_size = 4 << 20;
  options->max_total_wal_size = 1 << 20;
  options->manifest_preallocation_size = 64 << 10;
  options->info_log = std::make_shared<LogSinkLogger>(name);
  options->info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
}

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
