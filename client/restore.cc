// CheckpointerImpl's read side: LatestStep(), Restore() and RestoreInto().
//
// A restore reads this rank's manifest of the step, lays out where every
// chunk goes (the caller's buffers or library-owned bytes, all checked
// before a byte is written), fetches the chunks in parallel from the storage
// nodes the coordinator names (the next replica when one is missing or
// fails verification), and makes the restored chunks the base of the next
// incremental save.
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/checkpointer_impl.h"
#include "client/placed_writer.h"
#include "common/codec.h"
#include "common/hash.h"
#include "common/status_macros.h"

namespace snapback::internal_client {
namespace {

namespace v1 = ::snapback::v1;

// One chunk to fetch: its id, where its decoded bytes go, and its key in the
// incremental base.
struct Fetch {
  ChunkId id;
  char* dst;
  uint32_t length;
  std::string key;
};

// Lays out the manifest `resp` of `step` into `result` and returns the
// chunks to fetch, each pointing into result's bytes or the caller's
// `targets`. Caller buffers are matched by name: every one must be used and
// match exactly (dtype, shape, data), and all of that is checked before a
// byte is written: INVALID_ARGUMENT otherwise. DATA_LOSS when a manifest's
// chunks do not cover exactly its item's bytes. `result` must not move
// until the fetches are done (they point into it).
absl::StatusOr<std::vector<Fetch>> PlanFetches(
    const v1::GetManifestResponse& resp, absl::Span<const MutableTensorView> targets,
    int64_t step, RestoreResult* result) {
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
    result->bytes += byte_length;
    return absl::OkStatus();
  };
  absl::flat_hash_map<std::string, const MutableTensorView*> by_name;
  for (const MutableTensorView& t : targets) {
    if (!by_name.emplace(t.name, &t).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("two restore targets named '", t.name, "'"));
    }
  }
  result->tensors.resize(resp.manifest().tensors_size());
  std::vector<char*> tensor_dst(resp.manifest().tensors_size());
  for (int i = 0; i < resp.manifest().tensors_size(); ++i) {
    const v1::TensorEntry& t = resp.manifest().tensors(i);
    RestoredTensor& out = result->tensors[i];
    out.name = t.name();
    SNAPBACK_ASSIGN_OR_RETURN(out.dtype, ParseDType(t.dtype()));
    out.shape.assign(t.shape().begin(), t.shape().end());
    out.global_shape.assign(t.global_shape().begin(), t.global_shape().end());
    out.global_offset.assign(t.global_offset().begin(), t.global_offset().end());
    auto target = by_name.find(t.name());
    if (target == by_name.end()) {
      if (!targets.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("step ", step, " has tensor '", t.name(),
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
          "restore target '", t.name(), "' does not match step ", step, ": saved ",
          t.dtype(), " of shape [", absl::StrJoin(out.shape, ","), "], target ",
          DTypeName(m.dtype), " of shape [", absl::StrJoin(m.shape, ","), "]",
          no_data ? " with no data" : ""));
    }
    tensor_dst[i] = static_cast<char*>(m.data);
    by_name.erase(target);
  }
  if (!by_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step ", step, " has no tensor named '", by_name.begin()->first, "'"));
  }
  for (int i = 0; i < resp.manifest().tensors_size(); ++i) {
    const v1::TensorEntry& t = resp.manifest().tensors(i);
    SNAPBACK_RETURN_IF_ERROR(
        plan(false, t.name(), t.byte_length(), t.chunks(), tensor_dst[i]));
  }
  result->blobs.resize(resp.manifest().blobs_size());
  for (int i = 0; i < resp.manifest().blobs_size(); ++i) {
    const v1::BlobEntry& b = resp.manifest().blobs(i);
    result->blobs[i].name = b.name();
    result->blobs[i].bytes.resize(b.byte_length());
    SNAPBACK_RETURN_IF_ERROR(
        plan(true, b.name(), b.byte_length(), b.chunks(), result->blobs[i].bytes.data()));
  }
  return fetches;
}

