#include "server/report_service.h"

#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "sla/sla_report.h"

namespace snapback::server {

absl::StatusOr<v1::SlaReport> BuildReport(coordinator::CoordinatorStore* store,
                                          detector::Detector* detector,
                                          const v1::SlaTargets& targets,
                                          const std::string& job_id, int64_t from_unix_ms,
                                          int64_t to_unix_ms) {
  if (from_unix_ms < 0 || to_unix_ms < 0 ||
      (to_unix_ms > 0 && to_unix_ms < from_unix_ms)) {
    return absl::InvalidArgumentError(
        absl::StrCat("report window [", from_unix_ms, ", ", to_unix_ms,
                     "] ends before it starts; give from <= to (Unix ms, 0 = open)"));
  }
  sla::ReportInput in;
  absl::StatusOr<v1::JobInfo> job = store->DescribeJob(job_id);
  if (!job.ok()) return job.status();
  in.job = *std::move(job);
  absl::StatusOr<v1::JobHealth> health = detector->Health(job_id);
  in.state = health.ok() ? health->state() : "UNKNOWN";
  absl::StatusOr<std::vector<v1::Incident>> incidents = detector->Incidents(job_id);
  if (!incidents.ok()) return incidents.status();
  in.incidents = *std::move(incidents);
  absl::StatusOr<std::vector<v1::JobRun>> runs = store->ListJobRuns(job_id);
  if (!runs.ok()) return runs.status();
  in.runs = *std::move(runs);
  absl::StatusOr<v1::ListCheckpointsResponse> ckpts = store->ListCheckpoints(job_id);
  if (!ckpts.ok()) return ckpts.status();
  in.checkpoints.assign(ckpts->checkpoints().begin(), ckpts->checkpoints().end());
  in.now_unix_ms = absl::ToUnixMillis(absl::Now());
  in.from_unix_ms = from_unix_ms;
  in.to_unix_ms = to_unix_ms;
  in.targets = targets;
  return sla::ComputeReport(in);
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
  registry->AddCollector([store, detector, targets](metrics::ExpositionWriter& w) {
    absl::StatusOr<v1::ListJobsResponse> jobs = store->ListJobs();
    if (!jobs.ok()) return;
    // One report per job per scrape: a few RocksDB prefix scans each.
    std::vector<std::pair<std::string, v1::SlaReport>> reports;
    for (const v1::JobInfo& j : jobs->jobs()) {
      absl::StatusOr<v1::SlaReport> r =
          BuildReport(store, detector, targets, j.job_id(), 0, 0);
      if (r.ok() && r->wall_seconds() > 0)
        reports.emplace_back(j.job_id(), *std::move(r));
    }
    const std::vector<std::string> label = {"job_id"};
    w.Begin("snapback_job_goodput_ratio",
            "Productive share of the job's wall time (SLA report, docs/sla.md)",
            metrics::MetricType::kGauge);
    for (const auto& [id, r] : reports)
      w.Sample("snapback_job_goodput_ratio", label, {id}, r.goodput());
    w.Begin(
        "snapback_job_sla_compliant",
        "1 when the job meets its SLA targets (goodput, p90 MTTD/MTTR/lost work), else 0",
        metrics::MetricType::kGauge);
    for (const auto& [id, r] : reports) {
      w.Sample("snapback_job_sla_compliant", label, {id}, r.compliant() ? 1 : 0);
    }
  });
}

ReportServiceImpl::ReportServiceImpl(coordinator::CoordinatorStore* store,
                                     detector::Detector* detector, v1::SlaTargets targets,
                                     ThreadPool* pool)
    : store_(store), detector_(detector), targets_(std::move(targets)), pool_(pool) {}

ReportServiceImpl::~ReportServiceImpl() { calls_.WaitIdle(); }

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
