#include "failure-detector/scheduler.h"

namespace snapback::detector {

const char* SchedulerJobStateName(SchedulerJobState s) {
  switch (s) {
    case SchedulerJobState::kUnknown:
      return "unknown";
    case SchedulerJobState::kPending:
      return "pending";
    case SchedulerJobState::kRunning:
      return "running";
    case SchedulerJobState::kFinished:
      return "finished";
    case SchedulerJobState::kFailed:
      return "failed";
    case SchedulerJobState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

}  // namespace snapback::detector
