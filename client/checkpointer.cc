// Client, Checkpointer and SaveHandle: the public client library
// (include/snapback/client.h).
//
// A save moves through three stages that overlap:
//   1. snapshot: copy_threads copy the caller's bytes, chunk by chunk, into
//      staging buffers (bounded pool; Acquire() blocks when it is empty);
//   2. the driver thread takes staged chunks in batches: xxh3-128 against the
//      previous save's chunk at the same place (equal = unchanged, reuse its
//      id), SHA-256 only for changed chunks, ClaimChunks at the coordinator
//      (which also says what the tier already has), encode what must be sent
//      and release the staging buffers;
//   3. upload_streams threads stream encoded batches to storage.
// When every upload is acknowledged (durable), the driver commits the rank's
// manifest. Saves are driven one after another in step order, so the
// "previous save" of the incremental check is well defined.
#include <grpcpp/grpcpp.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/heartbeat.h"
#include "client/staging_pool.h"
#include "rpc/storage_client.h"
#include "common/codec.h"
#include "rpc/grpc_status.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"
#include "snapback/client.h"
#include "snapback/v1/coordinator.grpc.pb.h"

namespace snapback {

// ---------------------------------------------------------------------------
// SaveHandle

struct SaveHandle::State {
  explicit State(int64_t s) { stats.step = s; }
  mutable absl::Mutex mu;
  bool snapshot_done ABSL_GUARDED_BY(mu) = false;
  absl::Status snapshot_status ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  SaveStats stats ABSL_GUARDED_BY(mu);

  void FinishSnapshot(absl::Status s) {
    absl::MutexLock lock(&mu);
    if (!snapshot_done) {
      snapshot_done = true;
      snapshot_status = std::move(s);
    }
  }
  void Finish(absl::Status s) {
    absl::MutexLock lock(&mu);
    if (!snapshot_done) {
      snapshot_done = true;
      snapshot_status = s;
    }
    if (!done) {
      done = true;
      status = std::move(s);
    }
  }
};

SaveHandle::SaveHandle() : state_(std::make_shared<State>(-1)) {
  state_->Finish(absl::OkStatus());
}
SaveHandle::SaveHandle(std::shared_ptr<State> state) : state_(std::move(state)) {}

absl::Status SaveHandle::Wait() const {
  absl::MutexLock lock(&state_->mu);
  state_->mu.Await(absl::Condition(&state_->done));
  return state_->status;
}

absl::Status SaveHandle::WaitFor(absl::Duration timeout) const {
  absl::MutexLock lock(&state_->mu);
  if (!state_->mu.AwaitWithTimeout(absl::Condition(&state_->done), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("save of step ", state_->stats.step,
                                                    " still running after ",
                                                    absl::FormatDuration(timeout)));
  }
  return state_->status;
}

bool SaveHandle::Done() const {
  absl::MutexLock lock(&state_->mu);
  return state_->done;
}

absl::Status SaveHandle::WaitSnapshot() const {
  absl::MutexLock lock(&state_->mu);
  state_->mu.Await(absl::Condition(&state_->snapshot_done));
  return state_->snapshot_status;
}

SaveStats SaveHandle::stats() const {
  absl::MutexLock lock(&state_->mu);
  return state_->stats;
}

int64_t SaveHandle::step() const { return stats().step; }

namespace internal_client {
namespace {

namespace v1 = ::snapback::v1;

// Chunks per batch between the driver stages (claim, encode, upload).
constexpr int kBatchChunks = 16;

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::string(v) : fallback;
}

absl::Status EnvInt(const char* name, int64_t* out) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return absl::OkStatus();
  if (!absl::SimpleAtoi(v, out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name, "='", v, "' is not an integer"));
  }
  return absl::OkStatus();
}

absl::Status Rpc(const grpc::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  absl::Status st = FromGrpcStatus(s);
  return absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
}

// Where the previous save had a chunk: item name + chunk index.
std::string ChunkKey(bool is_blob, absl::string_view item, size_t index) {
  return absl::StrCat(is_blob ? "b:" : "t:", item, "#", index);
}

struct PrevChunk {
  XXH128_hash_t fast;
  ChunkId id;
};

// One tensor or blob of a save.
struct Item {
  bool is_blob = false;
  std::string name;
  DType dtype = DType::kUInt8;
  std::vector<int64_t> shape, global_shape, global_offset;
  const char* src = nullptr;
  uint64_t bytes = 0;
  size_t first_task = 0;
  size_t num_tasks = 0;
};

struct Task {
  size_t item;
  size_t index;  // chunk index within the item
  uint64_t offset;
  uint32_t length;
};

struct SaveJob {
  std::shared_ptr<SaveHandle::State> state;
  int64_t step = 0;
  absl::Time start;
  std::vector<Item> items;
  std::vector<Task> tasks;

  absl::Mutex mu;
  // Staged chunks, in the order the copy finished them.
  std::deque<std::pair<size_t, StagingPool::Buffer>> staged ABSL_GUARDED_BY(mu);
  bool copy_finished ABSL_GUARDED_BY(mu) = false;
  absl::Status copy_status ABSL_GUARDED_BY(mu);

  // Per-task results (written by the driver's hashing tasks).
  std::vector<ChunkId> ids;
  std::vector<XXH128_hash_t> fast;
  // CommitRank ended without an answer after retries: the checkpoint may be
  // committed, so it must not be aborted.
  bool commit_outcome_unknown = false;
  // Per item: kUndecided, kCompress or kRaw (see min_compress_saving).
  std::unique_ptr<std::atomic<int>[]> codec_choice;
};

enum CodecChoice { kUndecided = 0, kCompress = 1, kRaw = 2 };

class CheckpointerImpl;

// Chunks per driver batch: at most kBatchChunks, and at most a quarter of
// the staging pool so the copy can keep going while a batch is processed.
int BatchChunks(const CheckpointerOptions& o) {
  const uint64_t pool_chunks = std::max<uint64_t>(1, o.staging_bytes / 2 / o.chunk_bytes);
  return static_cast<int>(
      std::max<uint64_t>(1, std::min<uint64_t>(kBatchChunks, pool_chunks / 2)));
}

