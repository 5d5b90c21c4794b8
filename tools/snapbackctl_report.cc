#include "tools/snapbackctl_report.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/time/clock.h"
#include "sla/sla_report.h"
#include "snapback/v1/report.grpc.pb.h"

namespace snapback::ctl {

int RunReport(const std::shared_ptr<grpc::Channel>& channel, const ReportCommand& command,
              const std::function<int(const grpc::Status&, const std::string&)>& fail) {
  auto stub = v1::ReportService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + command.timeout));
  v1::GetReportRequest req;
  req.set_job_id(command.job);
  if (command.since > absl::ZeroDuration()) {
    req.set_from_unix_ms(absl::ToUnixMillis(absl::Now() - command.since));
  }
  v1::SlaReport report;
  const grpc::Status s = stub->GetReport(&ctx, req, &report);
  if (!s.ok()) return fail(s, "report of job " + command.job);
  if (!command.html_path.empty()) {
    const std::string html = sla::RenderHtml(report);
    const std::string tmp = command.html_path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    const bool ok =
        f != nullptr && std::fwrite(html.data(), 1, html.size(), f) == html.size();
    if (f == nullptr || std::fclose(f) != 0 || !ok ||
        std::rename(tmp.c_str(), command.html_path.c_str()) != 0) {
      std::fprintf(stderr,
                   "snapbackctl: cannot write %s: %s; pick a writable --html path\n",
                   command.html_path.c_str(), std::strerror(errno));
      std::remove(tmp.c_str());
      return 1;
    }
  }
  const std::string text =
      command.json ? sla::ReportToJson(report) : sla::RenderMarkdown(report);
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (!command.html_path.empty() && !command.json) {
    std::printf("\nHTML report written to %s\n", command.html_path.c_str());
  }
  return 0;
}

}  // namespace snapback::ctl
