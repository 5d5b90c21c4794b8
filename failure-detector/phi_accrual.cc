#include "failure-detector/phi_accrual.h"

#include <algorithm>
#include <cmath>

namespace snapback::detector {
namespace {

// -log10 of the probability that a normal(mean, sd) variable exceeds t, with
// the logistic approximation of the normal CDF Akka uses (error < 1e-4),
// which stays finite far into the tail where 1 - erf underflows.
double PhiOf(double t, double mean, double sd) {
  const double y = (t - mean) / sd;
  const double e = std::exp(-y * (1.5976 + 0.070566 * y * y));
  if (t > mean) return -std::log10(e / (1.0 + e));
  return -std::log10(1.0 - 1.0 / (1.0 + e));
}

}  // namespace

PhiAccrualDetector::PhiAccrualDetector(PhiAccrualOptions options)
    : options_(std::move(options)) {
  options_.window = std::max(1, options_.window);
}

void PhiAccrualDetector::Heartbeat(absl::Duration now) {
  if (started_) {
    const double interval = absl::ToDoubleSeconds(now - last_);
    if (interval >= 0) {
      intervals_.push_back(interval);
      sum_ += interval;
      sum_sq_ += interval * interval;
      if (static_cast<int>(intervals_.size()) > options_.window) {
        const double old = intervals_.front();
        intervals_.pop_front();
        sum_ -= old;
        sum_sq_ -= old * old;
      }
    }
  }
  started_ = true;
  last_ = std::max(last_, now);
}

absl::Duration PhiAccrualDetector::mean() const {
  if (intervals_.empty()) return options_.first_interval;
  return absl::Seconds(sum_ / intervals_.size());
}

absl::Duration PhiAccrualDetector::std_dev() const {
  double sd = 0;
  if (intervals_.size() > 1) {
    const double n = intervals_.size();
    const double m = sum_ / n;
    sd = std::sqrt(std::max(0.0, sum_sq_ / n - m * m));
  } else {
    // One interval or none says nothing about the spread: assume a quarter
    // of the mean, as Akka does for its first interval.
    sd = absl::ToDoubleSeconds(mean()) / 4;
  }
  return std::max(absl::Seconds(sd), options_.min_std_dev);
}

double PhiAccrualDetector::Phi(absl::Duration now) const {
  if (!started_) return 0;
  const double t = absl::ToDoubleSeconds(now - last_);
  const double m = absl::ToDoubleSeconds(mean() + options_.acceptable_pause);
  return std::max(0.0, PhiOf(t, m, absl::ToDoubleSeconds(std_dev())));
}

absl::Duration PhiAccrualDetector::WhenPhiReaches(double threshold) const {
  if (!started_) return absl::InfiniteDuration();
  // phi grows monotonically with t: bisect on [0, mean + 100 sd].
  const double m = absl::ToDoubleSeconds(mean() + options_.acceptable_pause);
  const double sd = absl::ToDoubleSeconds(std_dev());
  double lo = 0, hi = m + 100 * sd;
  for (int i = 0; i < 60; ++i) {
    const double mid = (lo + hi) / 2;
    (PhiOf(mid, m, sd) < threshold ? lo : hi) = mid;
  }
  return last_ + absl::Seconds(hi);
}

}  // namespace snapback::detector
