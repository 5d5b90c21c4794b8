#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace snapback::metrics {
namespace {

void AtomicAdd(std::atomic<double>& a, double v) {
  double old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
  }
}

// HELP text escapes backslash and newline (not quotes).
std::string EscapeHelp(absl::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

const char* TypeName(MetricType t) {
  switch (t) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

void Counter::Inc(double v) {
  if (!(v >= 0)) return;
  AtomicAdd(value_, v);
}

void Gauge::Add(double v) { AtomicAdd(value_, v); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double v) {
  // Buckets hold non-cumulative counts; Read() sums them. The first bound
  // >= v is the bucket ("le" is inclusive).
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.bounds = bounds_;
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += counts_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(total);
  }
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  double b = start;
  for (int i = 0; i < count; ++i, b *= factor) out.push_back(b);
  return out;
}

std::string EscapeLabelValue(absl::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  // The shortest of %.15g..%.17g that reads back as the same double.
  char buf[32];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void ExpositionWriter::Begin(absl::string_view name, absl::string_view help,
                             MetricType type) {
  absl::StrAppend(out_, "# HELP ", name, " ", EscapeHelp(help), "\n# TYPE ", name, " ",
                  TypeName(type), "\n");
}

void ExpositionWriter::Sample(absl::string_view name,
                              const std::vector<std::string>& names,
                              const LabelValues& values, double value) {
  absl::StrAppend(out_, name);
  if (!names.empty()) {
    out_->push_back('{');
    for (size_t i = 0; i < names.size(); ++i) {
      if (i > 0) out_->push_back(',');
      absl::StrAppend(out_, names[i], "=\"",
                      EscapeLabelValue(i < values.size() ? values[i] : ""), "\"");
    }
    out_->push_back('}');
  }
  absl::StrAppend(out_, " ", FormatValue(value), "\n");
}

void ExpositionWriter::HistogramSamples(absl::string_view name,
                                        const std::vector<std::string>& names,
                                        const LabelValues& values,
                                        const Histogram::Snapshot& h) {
  std::vector<std::string> le_names = names;
  le_names.push_back("le");
  LabelValues le_values = values;
  le_values.resize(names.size());
  le_values.push_back("");
  const std::string bucket = absl::StrCat(name, "_bucket");
  for (size_t i = 0; i <= h.bounds.size(); ++i) {
    le_values.back() = i < h.bounds.size() ? FormatValue(h.bounds[i]) : "+Inf";
    Sample(bucket, le_names, le_values, static_cast<double>(h.cumulative[i]));
  }
  Sample(absl::StrCat(name, "_sum"), names, values, h.sum);
  Sample(absl::StrCat(name, "_count"), names, values,
         static_cast<double>(h.cumulative.back()));
}

template <typename T>
T* Family<T>::WithLabels(const LabelValues& values) {
  LabelValues key = values;
  key.resize(label_names_.size());
  absl::MutexLock lock(&mu_);
  std::unique_ptr<T>& cell = series_[key];
  if (cell == nullptr) {
    if constexpr (std::is_same_v<T, Histogram>) {
      cell = std::make_unique<Histogram>(bounds_);
    } else {
      cell = std::make_unique<T>();
    }
  }
  return cell.get();
}

template <typename T>
void Family<T>::Render(ExpositionWriter& w) {
  MetricType type = MetricType::kGauge;
  if constexpr (std::is_same_v<T, Counter>) type = MetricType::kCounter;
  if constexpr (std::is_same_v<T, Histogram>) type = MetricType::kHistogram;
  w.Begin(name_, help_, type);
  absl::MutexLock lock(&mu_);
  for (const auto& [values, cell] : series_) {
    if constexpr (std::is_same_v<T, Histogram>) {
      w.HistogramSamples(name_, label_names_, values, cell->Read());
    } else {
      w.Sample(name_, label_names_, values, cell->value());
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

CounterFamily* MetricsRegistry::AddCounter(const std::string& name,
                                           const std::string& help,
                                           std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  for (const auto& [n, e] : order_) {
    if (n == name && e.type == MetricType::kCounter) {
      return static_cast<CounterFamily*>(e.family);
    }
  }
  counters_.emplace_back(new CounterFamily(name, help, std::move(label_names), {}));
  order_.push_back({name, Entry{MetricType::kCounter, counters_.back().get()}});
  return counters_.back().get();
}

GaugeFamily* MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                       std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  for (const auto& [n, e] : order_) {
    if (n == name && e.type == MetricType::kGauge)
      return static_cast<GaugeFamily*>(e.family);
  }
  gauges_.emplace_back(new GaugeFamily(name, help, std::move(label_names), {}));
  order_.push_back({name, Entry{MetricType::kGauge, gauges_.back().get()}});
  return gauges_.back().get();
}

HistogramFamily* MetricsRegistry::AddHistogram(const std::string& name,
                                               const std::string& help,
                                               std::vector<std::string> label_names,
                                               std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  for (const auto& [n, e] : order_) {
    if (n == name && e.type == MetricType::kHistogram) {
      return static_cast<HistogramFamily*>(e.family);
    }
  }
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  histograms_.emplace_back(
      new HistogramFamily(name, help, std::move(label_names), std::move(bounds)));
  order_.push_back({name, Entry{MetricType::kHistogram, histograms_.back().get()}});
  return histograms_.back().get();
}

void MetricsRegistry::AddCollector(std::function<void(ExpositionWriter&)> collect) {
  absl::MutexLock lock(&mu_);
  collectors_.push_back(
      std::make_shared<std::function<void(ExpositionWriter&)>>(std::move(collect)));
}

std::string MetricsRegistry::Render() {
  std::vector<Entry> entries;
  std::vector<std::shared_ptr<std::function<void(ExpositionWriter&)>>> collectors;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, e] : order_) entries.push_back(e);
    collectors = collectors_;
  }
  std::string out;
  ExpositionWriter w(&out);
  for (const Entry& e : entries) {
    switch (e.type) {
      case MetricType::kCounter:
        static_cast<CounterFamily*>(e.family)->Render(w);
        break;
      case MetricType::kGauge:
        static_cast<GaugeFamily*>(e.family)->Render(w);
        break;
      case MetricType::kHistogram:
        static_cast<HistogramFamily*>(e.family)->Render(w);
        break;
    }
  }
  for (const auto& c : collectors) (*c)(w);
  return out;
}

}  // namespace snapback::metrics
