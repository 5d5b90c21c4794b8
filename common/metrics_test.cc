#include "common/metrics.h"

#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace snapback::metrics {
namespace {

TEST(MetricsTest, CounterGaugeAndHistogramRenderInTheTextFormat) {
  MetricsRegistry r;
  r.AddCounter("t_saves_total", "Saves.", {"job"})->WithLabels({"a"})->Inc(3);
  r.AddGauge("t_free_bytes", "Free.", {})->WithLabels({})->Set(1.5);
  HistogramFamily* h =
      r.AddHistogram("t_lat_seconds", "Latency.", {"kind"}, {1, 0.25, 10});
  Histogram* crash = h->WithLabels({"rank exit"});
  crash->Observe(0.125);
  crash->Observe(0.25);  // "le" is inclusive
  crash->Observe(5);
  crash->Observe(50);
  EXPECT_EQ(r.Render(),
            "# HELP t_saves_total Saves.\n"
            "# TYPE t_saves_total counter\n"
            "t_saves_total{job=\"a\"} 3\n"
            "# HELP t_free_bytes Free.\n"
            "# TYPE t_free_bytes gauge\n"
            "t_free_bytes 1.5\n"
            "# HELP t_lat_seconds Latency.\n"
            "# TYPE t_lat_seconds histogram\n"
            "t_lat_seconds_bucket{kind=\"rank exit\",le=\"0.25\"} 2\n"
            "t_lat_seconds_bucket{kind=\"rank exit\",le=\"1\"} 2\n"
            "t_lat_seconds_bucket{kind=\"rank exit\",le=\"10\"} 3\n"
            "t_lat_seconds_bucket{kind=\"rank exit\",le=\"+Inf\"} 4\n"
            "t_lat_seconds_sum{kind=\"rank exit\"} 55.375\n"
            "t_lat_seconds_count{kind=\"rank exit\"} 4\n");
}

TEST(MetricsTest, LabelValuesAndHelpAreEscaped) {
  MetricsRegistry r;
  r.AddGauge("t_g", "line one\nback\\slash \"quoted\"", {"job"})
      ->WithLabels({"a\"b\\c\nd"})
      ->Set(1);
  EXPECT_EQ(r.Render(),
            "# HELP t_g line one\\nback\\\\slash \"quoted\"\n"
            "# TYPE t_g gauge\n"
            "t_g{job=\"a\\\"b\\\\c\\nd\"} 1\n");
}

TEST(MetricsTest, SameNameAndTypeSharesTheFamilyAndCellsAreStable) {
  MetricsRegistry r;
  CounterFamily* a = r.AddCounter("t_total", "T.", {"x"});
  CounterFamily* b = r.AddCounter("t_total", "T.", {"x"});
  EXPECT_EQ(a, b);
  Counter* c = a->WithLabels({"1"});
  for (int i = 0; i < 100; ++i) a->WithLabels({absl::StrCat(i + 2)});
  EXPECT_EQ(c, a->WithLabels({"1"}));
  c->Inc(-5);  // ignored: counters only go up
  EXPECT_EQ(c->value(), 0);
}

TEST(MetricsTest, ConcurrentIncrementsAreAllCounted) {
  MetricsRegistry r;
  Counter* c = r.AddCounter("t_total", "T.", {})->WithLabels({});
  Histogram* h = r.AddHistogram("t_seconds", "T.", {}, {0.5})->WithLabels({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c->Inc();
        h->Observe(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c->value(), 40000);
  Histogram::Snapshot s = h->Read();
  EXPECT_EQ(s.cumulative.back(), 40000u);
  EXPECT_EQ(s.cumulative.front(), 0u);
  EXPECT_EQ(s.sum, 40000);
}

TEST(MetricsTest, CollectorsWriteAfterTheFamiliesAtEveryScrape) {
  MetricsRegistry r;
  r.AddGauge("t_a", "A.", {})->WithLabels({})->Set(1);
  int scrapes = 0;
  r.AddCollector([&](ExpositionWriter& w) {
    ++scrapes;
    w.Begin("t_nodes", "Nodes.", MetricType::kGauge);
    w.Sample("t_nodes", {"node", "state"}, {"n1", "UP"}, scrapes);
  });
  r.Render();
  EXPECT_EQ(r.Render(),
            "# HELP t_a A.\n# TYPE t_a gauge\nt_a 1\n"
            "# HELP t_nodes Nodes.\n# TYPE t_nodes gauge\n"
            "t_nodes{node=\"n1\",state=\"UP\"} 2\n");
}

TEST(MetricsTest, ValuesFormatAsThePrometheusParserReadsThem) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(-3), "-3");
  EXPECT_EQ(FormatValue(1e18), "1e+18");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatValue(0.0 / 0.0), "NaN");
  EXPECT_EQ(ExponentialBuckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
}

}  // namespace
}  // namespace snapback::metrics
