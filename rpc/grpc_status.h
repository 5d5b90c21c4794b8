// The one place that converts between absl::Status and grpc::Status.
#ifndef SNAPBACK_RPC_GRPC_STATUS_H_
#define SNAPBACK_RPC_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace snapback {

// Same code (the enums agree numerically) and message.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace snapback

#endif  // SNAPBACK_RPC_GRPC_STATUS_H_
