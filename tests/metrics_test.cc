// Metrics as an operator gets them: a real Prometheus (Debian's
// /usr/bin/prometheus) scraping a real snapback-server (embedded) and a
// storage cluster (coordinator + one node) over their HTTP ports, while a
// job saves checkpoints and another one loses a rank to SIGKILL. The values
// are read back through Prometheus's HTTP API and checked against what the
// test did and what the coordinator says over gRPC; the Grafana dashboard
// (docs/grafana/snapback.json) must parse and use only metrics a real scrape
// has (docs/metrics.md).
#include <arpa/inet.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "snapback/client.h"
#include "snapback/v1/coordinator.grpc.pb.h"
#include "snapback/v1/detector.grpc.pb.h"
#include "testing/job_harness.h"
#include "testing/storage_cluster.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using testing::Subprocess;
using testing::TempDir;

// A port free right now on 127.0.0.1 (for processes that need one given).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// GET http://127.0.0.1:PORT/PATH; status -1 when nothing answered.
struct Got {
  int status = -1;
  std::string body;
};
Got Get(int port, const std::string& path) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5);
  c.set_read_timeout(10);
  httplib::Result r = c.Get(path.c_str());
  if (!r) return {};
  return {r->status, r->body};
}

// Polls `cond` every 100 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& cond, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!cond()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return true;
}