// Encoded bytes allowed in flight: the other half of staging_bytes, less
// what gRPC holds per stream and less the batch being encoded (counted
// only once it is queued).
uint64_t EncodedBudget(const CheckpointerOptions& o) {
  const uint64_t transport =
      static_cast<uint64_t>(BatchChunks(o)) * o.chunk_bytes +
      uint64_t{3} * o.upload_streams * std::min<uint64_t>(o.chunk_bytes, 4 << 20);
  const uint64_t half = o.staging_bytes / 2;
  return std::max<uint64_t>(o.chunk_bytes, half > transport ? half - transport : 0);
}

// The channel, stubs and storage clients of one Client. Shared by the
// Client and every Checkpointer it made, so either may be destroyed first.
class Connection {
 public:
  Connection(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
      : options_(std::move(options)),
        channel_(std::move(channel)),
        stub_(v1::CoordinatorService::NewStub(channel_)) {}

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  v1::CoordinatorService::Stub* stub() { return stub_.get(); }

  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_deadline));
    return ctx;
  }

  // A client of storage node `endpoint` ("" = the coordinator's address,
  // the embedded single-process default). Cached.
  absl::StatusOr<StorageClient*> Storage(const std::string& endpoint) {
    const std::string& ep = endpoint.empty() ? options_.endpoint : endpoint;
    absl::MutexLock lock(&mu_);
    auto it = storage_.find(ep);
    if (it != storage_.end()) return it->second.get();
    StorageClientOptions so;
    so.tls_root_ca_file = options_.tls_root_ca_file;
    so.deadline = options_.bulk_deadline;
    so.verify_reads = false;  // Restore verifies the decoded bytes itself
    SNAPBACK_ASSIGN_OR_RETURN(auto client, StorageClient::Connect(ep, so));
    StorageClient* raw = client.get();
    storage_[ep] = std::move(client);
    return raw;
  }

 private:
  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CoordinatorService::Stub> stub_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<StorageClient>> storage_ ABSL_GUARDED_BY(mu_);
};

class ClientImpl final : public Client {
 public:
  explicit ClientImpl(std::shared_ptr<Connection> connection)
      : connection_(std::move(connection)) {}
  absl::StatusOr<std::unique_ptr<Checkpointer>> NewCheckpointer(
      CheckpointerOptions options) override;

 private:
  std::shared_ptr<Connection> connection_;
};

class CheckpointerImpl final : public Checkpointer {
 public:
  CheckpointerImpl(std::shared_ptr<Connection> client, CheckpointerOptions options)
      : client_(std::move(client)),
        options_(std::move(options)),
        // Half the cap stages snapshot copies; the other half bounds the
        // encoded chunks waiting for (or in) upload, less what gRPC holds
        // per stream (the request's copy of a frame and its serialised
        // form, about 3 frames), so all of it stays within staging_bytes.
        staging_(options_.staging_bytes / 2, options_.chunk_bytes),
        encoded_budget_(EncodedBudget(options_)),
        batch_chunks_(BatchChunks(options_)),
        copy_pool_(options_.copy_threads),
        hash_pool_(options_.pipeline_threads),
        upload_pool_(options_.upload_streams) {
    driver_ = std::thread([this] { DriverLoop(); });
    if (options_.heartbeat_interval > absl::ZeroDuration()) {
      heartbeat_ = std::make_unique<Heartbeater>(
          client_->channel(), HeartbeatOptions{.job_id = options_.job_id,
                                               .rank = options_.rank,
                                               .incarnation = options_.incarnation,
                                               .interval = options_.heartbeat_interval});
    }
  }

  ~CheckpointerImpl() override { (void)Close(); }

  absl::StatusOr<SaveHandle> Save(int64_t step, absl::Span<const TensorView> tensors,
                                  absl::Span<const BlobView> blobs) override;
  absl::Status WaitSnapshot() override;
  absl::Status Flush() override;
  absl::StatusOr<std::optional<int64_t>> LatestStep() override;
  absl::StatusOr<RestoreResult> Restore(std::optional<int64_t> step) override;
  absl::StatusOr<RestoreResult> RestoreInto(absl::Span<const MutableTensorView> targets,
                                            std::optional<int64_t> step) override;
  absl::StatusOr<RestoreResult> RestoreImpl(absl::Span<const MutableTensorView> targets,
                                            std::optional<int64_t> step);
  int64_t incarnation() const override { return options_.incarnation; }
  void ReportStep(int64_t step) override {
    if (heartbeat_ != nullptr) heartbeat_->SetStep(step);
  }
  absl::Status Close() override;

 private:
  v1::RankRef RankRef() const {
    v1::RankRef r;
    r.set_job_id(options_.job_id);
    r.set_rank(options_.rank);
    r.set_incarnation(options_.incarnation);
    return r;
  }

