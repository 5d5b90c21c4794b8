// The one dtype table: names and element sizes of the public DType enum
// (include/snapback/tensor.h). Linked by the client (TensorView) and the
// coordinator (manifest validation) alike, so a dtype the client can save is
// a dtype the coordinator accepts.
#include "absl/strings/str_cat.h"
#include "snapback/tensor.h"

namespace snapback {
namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kFloat32, "float32", 4}, {DType::kBFloat16, "bfloat16", 2},
    {DType::kFloat16, "float16", 2}, {DType::kFloat64, "float64", 8},
    {DType::kInt8, "int8", 1},       {DType::kUInt8, "uint8", 1},
    {DType::kInt16, "int16", 2},     {DType::kInt32, "int32", 4},
    {DType::kInt64, "int64", 8},     {DType::kBool, "bool", 1},
};

}  // namespace

size_t DTypeSize(DType dtype) { return kDTypes[static_cast<int>(dtype)].size; }

const char* DTypeName(DType dtype) { return kDTypes[static_cast<int>(dtype)].name; }

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name,
                   "'; use float32, bfloat16, float16, float64, int8, uint8, int16, "
                   "int32, int64 or bool"));
}

}  // namespace snapback