// The Prometheus server of the test: its own data dir, a free port, a 1 s
// scrape interval over `targets` (job name -> HOST:PORT).
class Prometheus {
 public:
  Prometheus(const std::string& dir, const std::map<std::string, std::string>& targets)
      : port_(FreePort()) {
    std::filesystem::create_directories(dir + "/data");
    std::ofstream config(dir + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
           << "scrape_configs:\n";
    for (const auto& [job, target] : targets) {
      config << "  - job_name: " << job << "\n    scrape_interval: 1s\n"
             << "    static_configs:\n      - targets: ['" << target << "']\n";
    }
    config.close();
    process_ = std::make_unique<Subprocess>(std::vector<std::string>{
        "/usr/bin/prometheus", "--config.file=" + dir + "/prometheus.yml",
        "--storage.tsdb.path=" + dir + "/data",
        absl::StrCat("--web.listen-address=127.0.0.1:", port_), "--log.level=warn"});
  }
  ~Prometheus() {
    process_->Kill(SIGTERM);
    process_->Wait(absl::Seconds(20));
  }

  bool Ready(absl::Duration timeout) {
    return WaitFor([&] { return Get(port_, "/-/ready").status == 200; }, timeout);
  }

  // The instant-query result: labels and value of each series.
  struct Series {
    std::map<std::string, std::string> labels;
    double value = NAN;
  };
  std::vector<Series> Query(const std::string& expr) {
    Got got =
        Get(port_, "/api/v1/query?query=" + httplib::detail::encode_query_param(expr));
    std::vector<Series> out;
    google::protobuf::Struct json;
    if (got.status != 200 ||
        !google::protobuf::util::JsonStringToMessage(got.body, &json).ok()) {
      return out;
    }
    const auto& result = json.fields().at("data").struct_value().fields().at("result");
    for (const auto& s : result.list_value().values()) {
      Series series;
      for (const auto& [k, v] :
           s.struct_value().fields().at("metric").struct_value().fields()) {
        series.labels[k] = v.string_value();
      }
      const auto& value = s.struct_value().fields().at("value").list_value().values(1);
      (void)absl::SimpleAtod(value.string_value(), &series.value);
      out.push_back(std::move(series));
    }
    return out;
  }
  // The value of a query with exactly one series; NaN otherwise.
  double Value(const std::string& expr) {
    std::vector<Series> r = Query(expr);
    return r.size() == 1 ? r[0].value : NAN;
  }
  // Polls until Value(expr) == want (Prometheus scrapes every second);
  // returns the last value seen.
  double WaitValue(const std::string& expr, double want,
                   absl::Duration timeout = absl::Seconds(20)) {
    double v = NAN;
    WaitFor(
        [&] {
          v = Value(expr);
          return v == want;
        },
        timeout);
    return v;
  }

 private:
  const int port_;
  std::unique_ptr<Subprocess> process_;
};

// "snapback-server listening on GRPC (..., http://HOST:PORT)" -> GRPC, PORT.
void ParseListening(const std::string& line, std::string* grpc, int* http_port) {
  const std::string key = "listening on ";
  const std::string rest = line.substr(line.find(key) + key.size());
  *grpc = rest.substr(0, rest.find(' '));
  const size_t at = line.find("http://");
  const std::string http = at == std::string::npos ? "" : line.substr(at + 7);
  *http_port = 0;
  (void)absl::SimpleAtoi(
      http.substr(http.rfind(':') + 1, http.find(')') - http.rfind(':') - 1), http_port);
}

// Metric names the queries of a Grafana dashboard use.
void CollectExprs(const google::protobuf::Value& v, std::vector<std::string>* out) {
  if (v.has_struct_value()) {
    for (const auto& [k, f] : v.struct_value().fields()) {
      if (k == "expr" && f.has_string_value()) out->push_back(f.string_value());
      CollectExprs(f, out);
    }
  } else if (v.has_list_value()) {
    for (const auto& e : v.list_value().values()) CollectExprs(e, out);
  }
}

TEST(MetricsTest, PrometheusScrapesSavesIncidentsClusterStateAndTheDashboardsMetrics) {
  TempDir dir;
  // The embedded server: its HTTP port through --http-ready-file and the
  // listening line (they must agree).
  Subprocess server(
      {Subprocess::BinPath("snapback-server"), "--data-dir=" + dir.path() + "/server",
       "--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0",
       "--http-ready-file=" + dir.path() + "/http.port", "--gc-interval=0s"});
  auto line = server.WaitForLine("snapback-server listening on", absl::Seconds(60));
  ASSERT_TRUE(line.has_value());
  std::string endpoint;
  int http_port = 0;
  ParseListening(*line, &endpoint, &http_port);
  ASSERT_GT(http_port, 0) << *line;
  EXPECT_EQ(ReadFile(dir.path() + "/http.port"), absl::StrCat(http_port, "\n"));

  // The HTTP server itself: the index lists /metrics, unknown paths are 404.
  Got index = Get(http_port, "/");
  EXPECT_EQ(index.status, 200);
  EXPECT_TRUE(absl::StrContains(index.body, "href=\"/metrics\"")) << index.body;
  EXPECT_EQ(Get(http_port, "/nope").status, 404);

  // A storage cluster whose coordinator and node serve HTTP on ports we pick.
  const int coord_http = FreePort(), node_http = FreePort();
  testing::StorageClusterOptions co;
  co.nodes = 1;
  co.coordinator_flags = {absl::StrCat("--http-listen=127.0.0.1:", coord_http)};
  co.flags_of_node[0] = {absl::StrCat("--http-listen=127.0.0.1:", node_http)};
  testing::StorageCluster cluster(dir.path() + "/cluster", co);
  ASSERT_TRUE(cluster.Start());

  Prometheus prom(dir.path() + "/prometheus",
                  {{"embedded", absl::StrCat("127.0.0.1:", http_port)},
                   {"coordinator", absl::StrCat("127.0.0.1:", coord_http)},
                   {"node", absl::StrCat("127.0.0.1:", node_http)}});
  ASSERT_TRUE(prom.Ready(absl::Seconds(30)));

  // Job "saves": 2 ranks save steps 1..3 and finish.
  {
    ClientOptions o;
    o.endpoint = endpoint;
    auto client = Client::Connect(o);
    ASSERT_TRUE(client.ok()) << client.status();
    std::vector<std::unique_ptr<Checkpointer>> ranks;
    for (int r = 0; r < 2; ++r) {
      CheckpointerOptions c;
      c.job_id = "saves";
      c.rank = r;
      c.world_size = 2;
      c.incarnation = 1;
      c.heartbeat_interval = absl::Milliseconds(200);
      auto ck = (*client)->NewCheckpointer(c);
      ASSERT_TRUE(ck.ok()) << ck.status();
      ranks.push_back(*std::move(ck));
    }
    for (int64_t step = 1; step <= 3; ++step) {
      for (int r = 0; r < 2; ++r) {
        const std::string bytes = testing::MakeBytes(1 << 16, step * 10 + r);
        TensorView t;
        t.name = "layer.weight";
        t.dtype = DType::kFloat32;
        t.shape = {128, 128};
        t.data = bytes.data();
        auto h = ranks[r]->Save(step, {t});
        ASSERT_TRUE(h.ok()) << h.status();
        ASSERT_TRUE(h->Wait().ok());
      }
    }
    for (auto& r : ranks) ASSERT_TRUE(r->Close().ok());
  }

  // Job "crash" under snapback-launch: rank 1 is SIGKILLed after step 12;
  // the detector restarts the job, which restores and finishes.
  const std::string progress = dir.path() + "/progress";
  std::filesystem::create_directories(progress);
  {
    testing::Launcher job({Subprocess::BinPath("snapback-launch"),
                           "--job",
                           "crash",
                           "--nproc",
                           "2",
                           "--endpoint",
                           endpoint,
                           "--stop-grace",
                           "2s",
                           "--",
                           Subprocess::BinPath("snapback-demo-job"),
                           "--steps",
                           "30",
                           "--save-every",
                           "5",
                           "--mib",
                           "1",
                           "--step-ms",
                           "40",
                           "--progress-dir",
                           progress});
    auto p = testing::WaitProgress(progress, 1, 1, 12, absl::Seconds(60));
    ASSERT_TRUE(p.has_value()) << job.Output();
    ASSERT_EQ(kill(p->pid, SIGKILL), 0);
    ASSERT_EQ(job.Wait(absl::Seconds(120)), 0) << job.Output();
  }

  // An operator action (audited).
  auto channel = grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials());
  auto coordinator = v1::CoordinatorService::NewStub(channel);
  auto detector = v1::DetectorService::NewStub(channel);
  {
    grpc::ClientContext ctx;
    v1::CollectGarbageRequest req;
    req.set_reason("metrics test");
    v1::CollectGarbageResponse resp;
    ASSERT_TRUE(coordinator->CollectGarbage(&ctx, req, &resp).ok());
  }

