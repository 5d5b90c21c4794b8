#include "server/storage_service.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "rpc/grpc_status.h"
#include "server/forward.h"
#include "server/server_metrics.h"

namespace snapback::server {
namespace {

using snapback::v1::ChunkHeader;
using snapback::v1::GetChunksRequest;
using snapback::v1::GetChunksResponse;
using snapback::v1::PutChunksRequest;
using snapback::v1::PutChunksResponse;
using Context = StorageServiceImpl::Context;

// GetChunks reads ahead at most this many encoded bytes (plus one store
// batch) so a large request cannot pin a node's memory.
constexpr uint64_t kGetPrefetchBytes = 32ull << 20;
// Ids per ChunkStore::Get call while streaming: enough for the store to
// overlap reads, few enough to bound the read-ahead.
constexpr size_t kGetFetchBatch = 4;

void CountPut(const StorageMetrics& m, const storage::PutResult& r) {
  m.chunks_put->Inc(r.stored);
  m.chunks_present->Inc(r.already_present);
  m.bytes_written->Inc(static_cast<double>(r.bytes_written));
}

void CountRead(const StorageMetrics& m, const absl::StatusOr<EncodedChunk>& r) {
  if (r.ok()) {
    m.chunks_read->Inc();
    m.bytes_read->Inc(static_cast<double>(r->data.size()));
  } else if (absl::IsDataLoss(r.status())) {
    m.read_failures->Inc();
  }
}

bool ValidElementSize(uint32_t n) { return n == 1 || n == 2 || n == 4 || n == 8; }

absl::StatusOr<ChunkId> ParseId(const std::string& bytes, absl::string_view where) {
  if (bytes.size() != 32) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": id is ", bytes.size(),
        " bytes; a chunk id is the 32-byte SHA-256 of the chunk's raw bytes"));
  }
  return ChunkId::FromBytes(bytes);
}

absl::StatusOr<std::vector<ChunkId>> ParseIds(
    const google::protobuf::RepeatedPtrField<std::string>& raw,
    const StorageLimits& limits) {
  if (raw.size() > limits.max_batch_chunks) {
    return absl::InvalidArgumentError(
        absl::StrCat("request names ", raw.size(), " ids; the limit is ",
                     limits.max_batch_chunks, "; split it into several requests"));
  }
  std::vector<ChunkId> ids;
  ids.reserve(raw.size());
  for (int i = 0; i < raw.size(); ++i) {
    absl::StatusOr<ChunkId> id = ParseId(raw[i], absl::StrCat("ids[", i, "]"));
    if (!id.ok()) return id.status();
    ids.push_back(*id);
  }
  return ids;
}

// Prefixes `status` with where it happened, keeping its code.
absl::Status Annotate(const absl::Status& status, absl::string_view where) {
  return absl::Status(status.code(), absl::StrCat(where, ": ", status.message()));
}

// Reactors are deleted when both gRPC (OnDone) and every pool task they
// started are finished with them; whichever lets go last deletes.
template <typename Derived>
class RefCounted {
 protected:
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      delete static_cast<Derived*>(this);
    }
  }

 private:
  std::atomic<int> refs_{1};  // gRPC's reference, dropped in OnDone()
};

