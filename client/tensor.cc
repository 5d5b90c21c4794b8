#include "snapback/tensor.h"

namespace snapback {

uint64_t TensorView::byte_length() const {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= d < 0 ? 0 : static_cast<uint64_t>(d);
  return n;
}

}  // namespace snapback
