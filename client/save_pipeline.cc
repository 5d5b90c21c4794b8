#include "client/save_pipeline.h"

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/time/clock.h"
#include "client/placed_writer.h"
#include "common/hash.h"
#include "common/status_macros.h"

namespace snapback::internal_client {
namespace {

namespace v1 = ::snapback::v1;

// Chunks per batch between the driver stages (claim, encode, upload).
constexpr int kBatchChunks = 16;

// The upload stage of one Drive(): encoded batches go out on up to
// `streams` concurrent Put() calls on `pool`, with at most `budget` encoded
// bytes in flight. Upload tasks reference this object, so the destructor
// waits for every one of them (on every way out of Drive()).
class UploadQueue {
 public:
  // `put` stores one batch durably (on one node, or placed on a cluster).
  using PutFn = std::function<absl::Status(const std::vector<EncodedChunk>&)>;
  UploadQueue(PutFn put, ThreadPool* pool, int streams, uint64_t budget)
      : put_(std::move(put)), pool_(pool), streams_(streams), budget_(budget) {}
  UploadQueue(const UploadQueue&) = delete;
  UploadQueue& operator=(const UploadQueue&) = delete;
  ~UploadQueue() { (void)WaitDurable(); }

  // Queues `encoded` (not empty) for upload. Waits for room: a free stream
  // and, unless nothing is in flight, budget for its bytes (backpressure:
  // with the staging pool this bounds the client's memory by
  // staging_bytes). False, without queueing, once an upload has failed.
  bool Enqueue(std::shared_ptr<std::vector<EncodedChunk>> encoded) {
    uint64_t bytes = 0;
    for (const EncodedChunk& c : *encoded) bytes += c.data.size();
    absl::MutexLock lock(&mu_);
    auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !status_.ok() || (outstanding_ < streams_ &&
                               (outstanding_ == 0 || in_flight_ + bytes <= budget_));
    };
    mu_.Await(absl::Condition(&room));
    if (!status_.ok()) return false;
    ++outstanding_;
    in_flight_ += bytes;
    pool_->Schedule([this, encoded, bytes] {
      absl::Status put = put_(*encoded);
      encoded->clear();
      absl::MutexLock l(&mu_);
      if (!put.ok() && status_.ok()) status_ = put;
      --outstanding_;
      in_flight_ -= bytes;
    });
    return true;
  }

  // Waits until every queued upload has ended; OK when all were
  // acknowledged (durable), else the first failure.
  absl::Status WaitDurable() {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return outstanding_ == 0; };
    mu_.Await(absl::Condition(&idle));
    return status_;
  }

 private:
  const PutFn put_;
  ThreadPool* const pool_;
  const int streams_;
  const uint64_t budget_;
  absl::Mutex mu_;
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

int BatchChunks(const CheckpointerOptions& o) {
  const uint64_t pool_chunks = std::max<uint64_t>(1, o.staging_bytes / 2 / o.chunk_bytes);
  return static_cast<int>(
      std::max<uint64_t>(1, std::min<uint64_t>(kBatchChunks, pool_chunks / 2)));
}

uint64_t EncodedBudget(const CheckpointerOptions& o) {
  const uint64_t transport =
      static_cast<uint64_t>(BatchChunks(o)) * o.chunk_bytes +
      uint64_t{3} * o.upload_streams * std::min<uint64_t>(o.chunk_bytes, 4 << 20);
  const uint64_t half = o.staging_bytes / 2;
  return std::max<uint64_t>(o.chunk_bytes, half > transport ? half - transport : 0);
}

SavePipeline::SavePipeline(std::shared_ptr<Connection> connection,
                           CheckpointerOptions options)
    : client_(std::move(connection)),
      options_(std::move(options)),
      staging_(options_.staging_bytes / 2, options_.chunk_bytes),
      encoded_budget_(EncodedBudget(options_)),
      batch_chunks_(BatchChunks(options_)),
      copy_pool_(options_.copy_threads),
      hash_pool_(options_.pipeline_threads),
      upload_pool_(options_.upload_streams) {
  encode_options_.codec = options_.compress ? Codec::kShuffleZstd : Codec::kNone;
  encode_options_.zstd_level = options_.zstd_level;
}

v1::RankRef SavePipeline::RankRef() const {
  v1::RankRef r;
  r.set_job_id(options_.job_id);
  r.set_rank(options_.rank);
  r.set_incarnation(options_.incarnation);
  return r;
}

absl::StatusOr<std::shared_ptr<SaveJob>> SavePipeline::Plan(
    int64_t step, absl::Span<const TensorView> tensors,
    absl::Span<const BlobView> blobs) {
  SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<SaveJob> job,
                            PlanSaveJob(step, tensors, blobs, options_.chunk_bytes));
  absl::MutexLock lock(&prev_mu_);
  for (size_t i = 0; i < job->items.size(); ++i) {
    auto it = codec_choice_.find(job->items[i].name);
    job->codec_choice[i] = it == codec_choice_.end() ? kUndecided : it->second;
  }
  return job;
}