// ---------------------------------------------------------------------------
// PutChunks: receive -> verify (verify_pool) -> store in batches (io_pool).
//
// Every gRPC operation (StartRead, Finish) is issued while holding mu_, from
// the single decision point Advance(), so no two threads can disagree about
// whether the call is finished. gRPC never runs reactions inline for this
// reactor (InternalInlineable() is false), so holding mu_ there cannot
// deadlock.
class PutReactor final : public grpc::ServerReadReactor<PutChunksRequest>,
                         public RefCounted<PutReactor> {
 public:
  PutReactor(const Context* c, grpc::CallbackServerContext* ctx,
             PutChunksResponse* response)
      : c_(c), ctx_(ctx), response_(response) {
    c_->service->CallStarted();
    absl::MutexLock lock(&mu_);
    Advance();
  }
  ~PutReactor() override { c_->service->CallEnded(); }

  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    reading_ = false;
    if (finished_) return;
    if (!ok) {
      eof_ = true;
      if (ctx_->IsCancelled()) {
        cancelled_ = true;
      } else if (assembling_) {
        Fail(absl::InvalidArgumentError(
            absl::StrCat("stream ended in the middle of chunk ", chunks_ - 1, " (",
                         current_.id.ShortHex(), "): got ", current_.data.size(), " of ",
                         expected_, " encoded bytes; send every slice of a chunk")));
      }
    } else {
      absl::Status status = HandleFrame();
      if (!status.ok()) Fail(status);
    }
    Advance();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    stop_.store(true);
    Advance();
  }

  void OnDone() override { Unref(); }

 private:
  // Chunks handed to the store together. A deque, so that a verify task can
  // hold a pointer to its chunk while later chunks are appended.
  struct Batch {
    std::deque<EncodedChunk> chunks;
    std::vector<ForwardSpec> forwards;  // parallel to chunks
    bool forwarding = false;
    uint64_t bytes = 0;
    int verifying = 0;  // verify tasks still running for these chunks
  };

  // Runs `fn` on `pool`, keeping the reactor alive and Advance() from
  // finishing the call until it has run. `fn` must decrement tasks_.
  void Spawn(ThreadPool* pool, std::function<void()> fn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++tasks_;
    Ref();
    pool->Schedule([this, fn = std::move(fn)] {
      fn();
      Unref();
    });
  }

  void Fail(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (status_.ok()) status_ = std::move(status);
    stop_.store(true);
  }

  absl::Status HandleFrame() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // gRPC enforces this itself on a storage-only server; with the
    // coordinator on the same port its limit is raised for manifests.
    const size_t frame_bytes = request_.ByteSizeLong();
    if (frame_bytes > c_->limits.max_frame_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "frame of ", frame_bytes, " bytes is larger than max_frame_bytes (",
          c_->limits.max_frame_bytes,
          "); send a chunk's encoded bytes in slices of at most ",
          c_->limits.max_frame_bytes - kFrameSlackBytes, " bytes"));
    }
    if (request_.peers_size() > 0) {
      if (frames_ > 0) {
        return absl::InvalidArgumentError("peers may only be sent on the first frame");
      }
      if (c_->cluster.peers == nullptr || c_->cluster.forward_pool == nullptr) {
        return absl::InvalidArgumentError(
            "this storage node is not part of a cluster, so it forwards to no peer; "
            "send each copy yourself or start the node with --coordinator");
      }
      if (request_.peers_size() > 64) {
        return absl::InvalidArgumentError("more than 64 peers in one stream");
      }
      for (const std::string& peer : request_.peers()) {
        absl::Status ok = c_->cluster.peers->Check(peer);
        if (!ok.ok()) return ok;
        peers_.push_back(peer);
      }
    }
    ++frames_;
    std::string* slice = request_.mutable_data();
    bytes_received_ += slice->size();
    buffered_bytes_ += slice->size();
    if (request_.has_header()) {
      if (assembling_) {
        return absl::InvalidArgumentError(absl::StrCat(
            "chunk ", chunks_ - 1, " (", current_.id.ShortHex(),
            "): a new header arrived after ", current_.data.size(), " of ", expected_,
            " encoded bytes; send all of a chunk's slices before the next header"));
      }
      absl::Status status = StartChunk(request_.header());
      if (!status.ok()) return status;
    } else if (!assembling_) {
      return absl::InvalidArgumentError(
          "continuation frame without a chunk in progress; the first frame of every "
          "chunk carries a header");
    } else if (slice->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", chunks_ - 1, ": empty continuation frame"));
    }
    std::string& data = current_.data;
    if (data.size() + slice->size() > expected_) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", chunks_ - 1, " (", current_.id.ShortHex(),
                       "): slices add up to more than ", "encoded_length ", expected_,
                       " (", data.size() + slice->size(), " bytes so far)"));
    }
    if (data.empty() && slice->size() == expected_) {
      data = std::move(*slice);  // the common one-frame chunk: no copy
    } else {
      if (data.capacity() < expected_) data.reserve(expected_);
      data.append(*slice);
    }
    if (data.size() == expected_) CompleteChunk();
    return absl::OkStatus();
  }

  absl::Status StartChunk(const ChunkHeader& h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const StorageLimits& limits = c_->limits;
    const int ordinal = chunks_;
    if (ordinal >= limits.max_batch_chunks) {
      return absl::InvalidArgumentError(
          absl::StrCat("more than ", limits.max_batch_chunks,
                       " chunks in one stream; split them over several PutChunks calls"));
    }
    absl::StatusOr<ChunkId> id = ParseId(h.id(), absl::StrCat("chunk ", ordinal));
    if (!id.ok()) return id.status();
    const std::string where = absl::StrCat("chunk ", ordinal, " (", id->ShortHex(), ")");
    if (h.missing()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": 'missing' is only meaningful in GetChunks responses"));
    }
    if (!IsKnownCodec(h.codec())) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown codec ", h.codec(),
                       "; use 0 (none), 1 (zstd) or 2 (shuffle+zstd)"));
    }
    if (!ValidElementSize(h.element_size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": element_size ", h.element_size(), " is not 1, 2, 4 or 8"));
    }
    if (h.raw_length() > limits.max_chunk_bytes ||
        h.encoded_length() > limits.max_chunk_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": raw_length ", h.raw_length(), " / encoded_length ",
                       h.encoded_length(), " exceeds the chunk limit of ",
                       limits.max_chunk_bytes, " bytes; use smaller chunks"));
    }
    current_forward_ = ForwardSpec{};
    if (h.copies() > 0 || h.forward_size() > 0) {
      if (h.copies() > 4 || h.copies() > static_cast<uint32_t>(h.forward_size())) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": copies ", h.copies(), " with ", h.forward_size(),
            " forward candidates; copies must be 1..4 and at most the candidates"));
      }
      for (uint32_t f : h.forward()) {
        if (f >= peers_.size()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": forward index ", f,
                                                         " but the stream named ",
                                                         peers_.size(), " peers"));
        }
      }
      current_forward_.forward.assign(h.forward().begin(), h.forward().end());
      current_forward_.copies = h.copies();
    }
    current_ = EncodedChunk{};
    current_.id = *id;
    current_.codec = static_cast<Codec>(h.codec());
    current_.element_size = static_cast<uint8_t>(h.element_size());
    current_.raw_length = h.raw_length();
    expected_ = h.encoded_length();
    assembling_ = true;
    ++chunks_;
    return absl::OkStatus();
  }

  void CompleteChunk() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    assembling_ = false;
    if (open_ == nullptr) open_ = std::make_unique<Batch>();
    Batch* batch = open_.get();
    batch->chunks.push_back(std::move(current_));
    current_ = EncodedChunk{};
    if (current_forward_.copies > 0) batch->forwarding = true;
    batch->forwards.push_back(std::move(current_forward_));
    EncodedChunk* chunk = &batch->chunks.back();
    batch->bytes += chunk->data.size();
    ++batch->verifying;
    const int ordinal = chunks_ - 1;
    // The chunk is not touched by anyone else until its batch has finished
    // verifying, so the task reads it without mu_.
    Spawn(c_->verify_pool, [this, batch, chunk, ordinal] {
      absl::Status status;
      if (!stop_.load()) {
        thread_local std::string scratch;  // decode buffer reused per thread
        status = VerifyChunk(*chunk, &scratch);
      }
      absl::MutexLock lock(&mu_);
      --tasks_;
      --batch->verifying;
      if (!status.ok()) {
        if (c_->metrics != nullptr) c_->metrics->put_verify_failures->Inc();
        Fail(Annotate(status, absl::StrCat("chunk ", ordinal, " (", chunk->id.ShortHex(),
                                           ") rejected, nothing of it stored")));
      }
      Advance();
    });
    if (batch->bytes >= c_->limits.max_put_buffer_bytes) {
      ready_.push_back(std::move(open_));
    }
  }

  void StartPut() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    in_flight_ = std::move(ready_.front());
    ready_.pop_front();
    put_in_flight_ = true;
    // in_flight_ is owned by the tasks until they clear put_in_flight_: the
    // local store and, for a first replica, the forward to peers run at the
    // same time over the same (read-only) chunks.
    auto chunks = std::make_shared<std::vector<EncodedChunk>>();
    chunks->reserve(in_flight_->chunks.size());
    for (EncodedChunk& chunk : in_flight_->chunks) chunks->push_back(std::move(chunk));
    parts_ = in_flight_->forwarding ? 2 : 1;
    Spawn(c_->io_pool, [this, chunks] {
      absl::Status status;
      storage::PutResult result;
      if (stop_.load() || ctx_->IsCancelled()) {
        status = absl::CancelledError("call cancelled");
      } else {
        status = c_->store->Put(*chunks, &result);
      }
      absl::MutexLock lock(&mu_);
      if (status.ok()) {
        stored_ += result.stored;
        already_present_ += result.already_present;
        bytes_written_ += result.bytes_written;
        if (c_->metrics != nullptr) CountPut(*c_->metrics, result);
      } else {
        Fail(Annotate(status, "storing chunks"));
      }
      PartDone();
    });
    if (in_flight_->forwarding) {
      Spawn(c_->cluster.forward_pool, [this, chunks, peers = peers_] {
        absl::Status status;
        ForwardResult result;
        if (stop_.load() || ctx_->IsCancelled()) {
          status = absl::CancelledError("call cancelled");
        } else {
          status = ForwardChunks(*chunks, in_flight_->forwards, peers, c_->cluster.peers,
                                 &result);
        }
        absl::MutexLock lock(&mu_);
        bytes_forwarded_ += result.bytes;
        forward_failovers_ += result.failovers;
        if (!status.ok()) Fail(Annotate(status, "forwarding chunks to peers"));
        PartDone();
      });
    }
  }

  // One of the tasks StartPut spawned is done.
  void PartDone() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    --tasks_;
    if (--parts_ > 0) return;
    put_in_flight_ = false;
    buffered_bytes_ -= in_flight_->bytes;
    in_flight_.reset();
    Advance();
  }

  // The one place that decides what the call does next.
  void Advance() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (!status_.ok() || cancelled_) {
      // Finish only once no pool task still refers to the call's chunks, so
      // that the status the client sees is final.
      if (tasks_ == 0) {
        FinishLocked(status_.ok() ? absl::CancelledError("PutChunks cancelled")
                                  : status_);
      }
      return;
    }
    if (eof_ && open_ != nullptr) ready_.push_back(std::move(open_));
    if (!put_in_flight_ && !ready_.empty() && ready_.front()->verifying == 0) StartPut();
    // Backpressure: one batch being stored plus one being received.
    if (!eof_ && !reading_ && buffered_bytes_ < 2 * c_->limits.max_put_buffer_bytes) {
      reading_ = true;
      StartRead(&request_);
    }
    if (eof_ && ready_.empty() && !put_in_flight_ && tasks_ == 0) {
      response_->set_stored(stored_);
      response_->set_already_present(already_present_);
      response_->set_bytes_received(bytes_received_);
      response_->set_bytes_written(bytes_written_);
      response_->set_bytes_forwarded(bytes_forwarded_);
      response_->set_forward_failovers(forward_failovers_);
      FinishLocked(absl::OkStatus());
    }
  }

  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    finished_ = true;
    stop_.store(true);
    Finish(ToGrpcStatus(status));
  }

  const Context* const c_;
  grpc::CallbackServerContext* const ctx_;
  PutChunksResponse* const response_;
  // Set when the call is failing or finished: pool tasks skip their work.
  std::atomic<bool> stop_{false};

  absl::Mutex mu_;
  PutChunksRequest request_ ABSL_GUARDED_BY(mu_);  // target of StartRead
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool eof_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  int tasks_ ABSL_GUARDED_BY(mu_) = 0;

  // The chunk being assembled from slices.
  bool assembling_ ABSL_GUARDED_BY(mu_) = false;
  EncodedChunk current_ ABSL_GUARDED_BY(mu_);
  uint64_t expected_ ABSL_GUARDED_BY(mu_) = 0;
  int chunks_ ABSL_GUARDED_BY(mu_) = 0;  // chunk headers seen

  std::unique_ptr<Batch> open_ ABSL_GUARDED_BY(mu_);               // receiving
  std::deque<std::unique_ptr<Batch>> ready_ ABSL_GUARDED_BY(mu_);  // full, not stored
  bool put_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<Batch> in_flight_;  // see StartPut()
  uint64_t buffered_bytes_ ABSL_GUARDED_BY(mu_) = 0;

  uint32_t stored_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t already_present_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_received_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_written_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_forwarded_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t forward_failovers_ ABSL_GUARDED_BY(mu_) = 0;

  // Cluster write path: the stream's peers and the chunk being assembled's
  // forward list.
  int frames_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> peers_ ABSL_GUARDED_BY(mu_);
  ForwardSpec current_forward_ ABSL_GUARDED_BY(mu_);
  int parts_ ABSL_GUARDED_BY(mu_) = 0;  // StartPut tasks still running
};