  // The failure of an earlier save not yet reported, cleared; OK if none.
  absl::Status TakePendingError() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a Save(step) may go ahead now: open, no unreported failure,
  // step after the last one.
  absl::Status SaveAllowed(int64_t step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::shared_ptr<SaveJob>> Plan(int64_t step,
                                                absl::Span<const TensorView> tensors,
                                                absl::Span<const BlobView> blobs);
  // Copies every task of `job` into staging on copy_threads; returns when
  // all are staged or the first failure.
  // Copies every task of `job` into staging on copy_threads. Holds the job
  // (shared with the driver) until its last touch.
  void Snapshot(std::shared_ptr<SaveJob> job);
  void DriverLoop();
  absl::Status Drive(SaveJob* job);
  absl::Status Commit(SaveJob* job, bool* committed);

  const std::shared_ptr<Connection> client_;
  const CheckpointerOptions options_;
  StagingPool staging_;
  const uint64_t encoded_budget_;
  const int batch_chunks_;
  ThreadPool copy_pool_;
  ThreadPool hash_pool_;
  ThreadPool upload_pool_;
  // Runs overlap-mode snapshots (which themselves wait on copy_pool_).
  ThreadPool snapshot_runner_{1};

  absl::Mutex save_mu_;   // one Save() at a time
  absl::Mutex close_mu_;  // one Close() at a time
  absl::Mutex mu_;
  std::deque<std::shared_ptr<SaveJob>> queue_ ABSL_GUARDED_BY(mu_);
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status pending_error_ ABSL_GUARDED_BY(mu_);
  int64_t last_step_ ABSL_GUARDED_BY(mu_) = -1;
  std::shared_ptr<SaveHandle::State> last_state_ ABSL_GUARDED_BY(mu_);
  // The last committed save's chunks, for the incremental check. Only the
  // driver thread reads or writes it after construction (and Restore(),
  // which runs when no save is in flight).
  absl::flat_hash_map<std::string, PrevChunk> prev_;
  // Whether each tensor's chunks are worth compressing, decided on its first
  // chunk and kept for later saves.
  absl::flat_hash_map<std::string, int> codec_choice_;
  absl::Mutex prev_mu_;
  // The heartbeat to the failure detector (null when turned off).
  std::unique_ptr<Heartbeater> heartbeat_;
  std::thread driver_;
};

absl::StatusOr<std::unique_ptr<Checkpointer>> ClientImpl::NewCheckpointer(
    CheckpointerOptions o) {
  if (o.job_id.empty()) o.job_id = EnvOr("SNAPBACK_JOB", "");
  if (o.job_id.empty()) {
    return absl::InvalidArgumentError(
        "no job id: set CheckpointerOptions::job_id or SNAPBACK_JOB (snapback-launch "
        "sets it)");
  }
  int64_t v;
  if (o.rank < 0) {
    v = 0;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_RANK", &v));
    o.rank = static_cast<int>(v);
  }
  if (o.world_size <= 0) {
    v = 1;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_WORLD_SIZE", &v));
    o.world_size = static_cast<int>(v);
  }
  if (o.incarnation < 0) {
    v = -1;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_INCARNATION", &v));
    o.incarnation = v;  // -1: the coordinator's, after registering below
  }
  if (o.heartbeat_interval < absl::ZeroDuration()) {
    v = 1000;
    SNAPBACK_RETURN_IF_ERROR(EnvInt("SNAPBACK_HEARTBEAT_MS", &v));
    o.heartbeat_interval = absl::Milliseconds(std::max<int64_t>(0, v));
  }
  if (o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", o.rank, " is outside [0, ", o.world_size, "); check SNAPBACK_RANK"));
  }
  if (o.chunk_bytes < 4096 || o.chunk_bytes > (16u << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_bytes ", o.chunk_bytes, " must be in [4 KiB, 16 MiB]"));
  }
  if (o.copy_threads < 1 || o.pipeline_threads < 1 || o.upload_streams < 1 ||
      o.max_inflight < 1 || o.restore_threads < 1) {
    return absl::InvalidArgumentError(
        "copy_threads, pipeline_threads, upload_streams, max_inflight and "
        "restore_threads "
        "must be at least 1");
  }
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

absl::StatusOr<std::shared_ptr<SaveJob>> CheckpointerImpl::Plan(
    int64_t step, absl::Span<const TensorView> tensors,
    absl::Span<const BlobView> blobs) {
  auto job = std::make_shared<SaveJob>();
  job->step = step;
  absl::flat_hash_set<std::string> names;
  auto add = [&](Item item) -> absl::Status {
    if (item.name.empty())
      return absl::InvalidArgumentError("a tensor or blob has no name");
    if (!names.insert(absl::StrCat(item.is_blob ? "b:" : "t:", item.name)).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate name '", item.name, "'"));
    }
    if (item.bytes > 0 && item.src == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("'", item.name, "' has no data"));
    }
    item.first_task = job->tasks.size();
    for (uint64_t off = 0, i = 0; off < item.bytes; off += options_.chunk_bytes, ++i) {
      job->tasks.push_back({job->items.size(), i, off,
                            static_cast<uint32_t>(std::min<uint64_t>(options_.chunk_bytes,
                                                                     item.bytes - off))});
    }
    item.num_tasks = job->tasks.size() - item.first_task;
    job->items.push_back(std::move(item));
    return absl::OkStatus();
  };
  for (const TensorView& t : tensors) {
    Item item;
    item.name = t.name;
    item.dtype = t.dtype;
    item.shape = t.shape;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.name, "' has a negative dimension"));
      }
    }
    item.global_shape = t.global_shape.empty() ? t.shape : t.global_shape;
    item.global_offset = t.global_offset.empty() ? std::vector<int64_t>(t.shape.size(), 0)
                                                 : t.global_offset;
    if (item.global_shape.size() != t.shape.size() ||
        item.global_offset.size() != t.shape.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': global_shape and global_offset need ",
                       t.shape.size(), " dimensions like shape"));
    }
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (item.global_offset[d] < 0 ||
          item.global_offset[d] + t.shape[d] > item.global_shape[d]) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.name,
                         "': shard does not fit its global shape in dimension ", d));
      }
    }
    item.src = static_cast<const char*>(t.data);
    item.bytes = t.byte_length();
    SNAPBACK_RETURN_IF_ERROR(add(std::move(item)));
  }
  for (const BlobView& b : blobs) {
    Item item;
    item.is_blob = true;
    item.name = b.name;
    item.src = static_cast<const char*>(b.data);
    item.bytes = b.size;
    SNAPBACK_RETURN_IF_ERROR(add(std::move(item)));
  }
  job->ids.resize(job->tasks.size());
  job->fast.resize(job->tasks.size());
  job->codec_choice.reset(new std::atomic<int>[job->items.size()]);
  {
    absl::MutexLock lock(&prev_mu_);
    for (size_t i = 0; i < job->items.size(); ++i) {
      auto it = codec_choice_.find(job->items[i].name);
      job->codec_choice[i] = it == codec_choice_.end() ? kUndecided : it->second;
    }
  }
  return job;
}

