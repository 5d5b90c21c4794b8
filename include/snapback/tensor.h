// Tensor and blob views: what a checkpoint is made of.
//
// A tensor is hardware-neutral: raw little-endian bytes in row-major order, a
// dtype and a shape, plus where this shard sits in the global (unsharded)
// tensor, so a later reader can reshard onto another world size. The views
// point at caller memory; snapback never keeps a view past the call that
// took it (Save() copies the bytes into its own staging memory).
#ifndef SNAPBACK_TENSOR_H_
#define SNAPBACK_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace snapback {

enum class DType {
  kFloat32,
  kBFloat16,
  kFloat16,
  kFloat64,
  kInt8,
  kUInt8,
  kInt16,
  kInt32,
  kInt64,
  kBool,
};

// Bytes per element: 4, 2, 2, 8, 1, 1, 2, 4, 8, 1.
size_t DTypeSize(DType dtype);
// "float32", "bfloat16", "float16", "float64", "int8", "uint8", "int16",
// "int32", "int64", "bool" (the names used in manifests).
const char* DTypeName(DType dtype);
// Parses the names above. INVALID_ARGUMENT otherwise.
absl::StatusOr<DType> ParseDType(absl::string_view name);

// A read-only view of one tensor (shard) in caller memory.
struct TensorView {
  // Unique within one rank's checkpoint.
  std::string name = {};
  DType dtype = DType::kFloat32;
  // Dimensions of this shard; {} is a scalar (one element).
  std::vector<int64_t> shape = {};
  // Shape of the whole tensor; empty = same as `shape` (not sharded).
  std::vector<int64_t> global_shape = {};
  // Index of this shard's first element in the global tensor; empty = zeros.
  std::vector<int64_t> global_offset = {};
  // product(shape) * DTypeSize(dtype) bytes, little-endian, row-major.
  const void* data = nullptr;

  // product(shape) * DTypeSize(dtype).
  uint64_t byte_length() const;
};

// Writable caller memory a checkpoint is restored into
// (Checkpointer::RestoreInto): product(shape) * DTypeSize(dtype) bytes.
struct MutableTensorView {
  std::string name = {};
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape = {};
  void* data = nullptr;
};

// Opaque bytes saved with a checkpoint: RNG state, data-loader position,
// pickled extras.
struct BlobView {
  std::string name = {};
  const void* data = nullptr;
  size_t size = 0;
};

// A restored tensor; `bytes` holds its verified bytes when the library owns
// the memory (Restore()), and is empty when it went to a caller's buffer
// (RestoreInto()).
struct RestoredTensor {
  std::string name = {};
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape = {};
  std::vector<int64_t> global_shape = {};
  std::vector<int64_t> global_offset = {};
  std::string bytes = {};
};

struct RestoredBlob {
  std::string name = {};
  std::string bytes = {};
};

}  // namespace snapback

#endif  // SNAPBACK_TENSOR_H_