// ---------------------------------------------------------------------------
// GetChunks: read ahead from the store (io_pool) -> write frames in order.
// Same locking discipline as PutReactor.
class GetReactor final : public grpc::ServerWriteReactor<GetChunksResponse>,
                         public RefCounted<GetReactor> {
 public:
  GetReactor(const Context* c, grpc::CallbackServerContext* ctx,
             const GetChunksRequest* request)
      : c_(c), ctx_(ctx) {
    c_->service->CallStarted();
    absl::StatusOr<std::vector<ChunkId>> ids = ParseIds(request->ids(), c_->limits);
    absl::MutexLock lock(&mu_);
    if (!ids.ok()) {
      FinishLocked(ids.status());
      return;
    }
    ids_ = std::move(*ids);
    Advance();
  }
  ~GetReactor() override { c_->service->CallEnded(); }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) Fail(absl::CancelledError("GetChunks: the client went away"));
    Advance();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    stop_.store(true);
    Advance();
  }

  void OnDone() override { Unref(); }

 private:
  void Fail(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (status_.ok()) status_ = std::move(status);
    stop_.store(true);
  }

  void StartFetch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const size_t begin = next_fetch_;
    const size_t end = std::min(ids_.size(), begin + kGetFetchBatch);
    next_fetch_ = end;
    fetching_ = true;
    ++tasks_;
    Ref();
    // ids_ is immutable once the call has started, so the task reads it
    // without mu_.
    c_->io_pool->Schedule([this, begin, end] {
      std::vector<absl::StatusOr<EncodedChunk>> results;
      if (!stop_.load() && !ctx_->IsCancelled()) {
        results = c_->store->Get(absl::MakeConstSpan(ids_).subspan(begin, end - begin));
      }
      {
        absl::MutexLock lock(&mu_);
        --tasks_;
        fetching_ = false;
        if (!stop_.load()) {
          if (results.size() != end - begin) {
            Fail(absl::InternalError(absl::StrCat("store returned ", results.size(),
                                                  " results for ", end - begin, " ids")));
          } else {
            for (auto& r : results) {
              if (r.ok()) buffered_bytes_ += r->data.size();
              if (c_->metrics != nullptr) CountRead(*c_->metrics, r);
              fetched_.push_back(std::move(r));
            }
          }
        }
        Advance();
      }
      Unref();
    });
  }

  // Fills response_ with the next frame, if one is ready. Returns false when
  // nothing can be sent yet.
  bool NextFrame() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    response_.Clear();
    if (!sending_) {
      if (fetched_.empty()) return false;
      absl::StatusOr<EncodedChunk> next = std::move(fetched_.front());
      fetched_.pop_front();
      const ChunkId& id = ids_[next_send_++];
      if (!next.ok()) {
        if (absl::IsNotFound(next.status())) {
          ChunkHeader* header = response_.mutable_header();
          header->set_id(std::string(id.AsBytes()));
          header->set_missing(true);
          return true;
        }
        Fail(
            Annotate(next.status(),
                     absl::StrCat("chunk ", id.ToHex(),
                                  " cannot be read here; read it from another replica")));
        return false;
      }
      current_ = std::move(*next);
      sending_ = true;
      offset_ = 0;
      total_ = current_.data.size();
      ChunkHeader* header = response_.mutable_header();
      header->set_id(std::string(current_.id.AsBytes()));
      header->set_codec(static_cast<uint32_t>(current_.codec));
      header->set_element_size(current_.element_size);
      header->set_raw_length(current_.raw_length);
      header->set_encoded_length(static_cast<uint32_t>(total_));
    }
    const size_t max_slice = c_->limits.max_frame_bytes - kFrameSlackBytes;
    const size_t n = std::min(max_slice, total_ - offset_);
    if (offset_ == 0 && n == total_) {
      response_.set_data(std::move(current_.data));  // one-frame chunk: no copy
    } else {
      response_.set_data(current_.data.data() + offset_, n);
    }
    offset_ += n;
    if (offset_ == total_) {
      sending_ = false;
      buffered_bytes_ -= total_;
      current_ = EncodedChunk{};
    }
    return true;
  }

  void Advance() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (status_.ok() && !cancelled_ && !writing_) {
      if (NextFrame()) {
        writing_ = true;
        StartWrite(&response_);
      }
    }
    if (!status_.ok() || cancelled_) {
      if (!writing_ && tasks_ == 0) {
        FinishLocked(status_.ok() ? absl::CancelledError("GetChunks cancelled")
                                  : status_);
      }
      return;
    }
    if (!fetching_ && next_fetch_ < ids_.size() && buffered_bytes_ < kGetPrefetchBytes) {
      StartFetch();
    }
    if (!writing_ && !sending_ && next_send_ == ids_.size()) {
      FinishLocked(absl::OkStatus());
    }
  }

  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    finished_ = true;
    stop_.store(true);
    Finish(ToGrpcStatus(status));
  }

  const Context* const c_;
  grpc::CallbackServerContext* const ctx_;
  std::vector<ChunkId> ids_;  // set once in the constructor
  std::atomic<bool> stop_{false};

  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool fetching_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  int tasks_ ABSL_GUARDED_BY(mu_) = 0;
  size_t next_fetch_ ABSL_GUARDED_BY(mu_) = 0;  // first id not yet fetched
  size_t next_send_ ABSL_GUARDED_BY(mu_) = 0;   // first id not yet started
  std::deque<absl::StatusOr<EncodedChunk>> fetched_ ABSL_GUARDED_BY(mu_);
  uint64_t buffered_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // The chunk being sent, slice by slice.
  bool sending_ ABSL_GUARDED_BY(mu_) = false;
  EncodedChunk current_ ABSL_GUARDED_BY(mu_);
  size_t offset_ ABSL_GUARDED_BY(mu_) = 0;
  size_t total_ ABSL_GUARDED_BY(mu_) = 0;
  GetChunksResponse response_ ABSL_GUARDED_BY(mu_);  // target of StartWrite
};

}  // namespace