void CheckpointerImpl::Snapshot(std::shared_ptr<SaveJob> job) {
  const absl::Time start = absl::Now();
  const size_t n = job->tasks.size();
  std::atomic<size_t> next{0};
  const int workers = std::max(1, std::min<int>(options_.copy_threads, n));
  absl::BlockingCounter done(workers);
  for (int w = 0; w < workers; ++w) {
    copy_pool_.Schedule([&] {
      for (size_t i; (i = next.fetch_add(1)) < n;) {
        const Task& t = job->tasks[i];
        StagingPool::Buffer buf = staging_.Acquire();
        std::memcpy(buf.data(), job->items[t.item].src + t.offset, t.length);
        absl::MutexLock lock(&job->mu);
        job->staged.emplace_back(i, std::move(buf));
      }
      done.DecrementCount();
    });
  }
  done.Wait();
  // The caller may mutate its tensors from here on.
  {
    absl::MutexLock lock(&job->state->mu);
    job->state->stats.snapshot = absl::Now() - start;
  }
  job->state->FinishSnapshot(absl::OkStatus());
  absl::MutexLock lock(&job->mu);
  job->copy_finished = true;
}

absl::Status CheckpointerImpl::TakePendingError() {
  absl::Status s = std::move(pending_error_);
  pending_error_ = absl::OkStatus();
  return s;
}

absl::Status CheckpointerImpl::SaveAllowed(int64_t step) {
  if (closed_) return absl::FailedPreconditionError("checkpointer is closed");
  if (absl::Status s = TakePendingError(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("an earlier save failed: ", s.message()));
  }
  if (step <= last_step_) {
    return absl::InvalidArgumentError(absl::StrCat("step ", step, " is not after step ",
                                                   last_step_, "; steps must grow"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SaveHandle> CheckpointerImpl::Save(int64_t step,
                                                  absl::Span<const TensorView> tensors,
                                                  absl::Span<const BlobView> blobs) {
  // Saves come from one training loop; concurrent callers take turns, so two
  // snapshots never share the staging pool.
  absl::MutexLock save_lock(&save_mu_);
  const absl::Time start = absl::Now();
  // The training loop is inside Save(): a saving phase, not a hang.
  if (heartbeat_ != nullptr) heartbeat_->SetPhase(v1::SAVING, step);
  absl::Cleanup back_to_training = [this] {
    if (heartbeat_ != nullptr) heartbeat_->SetPhase(v1::TRAINING);
  };
  std::shared_ptr<SaveHandle::State> previous;
  {
    absl::MutexLock lock(&mu_);
    SNAPBACK_RETURN_IF_ERROR(SaveAllowed(step));
    previous = last_state_;
  }
  // Never mix two steps: the previous snapshot must be complete before this
  // one reuses the staging pool.
  if (previous) (void)SaveHandle(previous).WaitSnapshot();

  SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<SaveJob> job, Plan(step, tensors, blobs));
  auto state = std::make_shared<SaveHandle::State>(step);
  job->state = state;
  job->start = start;
  {
    absl::MutexLock lock(&mu_);
    if (inflight_ >= options_.max_inflight) {
      if (options_.busy_policy == BusyPolicy::kSkip) {
        {
          absl::MutexLock slock(&state->mu);
          state->stats.skipped = true;
        }
        state->Finish(absl::OkStatus());
        return SaveHandle(state);
      }
      auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return inflight_ < options_.max_inflight || closed_;
      };
      mu_.Await(absl::Condition(&room));
    }
    // Re-check what may have changed while this call waited or planned.
    SNAPBACK_RETURN_IF_ERROR(SaveAllowed(step));
    ++inflight_;
    last_step_ = step;
    last_state_ = state;
    {
      absl::MutexLock slock(&state->mu);
      for (const Item& item : job->items) state->stats.logical_bytes += item.bytes;
      state->stats.chunks = job->tasks.size();
    }
  }
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(job);
  }
  if (options_.overlap) {
    snapshot_runner_.Schedule([this, job] { Snapshot(job); });
  } else {
    Snapshot(std::move(job));
  }
  {
    absl::MutexLock lock(&state->mu);
    state->stats.blocked = absl::Now() - start;
  }
  return SaveHandle(state);
}

absl::Status CheckpointerImpl::WaitSnapshot() {
  std::shared_ptr<SaveHandle::State> last;
  {
    absl::MutexLock lock(&mu_);
    last = last_state_;
  }
  if (last == nullptr) return absl::OkStatus();
  return SaveHandle(last).WaitSnapshot();
}

absl::Status CheckpointerImpl::Flush() {
  std::shared_ptr<SaveHandle::State> last;
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return inflight_ == 0; };
    mu_.Await(absl::Condition(&idle));
    // The first failure not yet reported by a Save(), else the last save's.
    if (absl::Status s = TakePendingError(); !s.ok()) return s;
    last = last_state_;
  }
  return last ? SaveHandle(last).Wait() : absl::OkStatus();
}

void CheckpointerImpl::DriverLoop() {
  while (true) {
    std::shared_ptr<SaveJob> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || closed_;
      };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    absl::Status s = Drive(job.get());
    if (!s.ok() && !job->commit_outcome_unknown) {
      // Best effort: release this checkpoint's claims at the coordinator.
      v1::AbortCheckpointRequest req;
      *req.mutable_rank() = RankRef();
      req.set_step(job->step);
      req.set_reason(std::string(s.message()));
      v1::AbortCheckpointResponse resp;
      auto ctx = client_->Context();
      (void)client_->stub()->AbortCheckpoint(ctx.get(), req, &resp);
    }
    if (!s.ok()) {
      // Drain what the copy still stages, so its buffers return to the pool
      // and a copy blocked on a full pool can finish.
      while (true) {
        absl::MutexLock lock(&job->mu);
        SaveJob* j = job.get();
        auto more = [j]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(j->mu) {
          return !j->staged.empty() || j->copy_finished;
        };
        job->mu.Await(absl::Condition(&more));
        job->staged.clear();
        if (job->copy_finished) break;
      }
    }
    // The error must be pending before anyone can see the handle finish, so
    // a Save() right after Wait() returns it.
    {
      absl::MutexLock lock(&mu_);
      if (!s.ok()) pending_error_ = s;
      --inflight_;
    }
    job->state->Finish(s);
  }
}

