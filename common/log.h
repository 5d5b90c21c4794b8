// SNAPBACK_LOG(LEVEL, format, args...): the one way library code reports
// something (see include/snapback/log.h for levels and sinks). The format is
// absl::StrFormat's (type-checked at compile time); it is evaluated only when
// the level is enabled. Binaries print their own usage and fatal errors to
// stderr; everything below main() logs through here.
#ifndef SNAPBACK_COMMON_LOG_H_
#define SNAPBACK_COMMON_LOG_H_

#include <string>

#include "absl/strings/str_format.h"
#include "snapback/log.h"

namespace snapback::internal_log {

bool Enabled(LogLevel level);
void Write(LogLevel level, const char* file, int line, const std::string& text);

}  // namespace snapback::internal_log

#define SNAPBACK_LOG(LEVEL, ...)                                                 \
  do {                                                                           \
    if (::snapback::internal_log::Enabled(::snapback::LogLevel::k##LEVEL)) {     \
      ::snapback::internal_log::Write(::snapback::LogLevel::k##LEVEL, __FILE__,  \
                                      __LINE__, ::absl::StrFormat(__VA_ARGS__)); \
    }                                                                            \
  } while (false)

#endif  // SNAPBACK_COMMON_LOG_H_
