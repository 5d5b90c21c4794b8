// StreamVerify: snapbackctl verify's side of the VerifyCheckpoint stream
// (proto/snapback/v1/coordinator.proto): reads the progress messages into a
// ProgressBar and keeps the final one, cancelling the call when the
// coordinator falls silent for longer than `idle` (the whole call has no
// deadline: a large job takes a while).
#ifndef SNAPBACK_TOOLS_VERIFY_STREAM_H_
#define SNAPBACK_TOOLS_VERIFY_STREAM_H_

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "snapback/v1/coordinator.grpc.pb.h"
#include "tools/progress_bar.h"

namespace snapback::tools {

struct VerifyStreamResult {
  // How the call ended (CANCELLED when `silent`).
  grpc::Status status;
  // The coordinator sent nothing for `idle`; the call was cancelled.
  bool silent = false;
  // The message with `final` set (default when the stream ended without).
  v1::VerifyProgress final;
};

// Runs the call on `stub` (not owned), drawing each progress message on
// `bar` (finished when the first message came).
VerifyStreamResult StreamVerify(v1::CoordinatorService::Stub* stub,
                                const v1::VerifyCheckpointRequest& req,
                                absl::Duration idle, ProgressBar* bar);

}  // namespace snapback::tools

#endif  // SNAPBACK_TOOLS_VERIFY_STREAM_H_