void SavePipeline::Snapshot(std::shared_ptr<SaveJob> job) {
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

void SavePipeline::SnapshotInBackground(std::shared_ptr<SaveJob> job) {
  snapshot_runner_.Schedule([this, job] { Snapshot(job); });
}

absl::Status SavePipeline::Drive(SaveJob* job) {
  SaveHandle::State* state = job->state.get();
  SNAPBACK_ASSIGN_OR_RETURN(Destination where, BeginCheckpoint(*job));
  UploadQueue::PutFn put;
  if (where.cluster.empty()) {
    put = [storage = where.storage](const std::vector<EncodedChunk>& chunks) {
      return storage->Put(chunks).status();
    };
  } else {
    put = [conn = client_.get(),
           view = std::move(where.cluster)](const std::vector<EncodedChunk>& chunks) {
      PutSummary summary;
      return PlacedPut(conn, view, chunks, &summary);
    };
  }
  // Declared before the loop: on every way out, its destructor waits for
  // the uploads it started (after the batch in hand has been released).
  UploadQueue uploads(std::move(put), &upload_pool_, options_.upload_streams,
                      encoded_budget_);
  absl::flat_hash_set<ChunkId> sent;  // already queued for upload in this save
  DriveCounts counts;
  size_t processed = 0;
  while (processed < job->tasks.size()) {
    SNAPBACK_ASSIGN_OR_RETURN(StagedBatch batch, TakeStagedBatch(job, processed));
    processed += batch.size();
    counts.unchanged += HashBatch(job, batch);
    SNAPBACK_ASSIGN_OR_RETURN(v1::ClaimChunksResponse claimed, ClaimBatch(*job, batch));
    SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<std::vector<EncodedChunk>> encoded,
                              EncodeBatch(job, batch, claimed, &sent, &counts));
    batch.clear();  // staging buffers back to the pool
    if (!encoded->empty() && !uploads.Enqueue(std::move(encoded))) break;
  }
  SNAPBACK_RETURN_IF_ERROR(uploads.WaitDurable());
  {
    absl::MutexLock lock(&state->mu);
    state->stats.chunks_unchanged = counts.unchanged;
    state->stats.chunks_present = counts.present;
    state->stats.new_bytes = counts.new_bytes;
    state->stats.sent_bytes = counts.sent_bytes;
    state->stats.to_durable = absl::Now() - job->start;
  }
  bool committed = false;
  SNAPBACK_RETURN_IF_ERROR(Commit(job, &committed));
  {
    absl::MutexLock lock(&state->mu);
    state->stats.to_commit = absl::Now() - job->start;
    state->stats.checkpoint_committed = committed;
  }
  AdoptAsBase(*job);
  return absl::OkStatus();
}