// Fetches every chunk of `fetches` into place on up to `threads` threads:
// each takes batches of chunks, reads them from the first of `endpoints`,
// decodes straight into the destination and checks the SHA-256 of the
// decoded bytes; a chunk that is missing or fails moves on to the next
// replica. Fills fast[i] (xxh3-128 of chunk i) for the incremental base.
// DATA_LOSS naming the first chunk with no good copy; its bytes (and those
// of every other such chunk) are left zeroed: no unverified byte is ever
// left in a result. Waits for every fetch.
absl::Status FetchAll(
    Connection* client,
    const std::function<std::vector<std::string>(const ChunkId&)>& candidates,
    std::vector<Fetch>& fetches, int threads, int64_t step,
    std::vector<XXH128_hash_t>* fast) {
  constexpr size_t kFetchBatch = 8;
  std::atomic<size_t> next{0};
  absl::Mutex err_mu;
  absl::Status first_error;
  fast->resize(fetches.size());
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
    (*fast)[i] = XXH3_128bits(f.dst, f.length);
    return absl::OkStatus();
  };
  auto worker = [&] {
    for (size_t begin; (begin = next.fetch_add(kFetchBatch)) < fetches.size();) {
      std::vector<size_t> todo;
      std::map<size_t, std::vector<std::string>> where;  // candidates per chunk
      std::map<size_t, size_t> pos;                      // next candidate
      for (size_t i = begin; i < std::min(fetches.size(), begin + kFetchBatch); ++i) {
        todo.push_back(i);
        where[i] = candidates(fetches[i].id);
      }
      absl::Status last;
      std::vector<size_t> no_copy;
      std::map<std::string, std::vector<ChunkId>> bad;  // endpoint -> bad copies
      // A chunk whose every candidate failed while some were unreachable
      // (UNAVAILABLE: a node restarting, a connection being re-made) goes
      // round its candidates again, up to kRounds times, 400 ms apart (gRPC
      // re-dials a lost node at most every second: rpc/channel.cc).
      constexpr int kRounds = 5;
      std::map<size_t, int> rounds;
      std::map<size_t, bool> unreachable;
      while (!todo.empty()) {
        std::map<std::string, std::vector<size_t>> groups;
        bool paused = false;
        for (size_t i : todo) {
          if (pos[i] >= where[i].size() && unreachable[i] && ++rounds[i] < kRounds) {
            if (!paused) absl::SleepFor(absl::Milliseconds(400));
            paused = true;
            pos[i] = 0;
            unreachable[i] = false;
          }
          if (pos[i] >= where[i].size()) {
            no_copy.push_back(i);
          } else {
            groups[where[i][pos[i]++]].push_back(i);
          }
        }
        todo.clear();
        for (auto& [ep, group] : groups) {
          auto storage = client->Storage(ep);
          if (!storage.ok()) {
            last = storage.status();
            todo.insert(todo.end(), group.begin(), group.end());
            continue;
          }
          std::vector<ChunkId> ids;
          for (size_t i : group) ids.push_back(fetches[i].id);
          auto got = (*storage)->GetEach(ids);
          for (size_t k = 0; k < group.size(); ++k) {
            const size_t i = group[k];
            absl::Status s;
            if (got.ok()) {
              s = place(i, (*got)[k]);
            } else if (absl::IsUnavailable(got.status()) ||
                       absl::IsDeadlineExceeded(got.status())) {
              s = got.status();  // the node is unreachable: no per-chunk retry
            } else {
              // The node failed the whole call (e.g. one corrupt record ends
              // the stream): ask for each chunk alone so the good ones still
              // come from here.
              auto one = (*storage)->GetEach({fetches[i].id});
              s = one.ok() ? place(i, (*one)[0]) : one.status();
            }
            if (!s.ok()) {
              last = s;
              if (absl::IsDataLoss(s) && !ep.empty()) bad[ep].push_back(fetches[i].id);
              if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s))
                unreachable[i] = true;
              todo.push_back(i);
            }
          }
        }
      }
      // A replica that served bad bytes is reported, so it is re-verified
      // and repaired (cluster only; best effort).
      for (const auto& [ep, ids] : bad) client->ReportBadReplica(ep, ids);
      if (!no_copy.empty()) {
        // Never leave unverified bytes behind.
        for (size_t i : no_copy) std::memset(fetches[i].dst, 0, fetches[i].length);
        absl::MutexLock lock(&err_mu);
        if (first_error.ok()) {
          first_error = absl::DataLossError(absl::StrCat(
              "chunk ", fetches[no_copy[0]].id.ShortHex(), " (", fetches[no_copy[0]].key,
              ") of step ", step, " has no good copy on ", where[no_copy[0]].size(),
              " storage node(s) (last error: ", last.message(),
              "); restore an older step with Restore(step)"));
        }
      }
    }
  };
  std::vector<std::thread> workers;
  const int n = std::max(
      1, std::min<int>(threads, (fetches.size() + kFetchBatch - 1) / kFetchBatch));
  for (int t = 0; t < n; ++t) workers.emplace_back(worker);
  for (auto& t : workers) t.join();
  return first_error;
}

}  // namespace

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
  // A cluster: each chunk's candidates by placement (the replication only
  // orders the likely holders first; every node is tried before giving up).
  const ClusterView view = ClusterView::From(resp.nodes(), 2);
  const char* domain_env = std::getenv("SNAPBACK_FAILURE_DOMAIN");
  const std::string my_domain = domain_env != nullptr ? domain_env : "";
  auto candidates = [&](const ChunkId& id) {
    return view.empty() ? endpoints : ReadCandidates(view, id, my_domain);
  };

  RestoreResult result;
  result.step = *step;
  // Lay out destinations, then fetch every chunk straight into place.
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<Fetch> fetches,
                            PlanFetches(resp, targets, *step, &result));
  std::vector<XXH128_hash_t> fast;
  SNAPBACK_RETURN_IF_ERROR(FetchAll(client_.get(), candidates, fetches,
                                    options_.restore_threads, *step, &fast));

  // The restored state is the base of the next incremental save.
  ChunkBase base;
  for (size_t i = 0; i < fetches.size(); ++i)
    base[fetches[i].key] = {fast[i], fetches[i].id};
  pipeline_.ResetBase(std::move(base));
  {
    absl::MutexLock lock(&mu_);
    last_step_ = std::max(last_step_, *step);
  }
  result.elapsed = absl::Now() - start;
  return result;
}

}  // namespace snapback::internal_client