absl::Status CheckpointerImpl::Drive(SaveJob* job) {
  SaveHandle::State* state = job->state.get();
  // 1. Begin: where do chunks go?
  v1::BeginCheckpointRequest begin;
  *begin.mutable_rank() = RankRef();
  begin.set_step(job->step);
  v1::BeginCheckpointResponse where;
  {
    auto ctx = client_->Context();
    SNAPBACK_RETURN_IF_ERROR(
        Rpc(client_->stub()->BeginCheckpoint(ctx.get(), begin, &where),
            absl::StrCat("begin checkpoint of step ", job->step)));
  }
  const std::string endpoint =
      where.storage_endpoints().empty() ? "" : where.storage_endpoints(0);
  SNAPBACK_ASSIGN_OR_RETURN(StorageClient * storage, client_->Storage(endpoint));

  EncodeOptions enc;
  enc.codec = options_.compress ? Codec::kShuffleZstd : Codec::kNone;
  enc.zstd_level = options_.zstd_level;

  absl::Mutex upload_mu;
  int uploads_outstanding = 0;
  uint64_t encoded_in_flight = 0;
  absl::Status upload_status;
  // Upload tasks reference this frame: wait for them on every way out.
  auto wait_uploads = absl::MakeCleanup([&] {
    absl::MutexLock lock(&upload_mu);
    auto idle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(upload_mu) {
      return uploads_outstanding == 0;
    };
    upload_mu.Await(absl::Condition(&idle));
  });
  absl::flat_hash_set<ChunkId> sent;  // already queued for upload in this save
  size_t processed = 0;
  uint64_t unchanged = 0, present = 0, new_bytes = 0, sent_bytes = 0;

  while (processed < job->tasks.size()) {
    // 2a. Take a batch of staged chunks.
    std::vector<std::pair<size_t, StagingPool::Buffer>> batch;
    {
      absl::MutexLock lock(&job->mu);
      const size_t want = std::min<size_t>(batch_chunks_, job->tasks.size() - processed);
      // The caller waits for the copy, not for the pipeline: leave the CPU
      // to the copy until it is done, unless it has filled the pool and
      // waits for us (re-checked on every chunk it stages).
      StagingPool* pool = &staging_;
      auto enough = [job, want, pool]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(job->mu) {
        return job->copy_finished ||
               (job->staged.size() >= want && pool->available() == 0);
      };
      job->mu.Await(absl::Condition(&enough));
      if (job->staged.empty()) {
        return absl::InternalError("snapshot finished without staging every chunk");
      }
      while (!job->staged.empty() && batch.size() < want) {
        batch.push_back(std::move(job->staged.front()));
        job->staged.pop_front();
      }
    }
    processed += batch.size();

    // 2b. Hash: xxh3-128 against the previous save; SHA-256 when changed.
    std::vector<char> changed(batch.size(), 1);
    {
      absl::BlockingCounter hashed(static_cast<int>(batch.size()));
      for (size_t b = 0; b < batch.size(); ++b) {
        hash_pool_.Schedule([&, b] {
          const size_t i = batch[b].first;
          const Task& t = job->tasks[i];
          const char* data = batch[b].second.data();
          job->fast[i] = XXH3_128bits(data, t.length);
          const PrevChunk* prev = nullptr;
          {
            absl::MutexLock lock(&prev_mu_);
            auto it = prev_.find(
                ChunkKey(job->items[t.item].is_blob, job->items[t.item].name, t.index));
            if (it != prev_.end()) prev = &it->second;
            if (prev != nullptr && XXH128_isEqual(prev->fast, job->fast[i])) {
              job->ids[i] = prev->id;
              changed[b] = 0;
            }
          }
          if (changed[b]) job->ids[i] = Sha256({data, t.length});
          hashed.DecrementCount();
        });
      }
      hashed.Wait();
    }
    for (char c : changed) unchanged += c ? 0 : 1;

    // 2c. Claim every id (so GC keeps them) and learn what the tier has.
    v1::ClaimChunksRequest claim;
    *claim.mutable_rank() = RankRef();
    claim.set_step(job->step);
    for (const auto& [i, buf] : batch) claim.add_ids(std::string(job->ids[i].AsBytes()));
    v1::ClaimChunksResponse claimed;
    {
      auto ctx = client_->Context();
      SNAPBACK_RETURN_IF_ERROR(
          Rpc(client_->stub()->ClaimChunks(ctx.get(), claim, &claimed),
              absl::StrCat("claim chunks of step ", job->step)));
    }
    if (claimed.present_size() != static_cast<int>(batch.size())) {
      return absl::InternalError("coordinator answered ClaimChunks with the wrong count");
    }

    // 2d. Encode what must be sent; release every staging buffer.
    std::vector<size_t> to_send;
    for (size_t b = 0; b < batch.size(); ++b) {
      const ChunkId& id = job->ids[batch[b].first];
      if (claimed.present(static_cast<int>(b))) {
        ++present;
      } else if (sent.insert(id).second) {
        to_send.push_back(b);
      }
    }
    auto encoded = std::make_shared<std::vector<EncodedChunk>>(to_send.size());
    std::vector<absl::Status> encode_status(to_send.size());
    if (!to_send.empty()) {
      absl::BlockingCounter done(static_cast<int>(to_send.size()));
      for (size_t k = 0; k < to_send.size(); ++k) {
        hash_pool_.Schedule([&, k] {
          const auto& [i, buf] = batch[to_send[k]];
          const Task& t = job->tasks[i];
          const Item& item = job->items[t.item];
          EncodeOptions o = enc;
          o.element_size = item.is_blob ? 1 : static_cast<int>(DTypeSize(item.dtype));
          std::atomic<int>& choice = job->codec_choice[t.item];
          if (choice.load() == kRaw) o.codec = Codec::kNone;
          // The id was computed above (or reused for an unchanged chunk):
          // do not hash the bytes a second time.
          auto c = EncodeChunkWithId({buf.data(), t.length}, job->ids[i], o);
          if (c.ok()) {
            if (o.codec != Codec::kNone && choice.load() == kUndecided && t.length > 0) {
              const double saving = 1.0 - static_cast<double>(c->data.size()) / t.length;
              int undecided = kUndecided;
              choice.compare_exchange_strong(
                  undecided, saving >= options_.min_compress_saving ? kCompress : kRaw);
            }
            (*encoded)[k] = *std::move(c);
          } else {
            encode_status[k] = c.status();
          }
          done.DecrementCount();
        });
      }
      done.Wait();
    }
    for (const absl::Status& s : encode_status) SNAPBACK_RETURN_IF_ERROR(s);
    for (size_t k = 0; k < to_send.size(); ++k) {
      new_bytes += (*encoded)[k].raw_length;
      sent_bytes += (*encoded)[k].data.size();
    }
    batch.clear();  // staging buffers back to the pool

    // 3. Upload on one of upload_streams streams. At most that many batches
    //    and encoded_budget_ bytes are in flight (backpressure: with the
    //    staging pool this bounds the client's memory by staging_bytes).
    if (!encoded->empty()) {
      uint64_t bytes = 0;
      for (const EncodedChunk& c : *encoded) bytes += c.data.size();
      absl::MutexLock lock(&upload_mu);
      auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(upload_mu) {
        return !upload_status.ok() || (uploads_outstanding < options_.upload_streams &&
                                       (uploads_outstanding == 0 ||
                                        encoded_in_flight + bytes <= encoded_budget_));
      };
      upload_mu.Await(absl::Condition(&room));
      if (!upload_status.ok()) break;
      ++uploads_outstanding;
      encoded_in_flight += bytes;
      upload_pool_.Schedule([&, encoded, bytes] {
        auto put = storage->Put(*encoded);
        encoded->clear();
        absl::MutexLock l(&upload_mu);
        if (!put.ok() && upload_status.ok()) upload_status = put.status();
        --uploads_outstanding;
        encoded_in_flight -= bytes;
      });
    }
  }
  std::move(wait_uploads).Invoke();
  {
    absl::MutexLock lock(&upload_mu);
    SNAPBACK_RETURN_IF_ERROR(upload_status);
  }
  {
    absl::MutexLock lock(&state->mu);
    state->stats.chunks_unchanged = unchanged;
    state->stats.chunks_present = present;
    state->stats.new_bytes = new_bytes;
    state->stats.sent_bytes = sent_bytes;
    state->stats.to_durable = absl::Now() - job->start;
  }
  bool committed = false;
  SNAPBACK_RETURN_IF_ERROR(Commit(job, &committed));
  {
    absl::MutexLock lock(&state->mu);
    state->stats.to_commit = absl::Now() - job->start;
    state->stats.checkpoint_committed = committed;
  }
  // This save is now the base of the next incremental check.
  absl::MutexLock lock(&prev_mu_);
  for (size_t i = 0; i < job->items.size(); ++i) {
    if (job->codec_choice[i] != kUndecided) {
      codec_choice_[job->items[i].name] = job->codec_choice[i];
    }
  }
  prev_.clear();
  for (size_t i = 0; i < job->tasks.size(); ++i) {
    const Task& t = job->tasks[i];
    prev_[ChunkKey(job->items[t.item].is_blob, job->items[t.item].name, t.index)] = {
        job->fast[i], job->ids[i]};
  }
  return absl::OkStatus();
}

