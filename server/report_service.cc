#include "server/report_service.h"

#include <map>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "sla/sla_report.h"

namespace snapback::server {

namespace {

// How long the goodput gauges reuse the reports they computed.
constexpr absl::Duration kFresh = absl::Seconds(10);

// The report of one job, `watched` being the detector's WatchedJobStates()
// (asked once by callers that report on many jobs).
absl::StatusOr<v1::SlaReport> Build(coordinator::CoordinatorStore* store,
                                    const std::map<std::string, std::string>& watched,
                                    const v1::SlaTargets& targets,
                                    const std::string& job_id, int64_t from_unix_ms,
                                    int64_t to_unix_ms) {
  const int64_t now = absl::ToUnixMillis(absl::Now());
  // A day of slack for clocks; beyond that a window is a typo (and far-off
  // times would only extrapolate the durability lag).
  const int64_t latest = now + 24 * 3600 * 1000;
  if (from_unix_ms < 0 || to_unix_ms < 0 || from_unix_ms > latest ||
      to_unix_ms > latest || (to_unix_ms > 0 && to_unix_ms < from_unix_ms)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "report window [", from_unix_ms, ", ", to_unix_ms,
        "] is not a window: give Unix ms with from <= to, neither in the future (0 = "
        "open)"));
  }
  sla::ReportInput in;
  absl::StatusOr<v1::JobInfo> job = store->DescribeJob(job_id);
  if (!job.ok()) return job.status();
  in.job = *std::move(job);
  // Read from the durable logs only: asking the detector about a job it does
  // not watch would make it start watching it.
  absl::StatusOr<std::vector<v1::Incident>> incidents = store->ListIncidents(job_id);
  if (!incidents.ok()) return incidents.status();
  in.incidents = *std::move(incidents);
  absl::StatusOr<std::vector<v1::JobRun>> runs = store->ListJobRuns(job_id);
  if (!runs.ok()) return runs.status();
  in.runs = *std::move(runs);
  // The run log says when the last run ended (also across a coordinator
  // restart, after which the detector would call an unwatched job
  // RUNNING); a new run is logged at its first heartbeat.
  auto it = watched.find(job_id);
  if (!in.runs.empty() && in.runs.back().ended_unix_ms() > 0) {
    in.state = in.runs.back().end_state();
  } else if (it != watched.end()) {
    in.state = it->second;
  } else {
    in.state = "UNKNOWN";
  }
  absl::StatusOr<v1::ListCheckpointsResponse> ckpts = store->ListCheckpoints(job_id);
  if (!ckpts.ok()) return ckpts.status();
  in.checkpoints.assign(ckpts->checkpoints().begin(), ckpts->checkpoints().end());
  in.now_unix_ms = now;
  in.from_unix_ms = from_unix_ms;
  in.to_unix_ms = to_unix_ms;
  in.targets = targets;
  return sla::ComputeReport(in);
}

}  // namespace

absl::StatusOr<v1::SlaReport> BuildReport(coordinator::CoordinatorStore* store,
                                          detector::Detector* detector,
                                          const v1::SlaTargets& targets,
                                          const std::string& job_id, int64_t from_unix_ms,
                                          int64_t to_unix_ms) {
  return Build(store, detector->WatchedJobStates(), targets, job_id, from_unix_ms,
               to_unix_ms);
}

