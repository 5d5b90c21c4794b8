// CheckpointVerifier. See verify.h.
#include "coordinator/verify.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace snapback::coordinator {

absl::StatusOr<std::unique_ptr<CheckpointVerifier>> CheckpointVerifier::Plan(
    CoordinatorStore* store, const v1::VerifyCheckpointRequest& req,
    VerifyOptions options) {
  if (req.step() < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step ", req.step(), " is not a step: pass a committed step, or -1 for all"));
  }
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<VerifyTarget> targets,
                            store->VerifyTargets(req.job_id(), req.step()));
  return std::unique_ptr<CheckpointVerifier>(
      new CheckpointVerifier(store, std::move(targets), options));
}

CheckpointVerifier::CheckpointVerifier(CoordinatorStore* store,
                                       std::vector<VerifyTarget> targets,
                                       VerifyOptions options)
    : store_(store), options_(options), targets_(std::move(targets)) {
  absl::flat_hash_set<ChunkId> distinct;
  for (const VerifyTarget& t : targets_) {
    for (const ChunkUse& c : t.chunks) {
      if (!distinct.insert(c.id).second) continue;
      progress_.set_chunks_total(progress_.chunks_total() + 1);
      progress_.set_bytes_total(progress_.bytes_total() + c.length);
    }
  }
  progress_.set_checkpoints_total(static_cast<int32_t>(targets_.size()));
  progress_.set_current_step(targets_.empty() ? -1 : targets_[0].checkpoint.step());
}

std::string CheckpointVerifier::Where(const VerifyTarget& t, const ChunkUse& c) {
  const std::string& name = t.entries[c.entry];
  const bool blob = absl::StartsWith(name, "blob:");
  return absl::StrCat("rank ", c.rank, blob ? " blob \"" : " tensor \"",
                      blob ? name.substr(5) : name, "\" chunk ", c.index, " (id ",
                      c.id.ShortHex(), ")");
}

absl::StatusOr<bool> CheckpointVerifier::Step() {
  if (current_ == targets_.size()) return true;
  VerifyTarget& t = targets_[current_];
  progress_.set_current_step(t.checkpoint.step());
  std::vector<ChunkId> ids;
  std::vector<const ChunkUse*> uses;
  uint64_t bytes = 0;
  while (next_chunk_ < t.chunks.size() && ids.size() < options_.batch_chunks &&
         bytes < options_.batch_bytes) {
    const ChunkUse& c = t.chunks[next_chunk_++];
    if (checked_.contains(c.id)) continue;  // verified for a newer checkpoint
    ids.push_back(c.id);
    uses.push_back(&c);
    bytes += c.length;
  }
  if (!ids.empty()) {
    SNAPBACK_ASSIGN_OR_RETURN(std::vector<ChunkCheck> checks,
                              store_->tier()->Verify(ids, options_.node_deadline));
    if (checks.size() != ids.size()) {
      return absl::InternalError(absl::StrCat("the storage tier answered ", checks.size(),
                                              " verdicts for ", ids.size(), " chunks"));
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      progress_.set_chunks_verified(progress_.chunks_verified() + 1);
      progress_.set_bytes_verified(progress_.bytes_verified() + uses[i]->length);
      if (checks[i].verdict == ChunkCheck::kRepaired) {
        progress_.set_repaired_chunks(progress_.repaired_chunks() + 1);
      }
      if (checks[i].verdict == ChunkCheck::kBad) {
        progress_.set_bad_chunks_found(progress_.bad_chunks_found() + 1);
        if (progress_.bad_chunks_size() < options_.max_listed_bad) {
          v1::BadChunk* b = progress_.add_bad_chunks();
          const std::string& name = t.entries[uses[i]->entry];
          b->set_step(t.checkpoint.step());
          b->set_rank(uses[i]->rank);
          b->set_blob(absl::StartsWith(name, "blob:"));
          b->set_entry(b->blob() ? name.substr(5) : name);
          b->set_chunk_index(uses[i]->index);
          b->set_id(std::string(ids[i].AsBytes()));
          b->set_error(checks[i].detail);
        }
      }
      checked_[ids[i]] = std::move(checks[i]);
    }
  }
  if (next_chunk_ < t.chunks.size()) return false;
  SNAPBACK_RETURN_IF_ERROR(FinishCheckpoint());
  ++current_;
  next_chunk_ = 0;
  if (current_ < targets_.size()) {
    progress_.set_current_step(targets_[current_].checkpoint.step());
    return false;
  }
  progress_.set_current_step(-1);
  progress_.set_final(true);
  for (const v1::CheckpointVerification& r : results_) *progress_.add_results() = r;
  return true;
}