absl::Status CheckpointerImpl::Commit(SaveJob* job, bool* committed) {
  v1::CommitRankRequest req;
  *req.mutable_rank() = RankRef();
  req.set_step(job->step);
  v1::RankManifest* m = req.mutable_manifest();
  for (const Item& item : job->items) {
    google::protobuf::RepeatedPtrField<v1::ChunkRef>* chunks;
    if (item.is_blob) {
      v1::BlobEntry* b = m->add_blobs();
      b->set_name(item.name);
      b->set_byte_length(item.bytes);
      chunks = b->mutable_chunks();
    } else {
      v1::TensorEntry* t = m->add_tensors();
      t->set_name(item.name);
      t->set_dtype(DTypeName(item.dtype));
      for (int64_t d : item.shape) t->add_shape(d);
      for (int64_t d : item.global_shape) t->add_global_shape(d);
      for (int64_t d : item.global_offset) t->add_global_offset(d);
      t->set_byte_length(item.bytes);
      chunks = t->mutable_chunks();
    }
    for (size_t k = 0; k < item.num_tasks; ++k) {
      const size_t i = item.first_task + k;
      v1::ChunkRef* c = chunks->Add();
      c->set_id(std::string(job->ids[i].AsBytes()));
      c->set_length(job->tasks[i].length);
    }
  }
  // A commit whose answer was lost may have happened: resending the same
  // manifest is an idempotent replay at the coordinator, so retry the calls
  // that end without an answer, and never abort a checkpoint this rank may
  // already have completed.
  absl::Status status;
  for (int attempt = 0; attempt < 4; ++attempt) {
    if (attempt > 0) absl::SleepFor(absl::Milliseconds(200) * (1 << attempt));  // backoff
    v1::CommitRankResponse resp;
    auto ctx = client_->Context();
    status = Rpc(client_->stub()->CommitRank(ctx.get(), req, &resp),
                 absl::StrCat("commit step ", job->step, " of rank ", options_.rank));
    if (status.ok()) {
      *committed = resp.checkpoint_committed();
      return absl::OkStatus();
    }
    if (!absl::IsUnavailable(status) && !absl::IsDeadlineExceeded(status)) return status;
  }
  job->commit_outcome_unknown = true;
  return status;
}