absl::Status ValidateLimits(const StorageLimits& limits) {
  if (limits.max_chunk_bytes == 0 || limits.max_chunk_bytes > kMaxChunkRawBytes) {
    return absl::InvalidArgumentError(absl::StrCat("max_chunk_bytes ",
                                                   limits.max_chunk_bytes,
                                                   " must be in 1..", kMaxChunkRawBytes));
  }
  if (limits.max_frame_bytes <= kFrameSlackBytes ||
      limits.max_frame_bytes > static_cast<uint32_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_frame_bytes ", limits.max_frame_bytes, " must exceed the ",
                     kFrameSlackBytes, "-byte header slack and fit gRPC's int limit"));
  }
  if (limits.max_batch_chunks < 1) {
    return absl::InvalidArgumentError("max_batch_chunks must be at least 1");
  }
  if (limits.max_put_buffer_bytes < limits.max_chunk_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_put_buffer_bytes ", limits.max_put_buffer_bytes,
                     " must be at least max_chunk_bytes ", limits.max_chunk_bytes));
  }
  return absl::OkStatus();
}

StorageServiceImpl::StorageServiceImpl(storage::ChunkStore* store,
                                       ThreadPool* verify_pool, ThreadPool* io_pool,
                                       StorageLimits limits, ClusterHooks cluster)
    : context_{store, verify_pool, io_pool, limits, this, std::move(cluster)} {}

