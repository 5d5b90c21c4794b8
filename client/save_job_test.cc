#include "client/save_job.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "snapback/tensor.h"

namespace snapback::internal_client {
namespace {

constexpr uint64_t kChunk = 4096;

TensorView Tensor(std::string name, std::vector<int64_t> shape, const void* data,
                  DType dtype = DType::kFloat32) {
  TensorView t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = data;
  return t;
}

TEST(ChunkKeyTest, NamesKindItemAndIndex) {
  EXPECT_EQ(ChunkKey(false, "layer.0.w", 2), "t:layer.0.w#2");
  EXPECT_EQ(ChunkKey(true, "rng", 0), "b:rng#0");
}

TEST(PlanSaveJobTest, CutsTensorsThenBlobsAtChunkBytes) {
  std::vector<char> w(12000), rng(5000);
  std::vector<TensorView> tensors = {Tensor("w", {3, 1000}, w.data())};
  std::vector<BlobView> blobs = {{.name = "rng", .data = rng.data(), .size = rng.size()}};
  auto job = PlanSaveJob(42, tensors, blobs, kChunk);
  ASSERT_TRUE(job.ok()) << job.status();
  const SaveJob& j = **job;
  EXPECT_EQ(j.step, 42);
  ASSERT_EQ(j.items.size(), 2u);
  EXPECT_FALSE(j.items[0].is_blob);
  EXPECT_EQ(j.items[0].name, "w");
  EXPECT_EQ(j.items[0].bytes, 12000u);
  EXPECT_EQ(j.items[0].src, w.data());
  EXPECT_EQ(j.items[0].first_task, 0u);
  EXPECT_EQ(j.items[0].num_tasks, 3u);
  EXPECT_TRUE(j.items[1].is_blob);
  EXPECT_EQ(j.items[1].name, "rng");
  EXPECT_EQ(j.items[1].first_task, 3u);
  EXPECT_EQ(j.items[1].num_tasks, 2u);

  struct Want {
    size_t item, index;
    uint64_t offset;
    uint32_t length;
  };
  const std::vector<Want> want = {{0, 0, 0, 4096},
                                  {0, 1, 4096, 4096},
                                  {0, 2, 8192, 3808},
                                  {1, 0, 0, 4096},
                                  {1, 1, 4096, 904}};
  ASSERT_EQ(j.tasks.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(j.tasks[i].item, want[i].item);
    EXPECT_EQ(j.tasks[i].index, want[i].index);
    EXPECT_EQ(j.tasks[i].offset, want[i].offset);
    EXPECT_EQ(j.tasks[i].length, want[i].length);
  }
  EXPECT_EQ(j.ids.size(), 5u);
  EXPECT_EQ(j.fast.size(), 5u);
  for (size_t i = 0; i < j.items.size(); ++i)
    EXPECT_EQ(j.codec_choice[i].load(), kUndecided);
}

TEST(PlanSaveJobTest, ExactMultipleAndEmptyItems) {
  std::vector<char> a(2 * kChunk);
  std::vector<TensorView> tensors = {Tensor("a", {2 * kChunk}, a.data(), DType::kUInt8),
                                     Tensor("empty", {0, 5}, nullptr)};
  std::vector<BlobView> blobs = {{.name = "none", .data = nullptr, .size = 0}};
  auto job = PlanSaveJob(1, tensors, blobs, kChunk);
  ASSERT_TRUE(job.ok()) << job.status();
  const SaveJob& j = **job;
  ASSERT_EQ(j.tasks.size(), 2u);
  EXPECT_EQ(j.tasks[1].offset, kChunk);
  EXPECT_EQ(j.tasks[1].length, kChunk);
  ASSERT_EQ(j.items.size(), 3u);
  EXPECT_EQ(j.items[1].num_tasks, 0u);
  EXPECT_EQ(j.items[1].first_task, 2u);
  EXPECT_EQ(j.items[2].num_tasks, 0u);
}

TEST(PlanSaveJobTest, ScalarIsOneElement) {
  double x = 1.5;
  std::vector<TensorView> tensors = {Tensor("lr", {}, &x, DType::kFloat64)};
  auto job = PlanSaveJob(1, tensors, {}, kChunk);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_EQ((*job)->tasks.size(), 1u);
  EXPECT_EQ((*job)->tasks[0].length, 8u);
}

TEST(PlanSaveJobTest, GlobalShapeAndOffsetDefaultToUnsharded) {
  std::vector<char> w(4 * 6 * 2);
  TensorView sharded = Tensor("s", {4, 6}, w.data(), DType::kBFloat16);
  sharded.global_shape = {8, 6};
  sharded.global_offset = {4, 0};
  std::vector<TensorView> tensors = {Tensor("w", {4, 6}, w.data(), DType::kBFloat16),
                                     sharded};
  auto job = PlanSaveJob(1, tensors, {}, kChunk);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ((*job)->items[0].global_shape, (std::vector<int64_t>{4, 6}));
  EXPECT_EQ((*job)->items[0].global_offset, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ((*job)->items[1].global_shape, (std::vector<int64_t>{8, 6}));
  EXPECT_EQ((*job)->items[1].global_offset, (std::vector<int64_t>{4, 0}));
  EXPECT_EQ((*job)->items[1].dtype, DType::kBFloat16);
}

TEST(PlanSaveJobTest, TensorAndBlobMayShareAName) {
  char byte = 0;
  std::vector<TensorView> tensors = {Tensor("x", {1}, &byte, DType::kUInt8)};
  std::vector<BlobView> blobs = {{.name = "x", .data = &byte, .size = 1}};
  EXPECT_TRUE(PlanSaveJob(1, tensors, blobs, kChunk).ok());
}

TEST(PlanSaveJobTest, RejectsBadViews) {
  char bytes[64] = {};
  auto plan = [&](std::vector<TensorView> tensors, std::vector<BlobView> blobs = {}) {
    return PlanSaveJob(1, tensors, blobs, kChunk).status();
  };
  absl::Status s = plan({Tensor("", {1}, bytes)});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "a tensor or blob has no name");

  s = plan({Tensor("w", {1}, bytes), Tensor("w", {2}, bytes)});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "duplicate name 'w'");

  s = plan({}, {{.name = "b", .data = bytes, .size = 1},
                {.name = "b", .data = bytes, .size = 1}});
  EXPECT_EQ(s.message(), "duplicate name 'b'");

  s = plan({Tensor("w", {4}, nullptr)});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "'w' has no data");

  s = plan({}, {{.name = "b", .data = nullptr, .size = 3}});
  EXPECT_EQ(s.message(), "'b' has no data");

  s = plan({Tensor("w", {2, -1}, bytes)});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "tensor 'w' has a negative dimension");

  TensorView dims = Tensor("w", {2, 2}, bytes);
  dims.global_shape = {4};
  s = plan({dims});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "tensor 'w': global_shape and global_offset need 2 dimensions like shape");

  TensorView outside = Tensor("w", {2, 2}, bytes);
  outside.global_shape = {4, 2};
  outside.global_offset = {0, 1};
  s = plan({outside});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "tensor 'w': shard does not fit its global shape in dimension 1");

  TensorView negative = Tensor("w", {2}, bytes);
  negative.global_shape = {4};
  negative.global_offset = {-1};
  EXPECT_EQ(plan({negative}).message(),
            "tensor 'w': shard does not fit its global shape in dimension 0");
}

}  // namespace
}  // namespace snapback::internal_client