// Begin: asks the coordinator where this checkpoint's chunks go: a storage
// cluster's nodes (placement per chunk), or one storage node (the first one
// named; "" = the coordinator's address). Waits on the BeginCheckpoint RPC.
absl::StatusOr<SavePipeline::Destination> SavePipeline::BeginCheckpoint(
    const SaveJob& job) {
  v1::BeginCheckpointRequest begin;
  *begin.mutable_rank() = RankRef();
  begin.set_step(job.step);
  v1::BeginCheckpointResponse where;
  {
    auto ctx = client_->Context();
    SNAPBACK_RETURN_IF_ERROR(
        Rpc(client_->stub()->BeginCheckpoint(ctx.get(), begin, &where),
            absl::StrCat("begin checkpoint of step ", job.step)));
  }
  Destination out;
  if (!where.nodes().empty()) {
    out.cluster = ClusterView::From(where.nodes(), where.replication());
    return out;
  }
  const std::string endpoint =
      where.storage_endpoints().empty() ? "" : where.storage_endpoints(0);
  SNAPBACK_ASSIGN_OR_RETURN(out.storage, client_->Storage(endpoint));
  return out;
}

// Take: the next batch of up to batch_chunks_ staged chunks (fewer at the
// end). Waits on the snapshot: the caller waits for the copy, not for the
// pipeline, so this leaves the CPU to the copy until it is done, unless it
// has filled the pool and waits for us (re-checked on every chunk it
// stages).
absl::StatusOr<SavePipeline::StagedBatch> SavePipeline::TakeStagedBatch(
    SaveJob* job, size_t processed) {
  StagedBatch batch;
  absl::MutexLock lock(&job->mu);
  const size_t want = std::min<size_t>(batch_chunks_, job->tasks.size() - processed);
  StagingPool* pool = &staging_;
  auto enough = [job, want, pool]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(job->mu) {
    return job->copy_finished || (job->staged.size() >= want && pool->available() == 0);
  };
  job->mu.Await(absl::Condition(&enough));
  if (job->staged.empty()) {
    return absl::InternalError("snapshot finished without staging every chunk");
  }
  while (!job->staged.empty() && batch.size() < want) {
    batch.push_back(std::move(job->staged.front()));
    job->staged.pop_front();
  }
  return batch;
}

