// Client (include/snapback/client.h): Connect() builds the coordinator
// channel; NewCheckpointer() resolves the options, registers the job and
// makes a CheckpointerImpl (client/checkpointer_impl.h).
#include "snapback/client.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/checkpointer_impl.h"
#include "client/connection.h"
#include "client/options.h"
#include "common/status_macros.h"
#include "rpc/channel.h"
#include "snapback/v1/coordinator.grpc.pb.h"

namespace snapback {
namespace internal_client {
namespace {

namespace v1 = ::snapback::v1;

class ClientImpl final : public Client {
 public:
  explicit ClientImpl(std::shared_ptr<Connection> connection)
      : connection_(std::move(connection)) {}
  absl::StatusOr<std::unique_ptr<Checkpointer>> NewCheckpointer(
      CheckpointerOptions options) override;

 private:
  std::shared_ptr<Connection> connection_;
};

absl::StatusOr<std::unique_ptr<Checkpointer>> ClientImpl::NewCheckpointer(
    CheckpointerOptions o) {
  SNAPBACK_RETURN_IF_ERROR(ResolveCheckpointerOptions(&o));
  v1::RegisterJobRequest req;
  req.set_job_id(o.job_id);
  req.set_world_size(o.world_size);
  // Under Slurm the detector restarts the job with `scontrol requeue`.
  // Not when snapback-launch runs the ranks (inside a Slurm allocation
  // too): the launcher owns the job's restarts.
  if (const std::string slurm_job = EnvOr("SLURM_JOB_ID", "");
      !slurm_job.empty() && EnvOr("SNAPBACK_INCARNATION", "").empty()) {
    req.set_scheduler("slurm");
    req.set_scheduler_job_id(slurm_job);
  }
  v1::RegisterJobResponse resp;
  auto ctx = connection_->Context();
  SNAPBACK_RETURN_IF_ERROR(Rpc(
      connection_->stub()->RegisterJob(ctx.get(), req, &resp),
      absl::StrCat("register job ", o.job_id, " at ", connection_->options().endpoint)));
  if (o.incarnation < 0) {
    // Not launched by snapback-launch: run as the incarnation the
    // coordinator holds (a Slurm requeue gets the one the detector raised).
    o.incarnation = std::max<int64_t>(1, resp.job().incarnation());
  }
  return std::unique_ptr<Checkpointer>(new CheckpointerImpl(connection_, std::move(o)));
}

}  // namespace
}  // namespace internal_client

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  internal_client::ResolveClientOptions(&options);
  rpc::ChannelOptions channel_options;
  channel_options.tls_root_ca_file = options.tls_root_ca_file;
  // Manifests of large models exceed gRPC's 4 MiB default.
  channel_options.max_receive_bytes = 64 << 20;
  channel_options.max_send_bytes = 64 << 20;
  SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                            rpc::MakeChannel(options.endpoint, channel_options));
  return std::unique_ptr<Client>(
      new internal_client::ClientImpl(std::make_shared<internal_client::Connection>(
          std::move(options), std::move(channel))));
}

}  // namespace snapback