absl::Status CheckpointVerifier::FinishCheckpoint() {
  VerifyTarget& t = targets_[current_];
  v1::CheckpointVerification r;
  r.set_step(t.checkpoint.step());
  const ChunkUse* first_bad = nullptr;
  const ChunkUse* first_repaired = nullptr;
  const ChunkUse* first_unverified = nullptr;
  for (const ChunkUse& c : t.chunks) {
    r.set_chunks(r.chunks() + 1);
    r.set_bytes(r.bytes() + c.length);
    switch (checked_.at(c.id).verdict) {
      case ChunkCheck::kGood:
        break;
      case ChunkCheck::kRepaired:
        r.set_repaired_chunks(r.repaired_chunks() + 1);
        if (first_repaired == nullptr) first_repaired = &c;
        break;
      case ChunkCheck::kBad:
        r.set_bad_chunks(r.bad_chunks() + 1);
        if (first_bad == nullptr) first_bad = &c;
        break;
      case ChunkCheck::kUnverified:
        r.set_unverified_chunks(r.unverified_chunks() + 1);
        if (first_unverified == nullptr) first_unverified = &c;
        break;
    }
  }
  auto more = [](uint64_t n, absl::string_view what) {
    return n > 1 ? absl::StrCat(" (and ", n - 1, " more ", what, ")") : std::string();
  };
  if (first_bad != nullptr) {
    r.set_verdict(v1::VERIFY_DAMAGED);
    r.set_reason(absl::StrCat(
        Where(t, *first_bad), ": ", checked_.at(first_bad->id).detail,
        more(r.bad_chunks(), "bad chunk(s)"),
        ". No good copy is left, so this checkpoint cannot be restored as is: restore "
        "an older checkpoint that verifies (snapbackctl restore JOB --step N) and "
        "delete this one"));
  } else if (first_unverified != nullptr) {
    r.set_verdict(v1::VERIFY_INCOMPLETE);
    r.set_reason(absl::StrCat(
        Where(t, *first_unverified), ": ", checked_.at(first_unverified->id).detail,
        more(r.unverified_chunks(), "unverified chunk(s)"),
        "; nothing recorded: verify again once the storage nodes answer"));
  } else if (first_repaired != nullptr) {
    r.set_verdict(v1::VERIFY_REPAIRED);
    r.set_reason(absl::StrCat(r.repaired_chunks(),
                              " chunk(s) had a bad or lost copy, handed to repair from a "
                              "good one; first: ",
                              Where(t, *first_repaired), ": ",
                              checked_.at(first_repaired->id).detail));
  } else {
    r.set_verdict(v1::VERIFY_OK);
  }
  if (r.verdict() != v1::VERIFY_INCOMPLETE) {
    const bool damaged = r.verdict() == v1::VERIFY_DAMAGED;
    absl::StatusOr<v1::CheckpointInfo> recorded =
        store_->RecordVerification(t.checkpoint, damaged, damaged ? r.reason() : "");
    if (recorded.ok()) {
      *r.mutable_checkpoint() = *std::move(recorded);
    } else if (absl::IsNotFound(recorded.status()) ||
               absl::IsAborted(recorded.status())) {
      // Deleted or replaced (retention, an operator) while it was read: the
      // verdict is about chunks nobody relies on any more.
      absl::StrAppend(r.mutable_reason(), r.reason().empty() ? "" : "; ",
                      "not recorded: ", recorded.status().message());
    } else {
      return recorded.status();
    }
  }
  results_.push_back(std::move(r));
  progress_.set_checkpoints_done(progress_.checkpoints_done() + 1);
  // The chunk list is no longer needed; the verdicts stay in checked_ for
  // older checkpoints that share chunks.
  t.chunks = {};
  t.entries = {};
  return absl::OkStatus();
}

std::vector<v1::CheckpointVerification> CheckpointVerifier::TakeFinished() {
  std::vector<v1::CheckpointVerification> out(results_.begin() + taken_, results_.end());
  taken_ = results_.size();
  return out;
}

}  // namespace snapback::coordinator
