#include "tools/progress_bar.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace snapback::tools {
namespace {

constexpr int kBarWidth = 24;

std::string Eta(absl::Duration d) {
  const int64_t s = absl::ToInt64Seconds(d);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
}

}  // namespace

ProgressBar::ProgressBar(std::FILE* out, bool tty)
    : out_(out), tty_(tty), start_(absl::Now()) {}

std::string ProgressBar::Describe(uint64_t done, uint64_t total, absl::Duration elapsed) {
  const double pct = total == 0 ? 100.0 : 100.0 * static_cast<double>(done) / total;
  const double secs = absl::ToDoubleSeconds(elapsed);
  const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
  // Rounded up: "0s" only when done. (One initialisation: GCC 12 at -O2
  // warns about assigning short literals to a std::string here.)
  const std::string eta =
      done >= total ? std::string("0s")
      : rate > 0 ? Eta(absl::Seconds(std::ceil(static_cast<double>(total - done) / rate)))
                 : std::string("-");
  return absl::StrFormat("%3.0f%% %.1f/%.1f MB, %.1f MB/s, ETA %s", pct, done / 1e6,
                         total / 1e6, rate / 1e6, eta);
}

void ProgressBar::Update(uint64_t done, uint64_t total, const std::string& label,
                         const std::string& extra) {
  done_ = done;
  total_ = total;
  label_ = label;
  extra_ = extra;
  const absl::Time now = absl::Now();
  if (tty_) {
    if (now - last_draw_ < absl::Milliseconds(100) && done < total) return;
    last_draw_ = now;
    Draw();
    return;
  }
  const int decile = total == 0 ? 10 : static_cast<int>(10 * done / total);
  if (decile <= last_decile_) return;
  last_decile_ = decile;
  Draw();
}

void ProgressBar::Draw() {
  const std::string text = absl::StrCat(Describe(done_, total_, absl::Now() - start_),
                                        extra_.empty() ? "" : ", ", extra_);
  if (!tty_) {
    std::fprintf(out_, "%s: %s\n", label_.c_str(), text.c_str());
    std::fflush(out_);
    return;
  }
  const int filled =
      total_ == 0
          ? kBarWidth
          : static_cast<int>(kBarWidth * std::min<double>(1.0, 1.0 * done_ / total_));
  std::string bar(filled, '#');
  bar.resize(kBarWidth, '.');
  // \033[K clears what a longer previous line left behind.
  std::fprintf(out_, "\r%s [%s] %s\033[K", label_.c_str(), bar.c_str(), text.c_str());
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::Note(const std::string& line) {
  if (tty_ && drawn_) std::fprintf(out_, "\r\033[K");
  std::fprintf(out_, "%s\n", line.c_str());
  if (tty_ && drawn_) Draw();
  std::fflush(out_);
}

void ProgressBar::Finish() {
  if (tty_) {
    Draw();
    std::fprintf(out_, "\n");
  } else if (last_decile_ < 10) {
    last_decile_ = 10;
    Draw();
  }
  std::fflush(out_);
}

}  // namespace snapback::tools
