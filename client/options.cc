#include "client/options.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status_macros.h"

namespace snapback::internal_client {

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::string(v) : fallback;
}

absl::Status EnvInt(const char* name, int64_t* out) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return absl::OkStatus();
  if (!absl::SimpleAtoi(v, out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name, "='", v, "' is not an integer"));
  }
  return absl::OkStatus();
}

void ResolveClientOptions(ClientOptions* options) {
  if (options->endpoint.empty()) {
    options->endpoint = EnvOr("SNAPBACK_ENDPOINT", "127.0.0.1:7420");
  }
  if (options->tls_root_ca_file.empty()) {
    options->tls_root_ca_file = EnvOr("SNAPBACK_TLS_CA", "");
  }
}

absl::Status ResolveCheckpointerOptions(CheckpointerOptions* options) {
  CheckpointerOptions& o = *options;
  if (o.job_id.empty()) o.job_id = EnvOr("SNAPBACK_JOB", "");
  if (o.job_id.empty()) {
    return absl::InvalidArgumentError(
        "no job id: set CheckpointerOptions::job_id or SNAPBACK_JOB (snapback-launch "
        "sets it)");
  }
  int64_t v;
  if (o.rank < 0) {
    v = 0;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_RANK", &v));
    o.rank = static_cast<int>(v);
  }
  if (o.world_size <= 0) {
    v = 1;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_WORLD_SIZE", &v));
    o.world_size = static_cast<int>(v);
  }
  if (o.incarnation < 0) {
    v = -1;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_INCARNATION", &v));
    o.incarnation = v;  // -1: the coordinator's, after registering
  }
  if (o.heartbeat_interval < absl::ZeroDuration()) {
    v = 1000;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_HEARTBEAT_MS", &v));
    o.heartbeat_interval = absl::Milliseconds(std::max<int64_t>(0, v));
  }
  if (o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", o.rank, " is outside [0, ", o.world_size, "); check SNAPBACK_RANK"));
  }
  if (o.chunk_bytes < 4096 || o.chunk_bytes > (16u << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_bytes ", o.chunk_bytes, " must be in [4 KiB, 16 MiB]"));
  }
  if (o.copy_threads < 1 || o.pipeline_threads < 1 || o.upload_streams < 1 ||
      o.max_inflight < 1 || o.restore_threads < 1) {
    return absl::InvalidArgumentError(
        "copy_threads, pipeline_threads, upload_streams, max_inflight and "
        "restore_threads "
        "must be at least 1");
  }
  return absl::OkStatus();
}

}  // namespace snapback::internal_client
