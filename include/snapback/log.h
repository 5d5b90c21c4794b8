// Where snapback's own messages go.
//
// The library (client, storage engine, coordinator, detector) reports what a
// person should know but no caller is waiting for — a refused heartbeat, a
// skipped compaction, a job failed by the detector — through one sink. By
// default the sink writes one line per message to stderr, prefixed with the
// time and the level. A training job that embeds the client can raise the
// level, silence it, or route the messages into its own logging.
//
// Thread-safety: every function here is thread-safe. A sink may be called
// from any of snapback's threads, concurrently; it must not call back into
// snapback and should return quickly.
#ifndef SNAPBACK_LOG_H_
#define SNAPBACK_LOG_H_

#include <functional>
#include <string>

#include "absl/strings/string_view.h"

namespace snapback {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };

// "debug", "info", "warning", "error", "off".
const char* LogLevelName(LogLevel level);
// Parses a LogLevelName (case-insensitive; "warn" too). False when unknown.
bool ParseLogLevel(absl::string_view text, LogLevel* level);

// Messages below `level` are dropped before they are formatted.
// Default: $SNAPBACK_LOG_LEVEL when set to a level name, else kInfo
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

// One message: its level, the source file and line that sent it, and the
// text (one line, no trailing newline).
struct LogMessage {
  LogLevel level;
  const char* file;
  int line;
  absl::string_view text;
};
using LogSink = std::function<void(const LogMessage&)>;

// Replaces the sink; nullptr restores the default stderr sink. Messages sent
// while SetLogSink runs go to the old or the new sink, never to neither.
// Default: stderr, "2026-12-01T07:30:00.123Z W snapback: text"
void SetLogSink(LogSink sink);

}  // namespace snapback

#endif  // SNAPBACK_LOG_H_
