// snapback._core: the one PYBIND11_MODULE of the Python bindings over the
// public C++ API. Each binding file registers its component; the pure-Python
// package `snapback` re-exports what users need.
#include "python/src/bindings.h"

PYBIND11_MODULE(_core, m) {
  namespace sp = snapback::python;
  m.doc() =
      "Bindings over the snapback C++ client library (include/snapback/). Use the "
      "`snapback` package rather than this module.";
  sp::RegisterErrors(m);
  sp::RegisterTensor(m);
  sp::RegisterCheckpointer(m);
  sp::RegisterClient(m);
}