StorageServiceImpl::~StorageServiceImpl() = default;

bool StorageServiceImpl::WaitIdle(absl::Time deadline) {
  return calls_.WaitIdle(deadline);
}

int StorageServiceImpl::TEST_ActiveCalls() { return calls_.active(); }

grpc::ServerReadReactor<PutChunksRequest>* StorageServiceImpl::PutChunks(
    grpc::CallbackServerContext* ctx, PutChunksResponse* response) {
  return new PutReactor(&context_, ctx, response);
}

grpc::ServerWriteReactor<GetChunksResponse>* StorageServiceImpl::GetChunks(
    grpc::CallbackServerContext* ctx, const GetChunksRequest* request) {
  return new GetReactor(&context_, ctx, request);
}

grpc::ServerUnaryReactor* StorageServiceImpl::HasChunks(
    grpc::CallbackServerContext* ctx, const snapback::v1::HasChunksRequest* request,
    snapback::v1::HasChunksResponse* response) {
  absl::StatusOr<std::vector<ChunkId>> ids = ParseIds(request->ids(), context_.limits);
  if (!ids.ok()) return rpc::FinishNow(ctx, ids.status());
  // The index lookup may touch disk: not on a gRPC callback thread.
  return rpc::RunOnPool(ctx, context_.io_pool, &calls_, "HasChunks",
                        [this, response, ids = std::move(*ids)]() -> absl::Status {
                          SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> present,
                                                    context_.store->Has(ids));
                          for (bool p : present) response->add_present(p);
                          return absl::OkStatus();
                        });
}

