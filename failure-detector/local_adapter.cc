#include "failure-detector/local_adapter.h"

namespace snapback::detector {

absl::Status LocalAdapter::Restart(const JobBinding& job, int64_t incarnation,
                                   absl::string_view reason) {
  return link_->SendStart(job.job_id, incarnation, reason);
}

absl::Status LocalAdapter::Cancel(const JobBinding& job, absl::string_view reason) {
  return link_->SendCancel(job.job_id, reason);
}

absl::StatusOr<SchedulerStatus> LocalAdapter::Status(const JobBinding& job) {
  if (link_->IsConnected(job.job_id)) {
    return SchedulerStatus{.state = SchedulerJobState::kRunning,
                           .detail = "snapback-launch connected"};
  }
  return SchedulerStatus{.state = SchedulerJobState::kUnknown,
                         .detail = "no snapback-launch connected"};
}

}  // namespace snapback::detector
