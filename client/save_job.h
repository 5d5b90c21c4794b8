// SaveJob: one Save() as the save pipeline sees it — the caller's tensors
// and blobs (Item), cut into chunk-sized copy tasks (Task), the staged
// buffers the snapshot hands to the driver, and the per-chunk results the
// driver fills in. Also the "previous save" record the incremental check
// compares against (PrevChunk, keyed by ChunkKey).
//
// PlanSaveJob() builds a job from the caller's views; it is a pure function
// (unit-tested in client/save_job_test.cc).
//
// Internal to the client library.
#ifndef SNAPBACK_CLIENT_SAVE_JOB_H_
#define SNAPBACK_CLIENT_SAVE_JOB_H_

#include <xxhash.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/save_handle_state.h"
#include "client/staging_pool.h"
#include "common/hash.h"
#include "snapback/client.h"
#include "snapback/tensor.h"

namespace snapback::internal_client {

// Where a save had a chunk: "t:" or "b:" (tensor or blob), the item's name,
// "#", the chunk's index within the item. The key of the incremental check:
// a chunk is compared with the previous save's chunk at the same key.
std::string ChunkKey(bool is_blob, absl::string_view item, size_t index);

// What the previous save (or the restored checkpoint) had at one key: the
// fast hash of its bytes and its id.
struct PrevChunk {
  XXH128_hash_t fast;
  ChunkId id;
};
using ChunkBase = absl::flat_hash_map<std::string, PrevChunk>;

// Whether an item's chunks are compressed: decided on its first chunk (see
// CheckpointerOptions::min_compress_saving) and kept for later saves.
enum CodecChoice { kUndecided = 0, kCompress = 1, kRaw = 2 };

// One tensor or blob of a save. `src` is the caller's memory.
struct Item {
  bool is_blob = false;
  std::string name;
  DType dtype = DType::kUInt8;
  std::vector<int64_t> shape, global_shape, global_offset;
  const char* src = nullptr;
  uint64_t bytes = 0;
  // The item's tasks are tasks[first_task, first_task + num_tasks).
  size_t first_task = 0;
  size_t num_tasks = 0;
};

// One chunk of an item: bytes [offset, offset + length) of item `item`.
struct Task {
  size_t item;
  size_t index;  // chunk index within the item
  uint64_t offset;
  uint32_t length;
};

// Shared by Save() (which plans it), the snapshot (which stages its chunks)
// and the driver thread (which hashes, uploads and commits them).
struct SaveJob {
  std::shared_ptr<SaveHandle::State> state;
  int64_t step = 0;
  absl::Time start;
  std::vector<Item> items;
  std::vector<Task> tasks;  // items' chunks, item after item

  absl::Mutex mu;
  // Staged chunks (task index, buffer), in the order the copy finished them.
  std::deque<std::pair<size_t, StagingPool::Buffer>> staged ABSL_GUARDED_BY(mu);
  bool copy_finished ABSL_GUARDED_BY(mu) = false;
  absl::Status copy_status ABSL_GUARDED_BY(mu);

  // Per-task results (written by the driver's hashing tasks).
  std::vector<ChunkId> ids;
  std::vector<XXH128_hash_t> fast;
  // CommitRank ended without an answer after retries: the checkpoint may be
  // committed, so it must not be aborted.
  bool commit_outcome_unknown = false;
  // Per item: a CodecChoice.
  std::unique_ptr<std::atomic<int>[]> codec_choice;
};

// A job for `step`: tensors first, then blobs, in the caller's order; each
// cut into tasks of chunk_bytes (the last one shorter; none for an empty
// item). `ids` and `fast` are sized to the tasks, every codec_choice is
// kUndecided; `state` and `start` are left for the caller. INVALID_ARGUMENT
// for an item with no name, a duplicate name (a tensor and a blob may share
// one), bytes but no data, a negative dimension, or a global_shape /
// global_offset that does not fit the shard.
absl::StatusOr<std::shared_ptr<SaveJob>> PlanSaveJob(int64_t step,
                                                     absl::Span<const TensorView> tensors,
                                                     absl::Span<const BlobView> blobs,
                                                     uint64_t chunk_bytes);

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_SAVE_JOB_H_