grpc::ServerUnaryReactor* StorageServiceImpl::DeleteChunks(
    grpc::CallbackServerContext* ctx, const snapback::v1::DeleteChunksRequest* request,
    snapback::v1::DeleteChunksResponse* response) {
  absl::StatusOr<std::vector<ChunkId>> ids = ParseIds(request->ids(), context_.limits);
  if (!ids.ok()) return rpc::FinishNow(ctx, ids.status());
  // A synced index write: never on a gRPC callback thread.
  return rpc::RunOnPool(ctx, context_.io_pool, &calls_, "DeleteChunks",
                        [this, response, ids = std::move(*ids)]() -> absl::Status {
                          absl::StatusOr<int> deleted = context_.store->Delete(ids);
                          if (!deleted.ok()) {
                            return Annotate(deleted.status(), "deleting chunks");
                          }
                          response->set_deleted(static_cast<uint32_t>(*deleted));
                          return absl::OkStatus();
                        });
}

namespace {

// Waits so that the bytes copied by ReplicateChunks on this node stay under
// `rate` bytes per second overall (0 = unlimited).
void PaceRepair(uint64_t bytes, uint64_t rate) {
  if (rate == 0) return;
  static absl::Mutex mu(absl::kConstInit);
  static absl::Time next_free = absl::InfinitePast();
  absl::Time start;
  {
    absl::MutexLock lock(&mu);
    const absl::Time now = absl::Now();
    start = std::max(now, next_free);
    next_free =
        start + absl::Seconds(static_cast<double>(bytes) / static_cast<double>(rate));
  }
  const absl::Duration wait = start - absl::Now();
  if (wait > absl::ZeroDuration()) absl::SleepFor(std::min(wait, absl::Seconds(30)));
}

}  // namespace