// Hash: on pipeline_threads, xxh3-128 of every chunk of `batch`; a chunk
// equal to the previous save's at the same key reuses its id, any other gets
// SHA-256. Fills job->fast and job->ids; returns how many were unchanged.
// Waits for the hashing tasks.
uint64_t SavePipeline::HashBatch(SaveJob* job, const StagedBatch& batch) {
  std::vector<char> changed(batch.size(), 1);
  absl::BlockingCounter hashed(static_cast<int>(batch.size()));
  for (size_t b = 0; b < batch.size(); ++b) {
    hash_pool_.Schedule([&, b] {
      const size_t i = batch[b].first;
      const Task& t = job->tasks[i];
      const char* data = batch[b].second.data();
      job->fast[i] = XXH3_128bits(data, t.length);
      {
        absl::MutexLock lock(&prev_mu_);
        auto it = prev_.find(
            ChunkKey(job->items[t.item].is_blob, job->items[t.item].name, t.index));
        const PrevChunk* prev = it != prev_.end() ? &it->second : nullptr;
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
  uint64_t unchanged = 0;
  for (char c : changed) unchanged += c ? 0 : 1;
  return unchanged;
}

// Claim: ClaimChunks for every id of `batch`, so GC keeps them; the answer
// says, per id, whether the tier already has it. Waits on the RPC.
absl::StatusOr<v1::ClaimChunksResponse> SavePipeline::ClaimBatch(
    const SaveJob& job, const StagedBatch& batch) {
  v1::ClaimChunksRequest claim;
  *claim.mutable_rank() = RankRef();
  claim.set_step(job.step);
  for (const auto& [i, buf] : batch) claim.add_ids(std::string(job.ids[i].AsBytes()));
  v1::ClaimChunksResponse claimed;
  {
    auto ctx = client_->Context();
    SNAPBACK_RETURN_IF_ERROR(Rpc(client_->stub()->ClaimChunks(ctx.get(), claim, &claimed),
                                 absl::StrCat("claim chunks of step ", job.step)));
  }
  if (claimed.present_size() != static_cast<int>(batch.size())) {
    return absl::InternalError("coordinator answered ClaimChunks with the wrong count");
  }
  return claimed;
}

// Encode: on pipeline_threads, encodes the chunks of `batch` the tier does
// not have and this save has not queued yet (`sent`), deciding each item's
// codec on its first chunk. Counts present, new and sent bytes. The first
// encoding failure, after all tasks ended. Waits for the encoding tasks.
absl::StatusOr<std::shared_ptr<std::vector<EncodedChunk>>> SavePipeline::EncodeBatch(
    SaveJob* job, const StagedBatch& batch, const v1::ClaimChunksResponse& claimed,
    absl::flat_hash_set<ChunkId>* sent, DriveCounts* counts) {
  std::vector<size_t> to_send;
  for (size_t b = 0; b < batch.size(); ++b) {
    const ChunkId& id = job->ids[batch[b].first];
    if (claimed.present(static_cast<int>(b))) {
      ++counts->present;
    } else if (sent->insert(id).second) {
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
        EncodeOptions o = encode_options_;
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
    counts->new_bytes += (*encoded)[k].raw_length;
    counts->sent_bytes += (*encoded)[k].data.size();
  }
  return encoded;
}

// Commit: CommitRank with this rank's manifest; *committed says whether it
// completed the global checkpoint. Waits on the RPC, retried with backoff.
absl::Status SavePipeline::Commit(SaveJob* job, bool* committed) {
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
  {
    // What this save cost, for the coordinator's SLA report and metrics.
    // Save() has returned by now unless it blocks until the commit (then
    // it has blocked the caller for the whole save so far).
    SaveHandle::State* state = job->state.get();
    SaveStats st;
    {
      absl::MutexLock lock(&state->mu);
      st = state->stats;
    }
    v1::SaveStats* out = req.mutable_stats();
    out->set_logical_bytes(st.logical_bytes);
    out->set_new_bytes(st.new_bytes);
    out->set_sent_bytes(st.sent_bytes);
    out->set_chunks(st.chunks);
    out->set_chunks_unchanged(st.chunks_unchanged);
    out->set_chunks_present(st.chunks_present);
    const absl::Duration blocked =
        st.blocked > absl::ZeroDuration() ? st.blocked : absl::Now() - job->start;
    out->set_blocked_us(absl::ToInt64Microseconds(blocked));
    out->set_snapshot_us(absl::ToInt64Microseconds(st.snapshot));
    out->set_to_durable_us(absl::ToInt64Microseconds(st.to_durable));
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

// Adopt: this committed save is now the base of the next incremental check,
// and its items' codec choices are kept.
void SavePipeline::AdoptAsBase(const SaveJob& job) {
  absl::MutexLock lock(&prev_mu_);
  for (size_t i = 0; i < job.items.size(); ++i) {
    if (job.codec_choice[i] != kUndecided) {
      codec_choice_[job.items[i].name] = job.codec_choice[i];
    }
  }
  prev_.clear();
  for (size_t i = 0; i < job.tasks.size(); ++i) {
    const Task& t = job.tasks[i];
    prev_[ChunkKey(job.items[t.item].is_blob, job.items[t.item].name, t.index)] = {
        job.fast[i], job.ids[i]};
  }
}

void SavePipeline::Abort(const SaveJob& job, const absl::Status& why) {
  v1::AbortCheckpointRequest req;
  *req.mutable_rank() = RankRef();
  req.set_step(job.step);
  req.set_reason(std::string(why.message()));
  v1::AbortCheckpointResponse resp;
  auto ctx = client_->Context();
  (void)client_->stub()->AbortCheckpoint(ctx.get(), req, &resp);
}

void SavePipeline::DrainStaged(SaveJob* job) {
  while (true) {
    absl::MutexLock lock(&job->mu);
    auto more = [job]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(job->mu) {
      return !job->staged.empty() || job->copy_finished;
    };
    job->mu.Await(absl::Condition(&more));
    job->staged.clear();
    if (job->copy_finished) break;
  }
}

void SavePipeline::ResetBase(ChunkBase base) {
  absl::MutexLock lock(&prev_mu_);
  prev_ = std::move(base);
}

}  // namespace snapback::internal_client
