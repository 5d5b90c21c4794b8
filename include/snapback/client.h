// The snapback client library: asynchronous, incremental checkpoints of one
// training rank, committed globally across ranks, restored verified.
//
//   auto client = snapback::Client::Connect({});           // SNAPBACK_ENDPOINT
//   auto ck = (*client)->NewCheckpointer({});              // SNAPBACK_JOB/RANK/...
//   auto latest = (*ck)->LatestStep();                     // nullopt on a fresh job
//   for (int64_t step = ...; ...; ++step) {
//     train_step();
//     auto handle = (*ck)->Save(step, tensors);            // blocks only to copy
//     ...                                                  // upload runs behind
//   }
//   (*ck)->Close();
//
// Save() copies the tensors' bytes into a staging pool owned by the library
// (hard memory cap, buffers reused across saves, copy on several threads) and
// returns; a background pipeline chunks the bytes, skips chunks unchanged
// since the previous checkpoint (xxh3 first, SHA-256 only for what changed),
// skips chunks the storage tier already has, encodes the rest (byte-shuffle
// + zstd, raw where compression does not pay), streams them to storage on
// several concurrent streams, and commits this rank's manifest to the
// coordinator. The checkpoint becomes the job's latest only when every rank
// has committed and every chunk is durable.
//
// Errors are absl::Status values whose code says what to do (UNAVAILABLE:
// retry the call; ABORTED: retry the whole save; FAILED_PRECONDITION: fix
// something first, e.g. a stale incarnation; DATA_LOSS: bytes failed
// verification). A background failure is never silent: it is on the save's
// handle and is returned by the next Save().
#ifndef SNAPBACK_CLIENT_H_
#define SNAPBACK_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "snapback/tensor.h"

namespace snapback {

struct ClientOptions {
  // Coordinator address HOST:PORT.
  // Default: $SNAPBACK_ENDPOINT, else "127.0.0.1:7420"
  std::string endpoint = {};
  // PEM CA that signed the servers' certificates; set = TLS.
  // Default: $SNAPBACK_TLS_CA, else "" (plaintext)
  std::string tls_root_ca_file = {};
  // Deadline of each metadata RPC; bulk streams get `bulk_deadline`.
  // Default: 30 s
  absl::Duration rpc_deadline = absl::Seconds(30);
  // Deadline of one chunk upload or download stream.
  // Default: 10 min
  absl::Duration bulk_deadline = absl::Minutes(10);
};

// What Save() does when max_inflight checkpoints are already uploading.
enum class BusyPolicy {
  kWait,  // block until one finishes, then save
  kSkip,  // return at once with a handle whose stats().skipped is true
};

struct CheckpointerOptions {
  // Job id, [A-Za-z0-9._-]{1,128}.
  // Default: $SNAPBACK_JOB
  std::string job_id = {};
  // This process's rank in [0, world_size).
  // Default: $SNAPBACK_RANK, else 0
  int rank = -1;
  // Number of ranks of the job.
  // Default: $SNAPBACK_WORLD_SIZE, else 1
  int world_size = 0;
  // Incarnation of this run of the job: every restart must use a larger one
  // (snapback-launch sets it; under Slurm the failure detector raises it
  // before it requeues the job). Saves of an older incarnation are rejected.
  // Default: $SNAPBACK_INCARNATION, else the job's incarnation at the
  // coordinator (at least 1)
  int64_t incarnation = -1;
  // How often the rank tells the coordinator's failure detector it is alive
  // (with its step and phase). A process that dies is noticed at once (its
  // stream breaks); one that freezes after a few missed intervals. Zero
  // turns the heartbeat off (the job is then not watched).
  // Default: $SNAPBACK_HEARTBEAT_MS, else 1 s
  absl::Duration heartbeat_interval = absl::Milliseconds(-1);
  // Bytes per chunk: the unit of dedup, upload and verification.
  // Default: 4 MiB
  uint64_t chunk_bytes = 4ull << 20;
  // Hard cap on the library's checkpoint memory: half stages the copy of
  // the tensors Save() takes, half holds encoded chunks waiting for or in
  // upload (gRPC's transport adds a fixed ~30 MiB on top). A save larger than
  // half the cap still works: Save() then blocks until the pipeline frees
  // buffers (backpressure instead of unbounded memory). For Save() to block
  // only for the copy, set it to twice the checkpoint size.
  // Default: 1 GiB
  uint64_t staging_bytes = 1ull << 30;
  // Threads copying tensors into staging during Save().
  // Default: 2
  int copy_threads = 2;
  // Threads hashing and encoding chunks in the background.
  // Default: 2
  int pipeline_threads = 2;
  // Concurrent upload streams to the storage tier.
  // Default: 2
  int upload_streams = 2;
  // Checkpoints uploading at once; a further Save() waits or is skipped.
  // Default: 1
  int max_inflight = 1;
  // Default: kWait
  BusyPolicy busy_policy = BusyPolicy::kWait;
  // Overlap mode: Save() returns before the copy is done; the caller must
  // call WaitSnapshot() (or SaveHandle::WaitSnapshot()) before it mutates the
  // tensors again (e.g. before the next optimizer step).
  // Default: false
  bool overlap = false;
  // Compress chunks with byte-shuffle + zstd where it pays (see
  // min_compress_saving); false = always send raw bytes.
  // Default: true
  bool compress = true;
  // A tensor's chunks are compressed only when shuffle+zstd saves at least
  // this fraction of its first chunk (the decision is kept for later saves).
  // A save is CPU-bound (SHA-256 on both ends, zstd ~2 core-s per GB each
  // way), so compression pays only when it removes a good part of the bytes:
  // bf16 weights save ~30 %, fp32 ~15 % (shared/design.md figures).
  // Default: 0.25
  double min_compress_saving = 0.25;
  // zstd level; low levels keep the pipeline near disk speed.
  // Default: 1
  int zstd_level = 1;
  // Threads fetching and verifying chunks in Restore().
  // Default: 4
  int restore_threads = 4;
};

// Figures of one save.
struct SaveStats {
  int64_t step = -1;
  // The save was skipped (BusyPolicy::kSkip with max_inflight reached).
  bool skipped = false;
  uint64_t logical_bytes = 0;  // tensors + blobs
  uint64_t chunks = 0;
  uint64_t chunks_unchanged = 0;  // same bytes as the previous save (xxh3)
  uint64_t chunks_present = 0;    // already on the storage tier (not sent)
  uint64_t new_bytes = 0;         // raw bytes of chunks that had to be sent
  uint64_t sent_bytes = 0;        // encoded bytes sent
  absl::Duration blocked = absl::ZeroDuration();  // time Save() blocked the caller
  absl::Duration snapshot =
      absl::ZeroDuration();  // copy into staging (overlaps `blocked`)
  absl::Duration to_durable = absl::ZeroDuration();  // Save() call -> every chunk durable
  absl::Duration to_commit =
      absl::ZeroDuration();  // Save() call -> this rank's manifest committed
  // True when this rank's commit completed the global checkpoint.
  bool checkpoint_committed = false;
};

// The future of one Save(). Thread-safe; copyable (shared state).
class SaveHandle {
 public:
  SaveHandle();
  // Blocks until the save has finished (committed, failed or skipped) and
  // returns its status.
  absl::Status Wait() const;
  // Like Wait() with a deadline: DEADLINE_EXCEEDED when still running.
  absl::Status WaitFor(absl::Duration timeout) const;
  // True once the save has finished.
  bool Done() const;
  // Blocks until the snapshot copy is complete: after it the caller may
  // mutate the tensors. Returns the copy's status.
  absl::Status WaitSnapshot() const;
  // Figures so far (final once Done()).
  SaveStats stats() const;
  int64_t step() const;

