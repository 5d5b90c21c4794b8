// ReportService (proto/snapback/v1/report.proto): the recovery SLA report of
// a job, computed on demand from the coordinator's durable logs (incidents,
// runs, commits; sla/sla_report.h). The same report is served as HTML,
// Markdown or JSON on the coordinator's HTTP port (/report?job=...), through
// BuildReport().
//
// Thread-safe.
#ifndef SNAPBACK_SERVER_REPORT_SERVICE_H_
#define SNAPBACK_SERVER_REPORT_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/statusor.h"
#include "common/metrics.h"
#include "common/thread_pool.h"
#include "coordinator/coordinator_store.h"
#include "failure-detector/detector.h"
#include "rpc/unary.h"
#include "server/http_server.h"
#include "snapback/v1/report.grpc.pb.h"

namespace snapback::server {

// The SLA report of `job_id` over [from_unix_ms, to_unix_ms] (0 = from the
// first run / until now). NOT_FOUND for an unknown job, INVALID_ARGUMENT for
// a window that ends before it starts.
absl::StatusOr<v1::SlaReport> BuildReport(coordinator::CoordinatorStore* store,
                                          detector::Detector* detector,
                                          const v1::SlaTargets& targets,
                                          const std::string& job_id, int64_t from_unix_ms,
                                          int64_t to_unix_ms);

// GET /report?job=JOB[&format=html|md|json][&from=MS][&to=MS]: the report
// as one HTML page (default), Markdown or JSON. 400 without a job or with a
// bad number, 404 for an unknown job; the body says what to do.
HttpResponse ReportPage(coordinator::CoordinatorStore* store,
                        detector::Detector* detector, const v1::SlaTargets& targets,
                        const HttpRequest& req);

// snapback_job_goodput_ratio{job_id} and snapback_job_sla_compliant{job_id}
// (1/0), from each job's SLA report at scrape time (docs/metrics.md).
void AddReportCollectors(metrics::MetricsRegistry* registry,
                         coordinator::CoordinatorStore* store,
                         detector::Detector* detector, v1::SlaTargets targets);

class ReportServiceImpl final : public v1::ReportService::CallbackService {
 public:
  // Nothing is owned; all must outlive the service. Calls run on `pool`.
  ReportServiceImpl(coordinator::CoordinatorStore* store, detector::Detector* detector,
                    v1::SlaTargets targets, ThreadPool* pool);
  ~ReportServiceImpl() override;  // waits for calls in flight
  // Waits until no call is in flight or `deadline`; true when idle.
  bool WaitIdle(absl::Time deadline = absl::InfiniteFuture());

  grpc::ServerUnaryReactor* GetReport(grpc::CallbackServerContext* ctx,
                                      const v1::GetReportRequest* req,
                                      v1::SlaReport* resp) override;

 private:
  coordinator::CoordinatorStore* const store_;
  detector::Detector* const detector_;
  const v1::SlaTargets targets_;
  ThreadPool* const pool_;
  rpc::CallTracker calls_;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_REPORT_SERVICE_H_