absl::StatusOr<std::optional<int64_t>> CheckpointerImpl::LatestStep() {
  v1::GetLatestRequest req;
  req.set_job_id(options_.job_id);
  v1::GetLatestResponse resp;
  auto ctx = client_->Context();
  grpc::Status s = client_->stub()->GetLatest(ctx.get(), req, &resp);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) return std::nullopt;
  SNAPBACK_RETURN_IF_ERROR(Rpc(s, absl::StrCat("latest step of job ", options_.job_id)));
  return resp.step();
}

absl::StatusOr<RestoreResult> CheckpointerImpl::Restore(std::optional<int64_t> step) {
  return RestoreInto({}, step);
}

absl::StatusOr<RestoreResult> CheckpointerImpl::RestoreInto(
    absl::Span<const MutableTensorView> targets, std::optional<int64_t> step) {
  if (heartbeat_ == nullptr) return RestoreImpl(targets, step);
  heartbeat_->SetPhase(v1::RESTORING);
  absl::StatusOr<RestoreResult> result = RestoreImpl(targets, step);
  // The detector records the restored step as where the job resumed.
  heartbeat_->SetPhase(v1::TRAINING, result.ok() ? result->step : -1);
  return result;
}

absl::StatusOr<RestoreResult> CheckpointerImpl::RestoreImpl(
    absl::Span<const MutableTensorView> targets, std::optional<int64_t> step) {
  const absl::Time start = absl::Now();
  if (!step.has_value()) {
    SNAPBACK_ASSIGN_OR_RETURN(step, LatestStep());
    if (!step.has_value()) {
      return absl::NotFoundError(absl::StrCat("job ", options_.job_id,
                                              " has no committed checkpoint to restore"));
    }
  }
  v1::GetManifestRequest req;
  req.set_job_id(options_.job_id);
  req.set_step(*step);
  req.set_rank(options_.rank);
  v1::GetManifestResponse resp;
  {
    auto ctx = client_->Context();
    SNAPBACK_RETURN_IF_ERROR(
        Rpc(client_->stub()->GetManifest(ctx.get(), req, &resp),
            absl::StrCat("manifest of step ", *step, " rank ", options_.rank)));
  }
  std::vector<std::string> endpoints(resp.storage_endpoints().begin(),
                                     resp.storage_endpoints().end());
  if (endpoints.empty()) endpoints.push_back("");

  RestoreResult result;
  result.step = *step;
  // Lay out destinations, then fetch every chunk straight into place.
  struct Fetch {
    ChunkId id;
    char* dst;
    uint32_t length;
    std::string key;  // for the incremental map
  };
  std::vector<Fetch> fetches;
  auto plan = [&](bool is_blob, const std::string& name, uint64_t byte_length,
                  const google::protobuf::RepeatedPtrField<v1::ChunkRef>& chunks,
                  char* dst) -> absl::Status {
    uint64_t off = 0;
    for (int k = 0; k < chunks.size(); ++k) {
      SNAPBACK_ASSIGN_OR_RETURN(ChunkId id, ChunkId::FromBytes(chunks[k].id()));
      if (off + chunks[k].length() > byte_length) {
        return absl::DataLossError(
            absl::StrCat("manifest of '", name, "' names more bytes than it has"));
      }
      fetches.push_back({id, dst + off, chunks[k].length(), ChunkKey(is_blob, name, k)});
      off += chunks[k].length();
    }
    if (off != byte_length) {
      return absl::DataLossError(absl::StrCat("manifest of '", name, "' covers ", off,
                                              " of ", byte_length, " bytes"));
    }
    result.bytes += byte_length;
    return absl::OkStatus();
  };
  // Caller buffers by name; every one must be used and match exactly, and
  // all of that is checked before a byte is written.
  absl::flat_hash_map<std::string, const MutableTensorView*> by_name;
  for (const MutableTensorView& t : targets) {
    if (!by_name.emplace(t.name, &t).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("two restore targets named '", t.name, "'"));
    }
  }
  result.tensors.resize(resp.manifest().tensors_size());
  std::vector<char*> tensor_dst(resp.manifest().tensors_size());
  for (int i = 0; i < resp.manifest().tensors_size(); ++i) {
    const v1::TensorEntry& t = resp.manifest().tensors(i);
    RestoredTensor& out = result.tensors[i];
    out.name = t.name();
    SNAPBACK_ASSIGN_OR_RETURN(out.dtype, ParseDType(t.dtype()));
    out.shape.assign(t.shape().begin(), t.shape().end());
    out.global_shape.assign(t.global_shape().begin(), t.global_shape().end());
    out.global_offset.assign(t.global_offset().begin(), t.global_offset().end());
    auto target = by_name.find(t.name());
    if (target == by_name.end()) {
      if (!targets.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("step ", *step, " has tensor '", t.name(),
                         "' but no restore target names it"));
      }
      out.bytes.resize(t.byte_length());
      tensor_dst[i] = out.bytes.data();
      continue;
    }
    const MutableTensorView& m = *target->second;
    const bool no_data = m.data == nullptr && t.byte_length() > 0;
    if (m.dtype != out.dtype || m.shape != out.shape || no_data) {
      return absl::InvalidArgumentError(absl::StrCat(
          "restore target '", t.name(), "' does not match step ", *step, ": saved ",
          t.dtype(), " of shape [", absl::StrJoin(out.shape, ","), "], target ",
          DTypeName(m.dtype), " of shape [", absl::StrJoin(m.shape, ","), "]",
          no_data ? " with no data" : ""));
    }
    tensor_dst[i] = static_cast<char*>(m.data);
    by_name.erase(target);
  }
  if (!by_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step ", *step, " has no tensor named '", by_name.begin()->first, "'"));
  }
  for (int i = 0; i < resp.manifest().tensors_size(); ++i) {
    const v1::TensorEntry& t = resp.manifest().tensors(i);
    SNAPBACK_RETURN_IF_ERROR(
        plan(false, t.name(), t.byte_length(), t.chunks(), tensor_dst[i]));
  }
  result.blobs.resize(resp.manifest().blobs_size());
  for (int i = 0; i < resp.manifest().blobs_size(); ++i) {
    const v1::BlobEntry& b = resp.manifest().blobs(i);
    result.blobs[i].name = b.name();
    result.blobs[i].bytes.resize(b.byte_length());
    SNAPBACK_RETURN_IF_ERROR(
        plan(true, b.name(), b.byte_length(), b.chunks(), result.blobs[i].bytes.data()));
  }

  // Fetch in parallel: each worker takes batches of chunks, reads them from
  // the first replica, decodes straight into the destination and checks the
  // SHA-256 of the decoded bytes; a chunk that is missing or fails moves on
  // to the next replica. No unverified byte is ever left in a result.
  constexpr size_t kFetchBatch = 8;
  std::atomic<size_t> next{0};
  absl::Mutex err_mu;
  absl::Status first_error;
  std::vector<XXH128_hash_t> fast(fetches.size());
  // Decodes `got` into f's destination and checks it; OK only when the
  // destination holds exactly the bytes the id names.
  auto place = [&](size_t i, const absl::StatusOr<EncodedChunk>& got) -> absl::Status {
    SNAPBACK_RETURN_IF_ERROR(got.status());
    Fetch& f = fetches[i];
    if (got->raw_length != f.length) {
      return absl::DataLossError(absl::StrCat("chunk is ", got->raw_length,
                                              " bytes, the manifest says ", f.length));
    }
    SNAPBACK_RETURN_IF_ERROR(DecodeChunk(*got, {f.dst, f.length}));
    if (Sha256({f.dst, f.length}) != f.id) {
      return absl::DataLossError("decoded bytes do not hash to the chunk id");
    }
    fast[i] = XXH3_128bits(f.dst, f.length);
    return absl::OkStatus();
  };
  auto worker = [&] {
    for (size_t begin; (begin = next.fetch_add(kFetchBatch)) < fetches.size();) {
      std::vector<size_t> todo;
      for (size_t i = begin; i < std::min(fetches.size(), begin + kFetchBatch); ++i) {
        todo.push_back(i);
      }
      absl::Status last;
      for (const std::string& ep : endpoints) {
        if (todo.empty()) break;
        auto storage = client_->Storage(ep);
        if (!storage.ok()) {
          last = storage.status();
          continue;
        }
        std::vector<ChunkId> ids;
        for (size_t i : todo) ids.push_back(fetches[i].id);
        auto got = (*storage)->GetEach(ids);
        std::vector<size_t> failed;
        for (size_t k = 0; k < todo.size(); ++k) {
          absl::Status s;
          if (got.ok()) {
            s = place(todo[k], (*got)[k]);
          } else {
            // The node failed the whole call (e.g. one corrupt record ends
            // the stream): ask for each chunk alone so the good ones still
            // come from here.
            auto one = (*storage)->GetEach({fetches[todo[k]].id});
            s = one.ok() ? place(todo[k], (*one)[0]) : one.status();
          }
          if (!s.ok()) {
            last = s;
            failed.push_back(todo[k]);
          }
        }
        todo = std::move(failed);
      }
      if (!todo.empty()) {
        // Never leave unverified bytes behind.
        for (size_t i : todo) std::memset(fetches[i].dst, 0, fetches[i].length);
        absl::MutexLock lock(&err_mu);
        if (first_error.ok()) {
          first_error = absl::DataLossError(absl::StrCat(
              "chunk ", fetches[todo[0]].id.ShortHex(), " (", fetches[todo[0]].key,
              ") of step ", *step, " has no good copy on ", endpoints.size(),
              " storage node(s) (last error: ", last.message(),
              "); restore an older step with Restore(step)"));
        }
      }
    }
  };
  std::vector<std::thread> threads;
  const int n =
      std::max(1, std::min<int>(options_.restore_threads,
                                (fetches.size() + kFetchBatch - 1) / kFetchBatch));
  for (int t = 0; t < n; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  SNAPBACK_RETURN_IF_ERROR(first_error);

  // The restored state is the base of the next incremental save.
  {
    absl::MutexLock lock(&prev_mu_);
    prev_.clear();
    for (size_t i = 0; i < fetches.size(); ++i) {
      prev_[fetches[i].key] = {fast[i], fetches[i].id};
    }
  }
  {
    absl::MutexLock lock(&mu_);
    last_step_ = std::max(last_step_, *step);
  }
  result.elapsed = absl::Now() - start;
  return result;
}

absl::Status CheckpointerImpl::Close() {
  // One Close at a time (an explicit one may race the destructor's).
  absl::MutexLock close_lock(&close_mu_);
  absl::Status flushed = Flush();
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  if (driver_.joinable()) driver_.join();
  if (heartbeat_ != nullptr) heartbeat_->Stop();  // goodbye: finished, not dead
  return flushed;
}

}  // namespace
}  // namespace internal_client

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  if (options.endpoint.empty()) {
    options.endpoint = internal_client::EnvOr("SNAPBACK_ENDPOINT", "127.0.0.1:7420");
  }
  if (options.tls_root_ca_file.empty()) {
    options.tls_root_ca_file = internal_client::EnvOr("SNAPBACK_TLS_CA", "");
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls_root_ca_file.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    FILE* f = std::fopen(options.tls_root_ca_file.c_str(), "rb");
    if (f == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("cannot read TLS CA file ", options.tls_root_ca_file));
    }
    std::string pem;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) pem.append(buf, n);
    std::fclose(f);
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem;
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(options.endpoint, creds, args);
  return std::unique_ptr<Client>(
      new internal_client::ClientImpl(std::make_shared<internal_client::Connection>(
          std::move(options), std::move(channel))));
}

}  // namespace snapback