  // What the coordinator says, to compare the metrics with.
  uint64_t logical = 0, new_bytes = 0;
  {
    grpc::ClientContext ctx;
    v1::ListCheckpointsRequest req;
    req.set_job_id("saves");
    v1::ListCheckpointsResponse resp;
    ASSERT_TRUE(coordinator->ListCheckpoints(&ctx, req, &resp).ok());
    for (const auto& c : resp.checkpoints()) {
      if (c.state() != v1::COMMITTED) continue;
      logical += c.logical_bytes();
      new_bytes += c.new_bytes();
    }
  }
  EXPECT_GE(logical, 3u * 2 * (1 << 16));
  v1::ListIncidentsResponse incidents;
  {
    grpc::ClientContext ctx;
    v1::ListIncidentsRequest req;
    req.set_job_id("crash");
    ASSERT_TRUE(detector->ListIncidents(&ctx, req, &incidents).ok());
  }
  ASSERT_EQ(incidents.incidents_size(), 1);
  const v1::Incident& incident = incidents.incidents(0);
  ASSERT_EQ(incident.kind(), "rank exit");
  ASSERT_GT(incident.first_new_step_unix_ms(), 0);

  // Every target scraped.
  EXPECT_EQ(prom.WaitValue("count(up == 1)", 3), 3);

  // Saves and bytes of job "saves", its state and checkpoints.
  EXPECT_EQ(prom.WaitValue(R"(snapback_saves_committed_total{job_id="saves"})", 3), 3);
  EXPECT_EQ(prom.WaitValue(R"(snapback_save_logical_bytes_total{job_id="saves"})",
                           static_cast<double>(logical)),
            static_cast<double>(logical));
  // The ranks' SaveStats: the new bytes summed per checkpoint, one stage
  // observation per rank and save (2 ranks x 3 saves).
  EXPECT_GT(new_bytes, 0u);
  EXPECT_EQ(prom.WaitValue(R"(snapback_save_new_bytes_total{job_id="saves"})",
                           static_cast<double>(new_bytes)),
            static_cast<double>(new_bytes));
  EXPECT_EQ(
      prom.WaitValue(R"(snapback_save_to_durable_seconds_count{job_id="saves"})", 6), 6);
  EXPECT_EQ(prom.WaitValue(R"(snapback_save_blocked_seconds_count{job_id="saves"})", 6),
            6);
  EXPECT_EQ(
      prom.WaitValue(R"(snapback_checkpoints{job_id="saves",state="COMMITTED"})", 3), 3);
  EXPECT_EQ(prom.WaitValue(R"(snapback_job_state{job_id="saves",state="FINISHED"})", 1),
            1);
  const double lag = prom.Value(R"(snapback_job_durability_lag_seconds{job_id="saves"})");
  EXPECT_GE(lag, 0);
  EXPECT_LT(lag, 300);

