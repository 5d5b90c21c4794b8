// Shared pieces of the snapback._core extension: one Register function per
// binding file (module.cc calls them in order), the single status → Python
// exception conversion (status.cc), and caller buffers held across a call
// (tensor.cc).
//
// Rules every binding follows:
//   - only the public C++ API (include/snapback/) is used;
//   - every call that can block (an RPC, a copy, a wait) runs with the GIL
//     released, and nothing in C++ ever calls back into Python, so the
//     library's own threads never need the GIL;
//   - objects that hold Python references (HeldBuffers) are created and
//     destroyed with the GIL held.
#ifndef SNAPBACK_PYTHON_BINDINGS_H_
#define SNAPBACK_PYTHON_BINDINGS_H_

#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snapback/client.h"
#include "snapback/tensor.h"

namespace snapback::python {

namespace py = pybind11;

// status.cc: creates the exception hierarchy (snapback.Error and one class
// per status code) as attributes of `m`.
void RegisterErrors(py::module_& m);
// Raises the Python exception for a non-OK `status` (throws
// py::error_already_set). The only place status codes become exceptions.
[[noreturn]] void RaiseStatus(const absl::Status& status);
inline void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) RaiseStatus(status);
}
template <typename T>
T ValueOrThrow(absl::StatusOr<T> v) {
  if (!v.ok()) RaiseStatus(v.status());
  return std::move(v).value();
}

// Seconds (Python float, None = nullopt) <-> absl::Duration.
absl::Duration ToDuration(double seconds);
double ToSeconds(absl::Duration d);

// tensor.cc: dtypes, snapback.Tensor, RestoredTensor.
void RegisterTensor(py::module_& m);

// Buffers exported by Python objects for the duration of a C++ call (or, in
// overlap mode, until the snapshot copy is done). Release needs the GIL, so
// create and destroy with the GIL held.
class HeldBuffers {
 public:
  HeldBuffers() = default;
  HeldBuffers(const HeldBuffers&) = delete;
  HeldBuffers& operator=(const HeldBuffers&) = delete;
  ~HeldBuffers();
  // Exports `obj`'s buffer (C-contiguous, optionally writable) and keeps it
  // until destruction. INVALID_ARGUMENT (raised) when it has none.
  Py_buffer* Hold(py::handle obj, bool writable, const std::string& what);

 private:
  std::vector<std::unique_ptr<Py_buffer>> views_;
};

// A tensor or blob given by Python, resolved to a view of its memory.
// `value` is a buffer-protocol object or a snapback.Tensor.
TensorView ToTensorView(const std::string& name, py::handle value, HeldBuffers* held);
MutableTensorView ToMutableTensorView(const std::string& name, py::handle value,
                                      HeldBuffers* held);
BlobView ToBlobView(const std::string& name, py::handle value, HeldBuffers* held);
// A RestoredTensor Python object that takes over `t` (and its bytes).
py::object WrapRestoredTensor(RestoredTensor t);

// client.cc: ClientOptions, Client.
void RegisterClient(py::module_& m);
// checkpointer.cc: CheckpointerOptions, Checkpointer, SaveHandle, SaveStats,
// RestoreResult, and _close_all() for the atexit hook.
void RegisterCheckpointer(py::module_& m);
// The Python Checkpointer that owns `ck`; `overlap` is its options' mode.
py::object WrapCheckpointer(std::unique_ptr<Checkpointer> ck, bool overlap);

}  // namespace snapback::python

#endif  // SNAPBACK_PYTHON_BINDINGS_H_
