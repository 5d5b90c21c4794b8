// DetectorServiceImpl: the gRPC face of the failure detector
// (proto/snapback/v1/detector.proto), served by the coordinator.
//
// Heartbeat streams feed the Detector; a stream that ends without a DONE
// beat reports the rank dead. Launch streams connect snapback-launch: the
// service registers the job bound to scheduler "local", answers the hello
// with the incarnation to run, and forwards rank exits to the Detector. It is
// the LauncherLink of the "local" scheduler adapter
// (failure-detector/local_adapter): a restart is a Start order on the job's
// launcher stream.
//
// Streams live as long as the processes behind them, so Server::Shutdown()
// calls BeginShutdown() first: it ends every stream at once (and the
// detector does not read those ends as failures).
//
// Thread-safe. The detector, store and pool must outlive the service, and
// the service the grpc::Server it is registered with.
#ifndef SNAPBACK_SERVER_DETECTOR_SERVICE_H_
#define SNAPBACK_SERVER_DETECTOR_SERVICE_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/thread_pool.h"
#include "coordinator/coordinator_store.h"
#include "failure-detector/detector.h"
#include "failure-detector/local_adapter.h"
#include "failure-detector/scheduler.h"
#include "rpc/unary.h"
#include "snapback/v1/detector.grpc.pb.h"

namespace snapback::server {

// The Detector's view of the coordinator's metadata.
class StoreJobDirectory final : public detector::JobDirectory {
 public:
  explicit StoreJobDirectory(coordinator::CoordinatorStore* store) : store_(store) {}
  absl::StatusOr<v1::JobInfo> DescribeJob(const std::string& job_id) override {
    return store_->DescribeJob(job_id);
  }
  absl::StatusOr<v1::JobInfo> AdvanceIncarnation(const std::string& job_id,
                                                 int64_t at_least) override {
    return store_->AdvanceIncarnation(job_id, at_least);
  }
  absl::Status PutIncident(const v1::Incident& incident) override {
    return store_->PutIncident(incident);
  }
  absl::StatusOr<std::vector<v1::Incident>> ListIncidents(
      const std::string& job_id) override {
    return store_->ListIncidents(job_id);
  }
  absl::Status PutJobRun(const v1::JobRun& run) override {
    return store_->PutJobRun(run);
  }
  absl::StatusOr<std::vector<v1::JobRun>> ListJobRuns(
      const std::string& job_id) override {
    return store_->ListJobRuns(job_id);
  }

 private:
  coordinator::CoordinatorStore* const store_;
};

class DetectorServiceImpl final : public v1::DetectorService::CallbackService,
                                  public detector::LauncherLink {
 public:
  DetectorServiceImpl(detector::Detector* detector, coordinator::CoordinatorStore* store,
                      ThreadPool* pool);
  ~DetectorServiceImpl() override;

  grpc::ServerBidiReactor<v1::HeartbeatRequest, v1::HeartbeatResponse>* Heartbeat(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerBidiReactor<v1::LauncherEvent, v1::LauncherOrder>* Launch(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* GetJobHealth(grpc::CallbackServerContext* ctx,
                                         const v1::GetJobHealthRequest* req,
                                         v1::JobHealth* resp) override;
  grpc::ServerUnaryReactor* ListIncidents(grpc::CallbackServerContext* ctx,
                                          const v1::ListIncidentsRequest* req,
                                          v1::ListIncidentsResponse* resp) override;
  grpc::ServerUnaryReactor* RestartJob(grpc::CallbackServerContext* ctx,
                                       const v1::RestartJobRequest* req,
                                       v1::JobHealth* resp) override;

  // The "local" scheduler adapter (orders to snapback-launch), over this
  // service as its LauncherLink.
  std::shared_ptr<detector::SchedulerAdapter> local_adapter() { return local_; }

  // detector::LauncherLink: orders on the job's launcher stream.
  absl::Status SendStart(const std::string& job_id, int64_t incarnation,
                         absl::string_view reason) override;
  absl::Status SendCancel(const std::string& job_id, absl::string_view reason) override;
  bool IsConnected(const std::string& job_id) override;

  // Ends every open stream now; later stream ends are not failures.
  void BeginShutdown();
  // Blocks until no call or stream is alive or `deadline` passes.
  bool WaitIdle(absl::Time deadline = absl::InfiniteFuture());

  class Stream;  // a live stream (heartbeat or launcher), for BeginShutdown
  class LaunchStream;

 private:
  void Add(Stream* s);
  void Remove(Stream* s);
  bool shutting_down();
  // An order to the launcher of `job_id`.
  absl::Status SendToLauncher(const std::string& job_id, v1::LauncherOrder order);
  void SetLauncher(const std::string& job_id, LaunchStream* s);
  void ClearLauncher(const std::string& job_id, LaunchStream* s);

  detector::Detector* const detector_;
  coordinator::CoordinatorStore* const store_;
  ThreadPool* const pool_;
  rpc::CallTracker calls_;  // unary calls in flight
  std::shared_ptr<detector::SchedulerAdapter> local_;

  absl::Mutex mu_;
  std::set<Stream*> streams_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, LaunchStream*> launchers_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_DETECTOR_SERVICE_H_
