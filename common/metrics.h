// Metrics in the Prometheus text exposition format (version 0.0.4).
//
// A MetricsRegistry holds metric families — counters, gauges and histograms,
// each with a fixed list of label names — and collectors: functions run at
// scrape time that write samples for state that lives elsewhere (a store's
// counts, a node map). Render() returns the whole exposition, families in
// registration order, each with its HELP and TYPE lines.
//
// Hot paths: a family's WithLabels() takes a lock and may allocate; it
// returns a cell whose address is stable for the registry's lifetime, so a
// caller that updates the same series often looks it up once and keeps the
// pointer. Inc/Set/Observe on a cell are lock-free atomics.
//
//   MetricsRegistry registry;
//   CounterFamily* puts = registry.AddCounter(
//       "snapback_storage_chunks_put_total", "Chunks stored.", {});
//   Counter* c = puts->WithLabels({});
//   c->Inc();
//
// Names follow the Prometheus conventions (snake_case, a unit suffix:
// _seconds, _bytes, _total for counters). Label values are escaped as the
// format requires (backslash, double quote, newline).
//
// Thread-safe.
#ifndef SNAPBACK_COMMON_METRICS_H_
#define SNAPBACK_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace snapback::metrics {

// Label values of one series, in the order of the family's label names.
using LabelValues = std::vector<std::string>;

// A monotonically increasing count (resets only when the process restarts).
class Counter {
 public:
  // `v` must be >= 0 (a negative increment is ignored).
  void Inc(double v = 1);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// A value that goes up and down.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into buckets with fixed upper bounds (plus +Inf),
// with their sum and count.
class Histogram {
 public:
  // `bounds` ascending, finite.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (= count)
    double sum = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

// Bucket bounds: `count` bounds start, start*factor, start*factor^2, ...
std::vector<double> ExponentialBuckets(double start, double factor, int count);

enum class MetricType { kCounter, kGauge, kHistogram };

// Writes families to the exposition text. Collectors get one at scrape
// time: Begin() a family, then its samples; a family's samples must all
// follow its Begin().
class ExpositionWriter {
 public:
  explicit ExpositionWriter(std::string* out) : out_(out) {}
  // HELP and TYPE lines of family `name`.
  void Begin(absl::string_view name, absl::string_view help, MetricType type);
  // One sample line: `name{labels} value`. `names` and `values` pair up.
  void Sample(absl::string_view name, const std::vector<std::string>& names,
              const LabelValues& values, double value);
  // The _bucket/_sum/_count lines of a histogram snapshot.
  void HistogramSamples(absl::string_view name, const std::vector<std::string>& names,
                        const LabelValues& values, const Histogram::Snapshot& h);

 private:
  std::string* const out_;
};

// A family of series with the same name and label names; T is Counter,
// Gauge or Histogram.
template <typename T>
class Family {
 public:
  // The series for `values` (one per label name), created at zero on first
  // use. Never null; stable until the registry is destroyed. A wrong number
  // of values is a programming error: the values are padded or cut.
  T* WithLabels(const LabelValues& values) ABSL_LOCKS_EXCLUDED(mu_);
  const std::vector<std::string>& label_names() const { return label_names_; }

 private:
  friend class MetricsRegistry;
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::vector<double> bounds)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        bounds_(std::move(bounds)) {}
  void Render(ExpositionWriter& w) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // histograms only
  absl::Mutex mu_;
  // Series render in label order; unique_ptr keeps cells where they are.
  std::map<LabelValues, std::unique_ptr<T>> series_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Adds a family (owned by the registry). Names must be unique across the
  // registry and its collectors; adding a name twice returns the first
  // family when the type matches (so two components may share one).
  CounterFamily* AddCounter(const std::string& name, const std::string& help,
                            std::vector<std::string> label_names);
  GaugeFamily* AddGauge(const std::string& name, const std::string& help,
                        std::vector<std::string> label_names);
  HistogramFamily* AddHistogram(const std::string& name, const std::string& help,
                                std::vector<std::string> label_names,
                                std::vector<double> bounds);

  // Runs `collect` at every Render(), after the registered families; it
  // writes its own families (names not used by AddX). Collectors run in the
  // order added, on the scraping thread, without the registry's lock held,
  // so they may take their own locks (and should be quick).
  void AddCollector(std::function<void(ExpositionWriter&)> collect);

  // The exposition text, Content-Type kContentType.
  std::string Render();

  static constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

 private:
  struct Entry {
    MetricType type;
    void* family;  // CounterFamily*, GaugeFamily* or HistogramFamily*
  };
  absl::Mutex mu_;
  std::deque<std::unique_ptr<CounterFamily>> counters_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<GaugeFamily>> gauges_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<HistogramFamily>> histograms_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, Entry>> order_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<std::function<void(ExpositionWriter&)>>> collectors_
      ABSL_GUARDED_BY(mu_);
};

// Escapes a label value for the exposition format.
std::string EscapeLabelValue(absl::string_view v);
// Formats a sample value: integers without a fraction, +Inf/-Inf/NaN as the
// format spells them.
std::string FormatValue(double v);

}  // namespace snapback::metrics

#endif  // SNAPBACK_COMMON_METRICS_H_