  // The crash: one "rank exit" incident, its detection and restart latencies
  // exactly as the incident log has them; the job restarted once.
  EXPECT_EQ(
      prom.WaitValue(R"(snapback_incidents_total{job_id="crash",kind="rank exit"})", 1),
      1);
  EXPECT_EQ(prom.WaitValue(R"(snapback_job_incarnation{job_id="crash"})", 2), 2);
  EXPECT_EQ(prom.WaitValue(R"(snapback_job_state{job_id="crash",state="FINISHED"})", 1),
            1);
  EXPECT_EQ(
      prom.WaitValue(R"(snapback_incident_detection_seconds_count{kind="rank exit"})", 1),
      1);
  const double detection =
      (incident.detected_unix_ms() - incident.last_healthy_unix_ms()) / 1e3;
  EXPECT_NEAR(prom.Value(R"(snapback_incident_detection_seconds_sum{kind="rank exit"})"),
              detection, 1e-9);
  const double restart =
      (incident.first_new_step_unix_ms() - incident.detected_unix_ms()) / 1e3;
  EXPECT_NEAR(prom.Value(R"(snapback_incident_restart_seconds_sum{kind="rank exit"})"),
              restart, 1e-9);
  // histogram_quantile over the buckets lands in the bucket holding it.
  const double q = prom.Value(
      R"(histogram_quantile(1, sum by (le) (snapback_incident_restart_seconds_bucket{kind="rank exit"})))");
  EXPECT_GE(q, restart) << "the bucket's upper bound";
  EXPECT_LE(q, std::max(0.5, restart * 2)) << "exponential buckets, factor 2";

  EXPECT_EQ(
      prom.WaitValue(R"(snapback_operator_actions_total{action="gc",outcome="ok"})", 1),
      1);

  // The embedded storage side stored and served chunks.
  EXPECT_GT(prom.Value(R"(snapback_storage_chunks_put_total{job="embedded"})"), 0);
  EXPECT_GT(prom.Value(R"(snapback_storage_written_bytes_total{job="embedded"})"), 0);
  EXPECT_GT(prom.Value(R"(snapback_storage_chunks_get_total{job="embedded"})"), 0)
      << "the restarted ranks restored";
  EXPECT_GT(prom.Value(R"(snapback_storage_free_bytes{job="embedded"})"), 0);

  // The cluster: its node UP with capacity, nothing under-replicated; the
  // node reports its own store.
  const std::string node_id = cluster.node_id(0);
  EXPECT_EQ(prom.WaitValue(absl::StrCat(R"(snapback_node_state{node=")", node_id,
                                        R"(",state="NODE_UP"})"),
                           1),
            1);
  EXPECT_GT(
      prom.Value(absl::StrCat(R"(snapback_node_capacity_bytes{node=")", node_id, "\"}")),
      0);
  EXPECT_EQ(prom.Value("snapback_cluster_under_replicated_chunks"), 0);
  EXPECT_GT(prom.Value(R"(snapback_storage_free_bytes{job="node"})"), 0);

  // The dashboard: valid JSON, and every metric its queries use is in a
  // real scrape (histograms by their family name).
  const std::string dashboard =
      ReadFile(std::string(SNAPBACK_SOURCE_DIR) + "/docs/grafana/snapback.json");
  google::protobuf::Value json;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(dashboard, &json).ok())
      << "docs/grafana/snapback.json does not parse as JSON";
  std::vector<std::string> exprs;
  CollectExprs(json, &exprs);
  EXPECT_GE(exprs.size(), 12u);
  std::string scraped;
  for (int port : {http_port, coord_http, node_http}) {
    Got m = Get(port, "/metrics");
    ASSERT_EQ(m.status, 200);
    scraped += m.body;
  }
  const std::regex name_re("snapback_[a-z0-9_]+");
  std::set<std::string> names;
  for (const std::string& e : exprs) {
    for (std::sregex_iterator it(e.begin(), e.end(), name_re), end; it != end; ++it) {
      names.insert(it->str());
    }
  }
  for (std::string name : names) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string base = name.substr(0, name.size() - std::strlen(suffix));
      if (absl::EndsWith(name, suffix) &&
          absl::StrContains(scraped, absl::StrCat("# TYPE ", base, " histogram"))) {
        name = base;
      }
    }
    EXPECT_TRUE(absl::StrContains(scraped, absl::StrCat("# TYPE ", name, " ")))
        << "the dashboard uses " << name << ", which no scrape has";
  }
}

}  // namespace
}  // namespace snapback