HttpResponse ReportPage(coordinator::CoordinatorStore* store,
                        detector::Detector* detector, const v1::SlaTargets& targets,
                        const HttpRequest& req) {
  auto param = [&](const char* name) {
    auto it = req.params.find(name);
    return it == req.params.end() ? std::string() : it->second;
  };
  auto error = [](int status, std::string text) {
    return HttpResponse{.status = status, .body = std::move(text) + "\n"};
  };
  const std::string job = param("job");
  if (job.empty())
    return error(400, "name the job: /report?job=JOB (snapbackctl jobs lists them)");
  int64_t window[2] = {0, 0};
  const char* names[2] = {"from", "to"};
  for (int i = 0; i < 2; ++i) {
    const std::string v = param(names[i]);
    if (!v.empty() && !absl::SimpleAtoi(v, &window[i])) {
      return error(
          400, absl::StrCat(names[i], "=", v, " is not a time: give Unix milliseconds"));
    }
  }
  const std::string format = param("format").empty() ? "html" : param("format");
  if (format != "html" && format != "md" && format != "json") {
    return error(400, absl::StrCat("format=", format, " is not one of html, md, json"));
  }
  absl::StatusOr<v1::SlaReport> report =
      BuildReport(store, detector, targets, job, window[0], window[1]);
  if (!report.ok()) {
    return error(absl::IsNotFound(report.status())          ? 404
                 : absl::IsInvalidArgument(report.status()) ? 400
                                                            : 500,
                 std::string(report.status().message()));
  }
  if (format == "json") {
    return HttpResponse{.content_type = "application/json",
                        .body = sla::ReportToJson(*report)};
  }
  if (format == "md") {
    return HttpResponse{.content_type = "text/markdown; charset=utf-8",
                        .body = sla::RenderMarkdown(*report)};
  }
  return HttpResponse{.content_type = "text/html; charset=utf-8",
                      .body = sla::RenderHtml(*report)};
}

void AddReportCollectors(metrics::MetricsRegistry* registry,
                         coordinator::CoordinatorStore* store,
                         detector::Detector* detector, v1::SlaTargets targets) {
  // A report per job costs a few RocksDB prefix scans; scrapes (every 15 s
  // by default, but anyone on loopback may ask in a loop) reuse the last
  // figures for up to kFresh.
  struct Cache {
    absl::Mutex mu;
    absl::Time at = absl::InfinitePast();
    std::vector<std::tuple<std::string, double, bool>>
        figures;  // job, goodput, compliant
  };
  auto cache = std::make_shared<Cache>();
  registry->AddCollector([store, detector, targets, cache](metrics::ExpositionWriter& w) {
    absl::MutexLock lock(&cache->mu);  // one computation at a time; others wait for it
    if (absl::Now() - cache->at > kFresh) {
      absl::StatusOr<v1::ListJobsResponse> jobs = store->ListJobs();
      if (!jobs.ok()) return;
      const std::map<std::string, std::string> watched = detector->WatchedJobStates();
      cache->figures.clear();
      for (const v1::JobInfo& j : jobs->jobs()) {
        absl::StatusOr<v1::SlaReport> r =
            Build(store, watched, targets, j.job_id(), 0, 0);
        if (r.ok() && r->wall_seconds() > 0) {
          cache->figures.emplace_back(j.job_id(), r->goodput(), r->compliant());
        }
      }
      cache->at = absl::Now();
    }
    const auto& reports = cache->figures;
    const std::vector<std::string> label = {"job_id"};
    w.Begin("snapback_job_goodput_ratio",
            "Productive share of the job's wall time (SLA report, docs/sla.md)",
            metrics::MetricType::kGauge);
    for (const auto& [id, goodput, compliant] : reports) {
      w.Sample("snapback_job_goodput_ratio", label, {id}, goodput);
    }
    w.Begin(
        "snapback_job_sla_compliant",
        "1 when the job meets its SLA targets (goodput, p90 MTTD/MTTR/lost work), else 0",
        metrics::MetricType::kGauge);
    for (const auto& [id, goodput, compliant] : reports) {
      w.Sample("snapback_job_sla_compliant", label, {id}, compliant ? 1 : 0);
    }
  });
}

ReportServiceImpl::ReportServiceImpl(coordinator::CoordinatorStore* store,
                                     detector::Detector* detector, v1::SlaTargets targets,
                                     ThreadPool* pool)
    : store_(store), detector_(detector), targets_(std::move(targets)), pool_(pool) {}

ReportServiceImpl::~ReportServiceImpl() { calls_.WaitIdle(); }

bool ReportServiceImpl::WaitIdle(absl::Time deadline) {
  return calls_.WaitIdle(deadline);
}

grpc::ServerUnaryReactor* ReportServiceImpl::GetReport(grpc::CallbackServerContext* ctx,
                                                       const v1::GetReportRequest* req,
                                                       v1::SlaReport* resp) {
  return rpc::RunOnPool(ctx, pool_, &calls_, "GetReport", [this, req, resp] {
    return rpc::Fill(BuildReport(store_, detector_, targets_, req->job_id(),
                                 req->from_unix_ms(), req->to_unix_ms()),
                     resp);
  });
}

}  // namespace snapback::server