  struct State;
  explicit SaveHandle(std::shared_ptr<State> state);

 private:
  std::shared_ptr<State> state_;
};

// A restored checkpoint of one rank.
struct RestoreResult {
  int64_t step = -1;
  std::vector<RestoredTensor> tensors = {};
  std::vector<RestoredBlob> blobs = {};
  uint64_t bytes = 0;
  absl::Duration elapsed = absl::ZeroDuration();
};

// Checkpoints of one rank of one job incarnation. Thread-safe, but saves
// are meant to come from one training loop.
class Checkpointer {
 public:
  virtual ~Checkpointer() = default;

  // Snapshots `tensors` and `blobs` (copies their bytes; in overlap mode the
  // copy continues after return) and uploads and commits them in the
  // background. Returns the handle, or the error of an earlier background
  // failure (which is then cleared), or INVALID_ARGUMENT for bad views
  // (duplicate names, null data, bad shapes). `step` must grow.
  virtual absl::StatusOr<SaveHandle> Save(int64_t step,
                                          absl::Span<const TensorView> tensors,
                                          absl::Span<const BlobView> blobs = {}) = 0;
  // Overlap mode: blocks until the last save's snapshot copy is done.
  virtual absl::Status WaitSnapshot() = 0;
  // Waits for every save in flight. Returns the first failure.
  virtual absl::Status Flush() = 0;

  // The step Restore() would return: the operator's restore target or the
  // latest committed step; nullopt for a job with no checkpoint.
  virtual absl::StatusOr<std::optional<int64_t>> LatestStep() = 0;
  // Restores this rank's part of `step` (nullopt = LatestStep()). Every byte
  // is SHA-256 verified; a chunk with no good copy is DATA_LOSS. NOT_FOUND
  // when there is nothing to restore.
  virtual absl::StatusOr<RestoreResult> Restore(
      std::optional<int64_t> step = std::nullopt) = 0;
  // Like Restore(), but decodes each tensor straight into the caller's
  // memory: every tensor of the checkpoint needs a target of the same name,
  // dtype and shape, and every target a tensor (INVALID_ARGUMENT before
  // anything is written otherwise). The result then lists the tensors with
  // empty `bytes`; blobs are library-owned as in Restore(). On DATA_LOSS the
  // chunks without a good copy are left zeroed, never unverified.
  virtual absl::StatusOr<RestoreResult> RestoreInto(
      absl::Span<const MutableTensorView> targets,
      std::optional<int64_t> step = std::nullopt) = 0;

  // Tells the failure detector this rank has reached training step `step`
  // (call it once per step; it is cheap: no RPC, the heartbeat sends the
  // latest value). A step that stops advancing for hang_factor × the
  // observed step time is reported as a hang. Save() and Restore() report
  // their own phases (saving / restoring) while they block the caller.
  virtual void ReportStep(int64_t step) = 0;
  // The incarnation this checkpointer runs as (from the options, the
  // environment, or the coordinator).
  virtual int64_t incarnation() const = 0;

  // Flushes and stops the background threads. Later calls fail.
  virtual absl::Status Close() = 0;
};

// A connection to the coordinator (and, through it, the storage tier).
class Client {
 public:
  virtual ~Client() = default;
  // Connects (lazily: the first call reports an unreachable endpoint).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(ClientOptions options = {});
  // A checkpointer for (job, rank, world_size, incarnation); registers the
  // job with the coordinator if it is new.
  virtual absl::StatusOr<std::unique_ptr<Checkpointer>> NewCheckpointer(
      CheckpointerOptions options = {}) = 0;
};

}  // namespace snapback

#endif  // SNAPBACK_CLIENT_H_
