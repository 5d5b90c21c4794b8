#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "absl/base/const_init.h"
#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace snapback {
namespace {

LogLevel LevelFromEnv() {
  const char* env = std::getenv("SNAPBACK_LOG_LEVEL");
  LogLevel level = LogLevel::kInfo;
  if (env != nullptr && !ParseLogLevel(env, &level)) {
    std::fprintf(
        stderr,
        "snapback: SNAPBACK_LOG_LEVEL=%s is not a level; use debug, info, warning, "
        "error or off (using info)\n",
        env);
  }
  return level;
}

std::atomic<int>& Level() {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}

char LevelLetter(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return 'D';
    case LogLevel::kInfo:
      return 'I';
    case LogLevel::kWarning:
      return 'W';
    case LogLevel::kError:
      return 'E';
    case LogLevel::kOff:
      break;
  }
  return '?';
}

// The sink is swapped under a lock and called through a shared_ptr copy, so
// a slow sink never holds the lock and a replaced sink finishes its calls.
ABSL_CONST_INIT absl::Mutex sink_mu(absl::kConstInit);
std::shared_ptr<const LogSink>* sink ABSL_GUARDED_BY(sink_mu) = nullptr;

void StderrSink(const LogMessage& m) {
  const std::string when =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  // One fprintf per line: stdio locks the stream, so lines never interleave.
  std::fprintf(stderr, "%s %c snapback: %.*s\n", when.c_str(), LevelLetter(m.level),
               static_cast<int>(m.text.size()), m.text.data());
}

}  // namespace

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
    case LogLevel::kOff:
      return "off";
  }
  return "?";
}

bool ParseLogLevel(absl::string_view text, LogLevel* level) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "debug") {
    *level = LogLevel::kDebug;
  } else if (t == "info") {
    *level = LogLevel::kInfo;
  } else if (t == "warning" || t == "warn") {
    *level = LogLevel::kWarning;
  } else if (t == "error") {
    *level = LogLevel::kError;
  } else if (t == "off") {
    *level = LogLevel::kOff;
  } else {
    return false;
  }
  return true;
}

void SetLogLevel(LogLevel level) { Level().store(static_cast<int>(level)); }

LogLevel GetLogLevel() { return static_cast<LogLevel>(Level().load()); }

void SetLogSink(LogSink new_sink) {
  auto next = new_sink ? std::make_shared<const LogSink>(std::move(new_sink)) : nullptr;
  absl::MutexLock lock(&sink_mu);
  if (sink == nullptr) sink = new std::shared_ptr<const LogSink>();  // never freed
  *sink = std::move(next);
}

namespace internal_log {

bool Enabled(LogLevel level) {
  return level != LogLevel::kOff && static_cast<int>(level) >= Level().load();
}

void Write(LogLevel level, const char* file, int line, const std::string& text) {
  std::shared_ptr<const LogSink> current;
  {
    absl::MutexLock lock(&sink_mu);
    if (sink != nullptr) current = *sink;
  }
  const LogMessage message{level, file, line, text};
  if (current != nullptr) {
    (*current)(message);
  } else {
    StderrSink(message);
  }
}

}  // namespace internal_log
}  // namespace snapback
