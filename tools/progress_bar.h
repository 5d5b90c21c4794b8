// ProgressBar: a byte-progress display for long operator commands
// (snapbackctl verify): bytes done / total, MB/s, ETA.
//
// On a terminal the bar is one line redrawn in place with '\r' (at most ten
// times a second); elsewhere (a log, a pipe) it prints a plain line each
// time another ~10% is done, so logs stay readable. Lines printed through
// Note() appear above the bar without breaking it.
//
// Not thread-safe: one thread drives it.
#ifndef SNAPBACK_TOOLS_PROGRESS_BAR_H_
#define SNAPBACK_TOOLS_PROGRESS_BAR_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/time/time.h"

namespace snapback::tools {

class ProgressBar {
 public:
  // Draws to `out` (not owned), as a terminal when `tty`.
  ProgressBar(std::FILE* out, bool tty);

  // Reports `done` of `total` bytes; `label` says what is being worked on
  // (e.g. "step 3 (1/3)") and `extra` anything worth a glance ("2 bad").
  void Update(uint64_t done, uint64_t total, const std::string& label,
              const std::string& extra = "");
  // A line above the bar (a terminal) or between progress lines.
  void Note(const std::string& line);
  // Ends the display: the last state once more, and a newline on a terminal.
  void Finish();

  // "45% 12.3/27.0 MB, 85.2 MB/s, ETA 2s"; exposed for tests.
  static std::string Describe(uint64_t done, uint64_t total, absl::Duration elapsed);

 private:
  void Draw();

  std::FILE* const out_;
  const bool tty_;
  const absl::Time start_;
  absl::Time last_draw_ = absl::InfinitePast();
  int last_decile_ = -1;  // non-tty: the last 10% step printed
  bool drawn_ = false;    // tty: a bar is on the current line
  uint64_t done_ = 0;
  uint64_t total_ = 0;
  std::string label_;
  std::string extra_;
};

}  // namespace snapback::tools

#endif  // SNAPBACK_TOOLS_PROGRESS_BAR_H_
