#include "client/save_job.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace snapback::internal_client {

std::string ChunkKey(bool is_blob, absl::string_view item, size_t index) {
  return absl::StrCat(is_blob ? "b:" : "t:", item, "#", index);
}

absl::StatusOr<std::shared_ptr<SaveJob>> PlanSaveJob(int64_t step,
                                                     absl::Span<const TensorView> tensors,
                                                     absl::Span<const BlobView> blobs,
                                                     uint64_t chunk_bytes) {
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
    for (uint64_t off = 0, i = 0; off < item.bytes; off += chunk_bytes, ++i) {
      job->tasks.push_back(
          {job->items.size(), i, off,
           static_cast<uint32_t>(std::min<uint64_t>(chunk_bytes, item.bytes - off))});
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
  for (size_t i = 0; i < job->items.size(); ++i) job->codec_choice[i] = kUndecided;
  return job;
}

}  // namespace snapback::internal_client