grpc::ServerUnaryReactor* StorageServiceImpl::ReplicateChunks(
    grpc::CallbackServerContext* ctx, const snapback::v1::ReplicateChunksRequest* request,
    snapback::v1::ReplicateChunksResponse* response) {
  absl::StatusOr<std::vector<ChunkId>> ids = ParseIds(request->ids(), context_.limits);
  if (!ids.ok()) return rpc::FinishNow(ctx, ids.status());
  const ClusterHooks& cluster = context_.cluster;
  if (cluster.peers == nullptr || cluster.forward_pool == nullptr) {
    return rpc::FinishNow(ctx, absl::FailedPreconditionError(
                                   "this storage node is not part of a cluster; start it "
                                   "with --coordinator to copy chunks from peers"));
  }
  std::vector<std::string> sources;
  for (const std::string& src : request->sources()) {
    if (std::find(sources.begin(), sources.end(), src) == sources.end())
      sources.push_back(src);
  }
  if (sources.size() > 16) {
    return rpc::FinishNow(ctx,
                          absl::InvalidArgumentError(
                              "more than 16 distinct sources in one ReplicateChunks"));
  }
  for (const std::string& src : sources) {
    absl::Status ok = cluster.peers->Check(src);
    if (!ok.ok()) return rpc::FinishNow(ctx, ok);
  }
  // Blocks on peers: the forward pool, not io_pool.
  return rpc::RunOnPool(
      ctx, cluster.forward_pool, &calls_, "ReplicateChunks",
      [this, response, ids = std::move(*ids),
       sources = std::move(sources)]() -> absl::Status {
        const ClusterHooks& cluster = context_.cluster;
        SNAPBACK_ASSIGN_OR_RETURN(std::vector<bool> have, context_.store->Has(ids));
        std::vector<ChunkId> todo;
        for (size_t i = 0; i < ids.size(); ++i) {
          if (have[i]) {
            response->set_already_present(response->already_present() + 1);
          } else {
            todo.push_back(ids[i]);
          }
        }
        for (const std::string& src : sources) {
          if (todo.empty()) break;
          absl::StatusOr<internal_client::StorageClient*> client =
              cluster.peers->Client(src);
          if (!client.ok()) continue;
          std::vector<ChunkId> failed;
          // Small groups, so one bad record costs only its group a retry
          // elsewhere and pacing stays smooth.
          for (size_t b = 0; b < todo.size(); b += 8) {
            absl::Span<const ChunkId> part = absl::MakeConstSpan(todo).subspan(
                b, std::min<size_t>(8, todo.size() - b));
            // Verified by the client (decode + SHA-256) before it is stored.
            absl::StatusOr<std::vector<absl::StatusOr<EncodedChunk>>> got =
                (*client)->GetEach(part);
            if (!got.ok()) {
              failed.insert(failed.end(), part.begin(), part.end());
              continue;
            }
            std::vector<EncodedChunk> good;
            uint64_t bytes = 0;
            for (size_t k = 0; k < part.size(); ++k) {
              if ((*got)[k].ok()) {
                bytes += (*got)[k]->data.size();
                good.push_back(*std::move((*got)[k]));
              } else {
                failed.push_back(part[k]);
              }
            }
            if (good.empty()) continue;
            PaceRepair(bytes, cluster.repair_bytes_per_sec);
            storage::PutResult result;
            SNAPBACK_RETURN_IF_ERROR(context_.store->Put(good, &result));
            if (context_.metrics != nullptr) CountPut(*context_.metrics, result);
            response->set_copied(response->copied() + static_cast<uint32_t>(good.size()));
            response->set_bytes(response->bytes() + bytes);
          }
          todo = std::move(failed);
        }
        for (const ChunkId& id : todo)
          response->add_failed_ids(std::string(id.AsBytes()));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* StorageServiceImpl::ListChunks(
    grpc::CallbackServerContext* ctx, const snapback::v1::ListChunksRequest* request,
    snapback::v1::ListChunksResponse* response) {
  if (!request->start_after().empty() && request->start_after().size() != 32) {
    return rpc::FinishNow(ctx, absl::InvalidArgumentError(
                                   "start_after must be empty or a 32-byte chunk id"));
  }
  size_t limit = request->limit() == 0 ? 4096 : request->limit();
  limit = std::min<size_t>(limit, static_cast<size_t>(context_.limits.max_batch_chunks));
  return rpc::RunOnPool(ctx, context_.io_pool, &calls_, "ListChunks",
                        [this, request, response, limit]() -> absl::Status {
                          std::vector<std::pair<ChunkId, uint32_t>> out;
                          SNAPBACK_ASSIGN_OR_RETURN(
                              bool done,
                              context_.store->List(request->start_after(), limit, &out));
                          for (const auto& [id, len] : out) {
                            response->add_ids(std::string(id.AsBytes()));
                            response->add_raw_lengths(len);
                          }
                          response->set_done(done);
                          return absl::OkStatus();
                        });
}

grpc::ServerUnaryReactor* StorageServiceImpl::VerifyChunks(
    grpc::CallbackServerContext* ctx, const snapback::v1::VerifyChunksRequest* request,
    snapback::v1::VerifyChunksResponse* response) {
  absl::StatusOr<std::vector<ChunkId>> ids = ParseIds(request->ids(), context_.limits);
  if (!ids.ok()) return rpc::FinishNow(ctx, ids.status());
  return rpc::RunOnPool(ctx, context_.io_pool, &calls_, "VerifyChunks",
                        [this, response, ids = std::move(*ids)]() -> absl::Status {
                          // The store quarantines bad copies itself (dropped from the
                          // index, listed in LostChunks()), so they are never served
                          // again and repair can store good bytes.
                          storage::ScrubResult scrub =
                              ids.empty() ? context_.store->Scrub()
                                          : context_.store->ScrubChunks(ids);
                          response->set_checked(scrub.checked);
                          std::vector<ChunkId> bad;
                          for (const auto& [id, why] : scrub.bad) bad.push_back(id);
                          for (const ChunkId& id : scrub.missing) {
                            response->add_missing_ids(std::string(id.AsBytes()));
                          }
                          for (const ChunkId& id : bad)
                            response->add_bad_ids(std::string(id.AsBytes()));
                          return absl::OkStatus();
                        });
}

grpc::ServerUnaryReactor* StorageServiceImpl::PutCatalog(
    grpc::CallbackServerContext* ctx, const snapback::v1::PutCatalogRequest* request,
    snapback::v1::PutCatalogResponse* response) {
  (void)response;
  if (context_.cluster.catalog == nullptr) {
    return rpc::FinishNow(ctx,
                          absl::FailedPreconditionError(
                              "this storage node keeps no catalogue (not in a cluster)"));
  }
  return rpc::RunOnPool(ctx, context_.io_pool, &calls_, "PutCatalog", [this, request] {
    return context_.cluster.catalog->Put(request->key(), request->value());
  });
}

grpc::ServerUnaryReactor* StorageServiceImpl::ListCatalog(
    grpc::CallbackServerContext* ctx, const snapback::v1::ListCatalogRequest* request,
    snapback::v1::ListCatalogResponse* response) {
  if (context_.cluster.catalog == nullptr) {
    return rpc::FinishNow(ctx,
                          absl::FailedPreconditionError(
                              "this storage node keeps no catalogue (not in a cluster)"));
  }
  return rpc::RunOnPool(
      ctx, context_.io_pool, &calls_, "ListCatalog",
      [this, request, response]() -> absl::Status {
        std::vector<std::pair<std::string, std::string>> out;
        SNAPBACK_ASSIGN_OR_RETURN(
            bool done, context_.cluster.catalog->List(
                           request->prefix(), request->start_after(), 8u << 20, &out));
        for (auto& [k, v] : out) {
          snapback::v1::CatalogEntry* e = response->add_entries();
          e->set_key(std::move(k));
          e->set_value(std::move(v));
        }
        response->set_done(done);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* StorageServiceImpl::DeleteCatalog(
    grpc::CallbackServerContext* ctx, const snapback::v1::DeleteCatalogRequest* request,
    snapback::v1::DeleteCatalogResponse* response) {
  (void)response;
  if (context_.cluster.catalog == nullptr) {
    return rpc::FinishNow(ctx,
                          absl::FailedPreconditionError(
                              "this storage node keeps no catalogue (not in a cluster)"));
  }
  return rpc::RunOnPool(ctx, context_.io_pool, &calls_, "DeleteCatalog", [this, request] {
    std::vector<std::string> keys(request->keys().begin(), request->keys().end());
    return context_.cluster.catalog->Delete(keys);
  });
}

grpc::ServerUnaryReactor* StorageServiceImpl::Stat(
    grpc::CallbackServerContext* ctx, const snapback::v1::StatRequest* request,
    snapback::v1::StatResponse* response) {
  (void)request;
  return rpc::RunOnPool(ctx, context_.io_pool, &calls_, "Stat", [this, response] {
    storage::ChunkStoreStats s = context_.store->Stats();
    response->set_chunks(s.chunks);
    response->set_raw_bytes(s.raw_bytes);
    response->set_encoded_bytes(s.encoded_bytes);
    response->set_live_bytes(s.live_bytes);
    response->set_file_bytes(s.file_bytes);
    response->set_segments(s.segments);
    response->set_puts(s.puts);
    response->set_dedup_hits(s.dedup_hits);
    response->set_group_commits(s.group_commits);
    response->set_compactions(s.compactions);
    response->set_compacted_bytes(s.compacted_bytes);
    response->set_io_mode(s.io_mode);
    response->set_capacity_bytes(s.capacity_bytes);
    response->set_free_bytes(s.free_bytes);
    response->set_full(s.full);
    response->set_lost_chunks(s.lost_chunks);
    response->set_reserve_bytes(s.reserve_bytes);
    response->set_min_free_bytes(s.min_free_bytes);
    return absl::OkStatus();
  });
}

}  // namespace snapback::server
