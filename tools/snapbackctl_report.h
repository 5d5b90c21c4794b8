// snapbackctl report: the recovery SLA report of a job (docs/sla.md), from
// the coordinator's ReportService; rendered here with the same code the
// coordinator's live /report page uses (sla/sla_report.h).
#ifndef SNAPBACK_TOOLS_SNAPBACKCTL_REPORT_H_
#define SNAPBACK_TOOLS_SNAPBACKCTL_REPORT_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"

namespace snapback::ctl {

struct ReportCommand {
  std::string job;
  // Window: the last `since` (zero = from the job's first run).
  absl::Duration since = absl::ZeroDuration();
  // Print JSON instead of Markdown.
  bool json = false;
  // Also write the self-contained HTML page here ("" = no).
  std::string html_path;
  absl::Duration timeout = absl::Seconds(30);
};

// Runs the command; returns the exit code. `fail` turns an RPC error into
// snapbackctl's one line on stderr and its exit code.
int RunReport(const std::shared_ptr<grpc::Channel>& channel, const ReportCommand& command,
              const std::function<int(const grpc::Status&, const std::string&)>& fail);

}  // namespace snapback::ctl

#endif  // SNAPBACK_TOOLS_SNAPBACKCTL_REPORT_H_
