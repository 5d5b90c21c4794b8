// Tensors and blobs between Python and include/snapback/tensor.h.
//
// A tensor is given as any object with the buffer protocol (numpy array,
// bytes, bytearray, memoryview, array.array) or a snapback.Tensor that wraps
// one and overrides its dtype or shape (bfloat16 has no buffer format, so a
// bf16 tensor is passed as its int16/uint16/uint8 bytes with
// dtype="bfloat16"). The view points straight at the object's memory: no
// copy is made here; the caller keeps the buffer exported (HeldBuffers) for
// as long as C++ reads it.
#include <pybind11/stl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "python/src/bindings.h"

namespace snapback::python {
namespace {

// snapback.Tensor: a buffer plus the metadata a buffer cannot say.
struct PyTensor {
  py::object data;
  std::optional<DType> dtype;
  std::optional<std::vector<int64_t>> shape;
  std::vector<int64_t> global_shape;
  std::vector<int64_t> global_offset;
};

[[noreturn]] void Invalid(const std::string& message) {
  RaiseStatus(absl::InvalidArgumentError(message));
}

// The dtype of a buffer-protocol format ("f", "<f", "=q", "?", ...), or
// nullopt when snapback has none (big-endian, unsigned > 8 bits, structs).
std::optional<DType> FormatToDType(const char* format, Py_ssize_t itemsize) {
  if (format == nullptr) return DType::kUInt8;  // PyBUF_SIMPLE: plain bytes
  std::string f(format);
  if (!f.empty() && (f[0] == '@' || f[0] == '=' || f[0] == '<')) f.erase(0, 1);
  if (f.size() != 1) return std::nullopt;
  switch (f[0]) {
    case '?':
      return DType::kBool;
    case 'b':
      return DType::kInt8;
    case 'B':
    case 'c':
      return DType::kUInt8;
    case 'e':
      return DType::kFloat16;
    case 'f':
      return DType::kFloat32;
    case 'd':
      return DType::kFloat64;
    case 'h':
    case 'i':
    case 'l':
    case 'q':
      switch (itemsize) {
        case 2:
          return DType::kInt16;
        case 4:
          return DType::kInt32;
        case 8:
          return DType::kInt64;
      }
      return std::nullopt;
  }
  return std::nullopt;
}

// Buffer format of a restored dtype. bfloat16 has none: its bit patterns
// are exposed as uint16 ('H').
const char* DTypeFormat(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "f";
    case DType::kBFloat16:
      return "H";
    case DType::kFloat16:
      return "e";
    case DType::kFloat64:
      return "d";
    case DType::kInt8:
      return "b";
    case DType::kUInt8:
      return "B";
    case DType::kInt16:
      return "h";
    case DType::kInt32:
      return "i";
    case DType::kInt64:
      return "q";
    case DType::kBool:
      return "?";
  }
  return "B";
}

DType ParseDTypeOrRaise(const std::string& name) {
  return ValueOrThrow(ParseDType(name));
}

// Dtype, shape and memory of `value` for tensor `name`.
struct Resolved {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> global_shape;
  std::vector<int64_t> global_offset;
  void* data;
};

Resolved Resolve(const std::string& name, py::handle value, bool writable,
                 HeldBuffers* held) {
  const PyTensor* wrapper = nullptr;
  py::handle obj = value;
  if (py::isinstance<PyTensor>(value)) {
    wrapper = &value.cast<const PyTensor&>();
    obj = wrapper->data;
  }
  const std::string what = absl::StrCat("tensor '", name, "'");
  Py_buffer* view = held->Hold(obj, writable, what);
  Resolved r;
  r.data = view->buf;
  std::optional<DType> inferred = FormatToDType(view->format, view->itemsize);
  if (wrapper != nullptr && wrapper->dtype.has_value()) {
    r.dtype = *wrapper->dtype;
  } else if (inferred.has_value()) {
    r.dtype = *inferred;
  } else {
    Invalid(absl::StrCat(what, ": buffer format '", view->format ? view->format : "",
                         "' has no snapback dtype; wrap it in snapback.Tensor(data, "
                         "dtype=...) to say how to read its bytes"));
  }
  const uint64_t elem = DTypeSize(r.dtype);
  if (wrapper != nullptr && wrapper->shape.has_value()) {
    r.shape = *wrapper->shape;
  } else if (static_cast<uint64_t>(view->itemsize) == elem &&
             (view->ndim == 0 || view->shape != nullptr)) {
    if (view->ndim > 0) r.shape.assign(view->shape, view->shape + view->ndim);
  } else {
    if (static_cast<uint64_t>(view->len) % elem != 0) {
      Invalid(absl::StrCat(what, ": ", view->len, " bytes are not a whole number of ",
                           DTypeName(r.dtype), " elements"));
    }
    r.shape = {static_cast<int64_t>(view->len / elem)};
  }
  uint64_t expect = elem;
  for (int64_t d : r.shape) {
    if (d < 0) Invalid(absl::StrCat(what, ": negative dimension in its shape"));
    expect *= static_cast<uint64_t>(d);
  }
  if (expect != static_cast<uint64_t>(view->len)) {
    Invalid(absl::StrCat(what, ": shape [", absl::StrJoin(r.shape, ","), "] of ",
                         DTypeName(r.dtype), " needs ", expect, " bytes, the buffer has ",
                         view->len));
  }
  if (wrapper != nullptr) {
    r.global_shape = wrapper->global_shape;
    r.global_offset = wrapper->global_offset;
  }
  return r;
}

}  // namespace

HeldBuffers::~HeldBuffers() {
  for (auto& v : views_) PyBuffer_Release(v.get());
}

Py_buffer* HeldBuffers::Hold(py::handle obj, bool writable, const std::string& what) {
  auto view = std::make_unique<Py_buffer>();
  // Ask for strides so a non-contiguous buffer is reported as such rather
  // than refused with the exporter's own message.
  const int flags = writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO;
  if (PyObject_GetBuffer(obj.ptr(), view.get(), flags) != 0) {
    py::error_already_set e;  // fetches and clears the exporter's error
    Invalid(absl::StrCat(what, ": a ", Py_TYPE(obj.ptr())->tp_name, " gives no ",
                         writable ? "writable " : "", "buffer (", e.what(),
                         "); pass a numpy array, bytes, bytearray, memoryview or "
                         "snapback.Tensor"));
  }
  Py_buffer* raw = view.get();
  views_.push_back(std::move(view));
  if (!PyBuffer_IsContiguous(raw, 'C')) {
    Invalid(absl::StrCat(what,
                         " is not C-contiguous; pass a contiguous copy "
                         "(numpy.ascontiguousarray, tensor.contiguous())"));
  }
  return raw;
}

TensorView ToTensorView(const std::string& name, py::handle value, HeldBuffers* held) {
  Resolved r = Resolve(name, value, /*writable=*/false, held);
  TensorView t;
  t.name = name;
  t.dtype = r.dtype;
  t.shape = std::move(r.shape);
  t.global_shape = std::move(r.global_shape);
  t.global_offset = std::move(r.global_offset);
  t.data = r.data;
  return t;
}

MutableTensorView ToMutableTensorView(const std::string& name, py::handle value,
                                      HeldBuffers* held) {
  Resolved r = Resolve(name, value, /*writable=*/true, held);
  MutableTensorView t;
  t.name = name;
  t.dtype = r.dtype;
  t.shape = std::move(r.shape);
  t.data = r.data;
  return t;
}

BlobView ToBlobView(const std::string& name, py::handle value, HeldBuffers* held) {
  Py_buffer* view =
      held->Hold(value, /*writable=*/false, absl::StrCat("blob '", name, "'"));
  return BlobView{
      .name = name, .data = view->buf, .size = static_cast<size_t>(view->len)};
}

py::object WrapRestoredTensor(RestoredTensor t) {
  return py::cast(std::make_unique<RestoredTensor>(std::move(t)));
}

void RegisterTensor(py::module_& m) {
  std::vector<std::string> names;
  for (DType d :
       {DType::kFloat32, DType::kBFloat16, DType::kFloat16, DType::kFloat64, DType::kInt8,
        DType::kUInt8, DType::kInt16, DType::kInt32, DType::kInt64, DType::kBool}) {
    names.push_back(DTypeName(d));
  }
  m.attr("DTYPES") = py::tuple(py::cast(names));
  m.def(
      "dtype_size",
      [](const std::string& name) { return DTypeSize(ParseDTypeOrRaise(name)); },
      py::arg("dtype"),
      R"doc(Bytes per element of a dtype name.

Args:
  dtype: one of DTYPES, e.g. "bfloat16".
Returns:
  The element size in bytes (4 for "float32").
Raises:
  InvalidArgument: unknown dtype name.
Example:
  >>> snapback.dtype_size("bfloat16")
  2
)doc");

  py::class_<PyTensor>(m, "Tensor", R"doc(A tensor given by its buffer and metadata.

Wraps any object with the buffer protocol when its format cannot say the
dtype (bfloat16) or when the tensor is a shard of a larger one. Plain numpy
arrays, bytes and memoryviews can be passed to save() without it.

The wrapper does not copy: save() and restore_into() use the buffer's memory.
)doc")
      .def(py::init([](py::object data, std::optional<std::string> dtype,
                       std::optional<std::vector<int64_t>> shape,
                       std::optional<std::vector<int64_t>> global_shape,
                       std::optional<std::vector<int64_t>> global_offset) {
             PyTensor t;
             t.data = std::move(data);
             if (dtype) t.dtype = ParseDTypeOrRaise(*dtype);
             t.shape = std::move(shape);
             t.global_shape = global_shape.value_or(std::vector<int64_t>{});
             t.global_offset = global_offset.value_or(std::vector<int64_t>{});
             return t;
           }),
           py::arg("data"), py::arg("dtype") = py::none(), py::arg("shape") = py::none(),
           py::arg("global_shape") = py::none(), py::arg("global_offset") = py::none(),
           R"doc(Describes `data` as a tensor.

Args:
  data: an object with the buffer protocol, C-contiguous (writable for
    restore_into()).
  dtype: one of DTYPES; default: from the buffer's format.
  shape: dimensions; default: the buffer's shape when its element size is
    the dtype's, else one dimension of len(bytes) / dtype_size(dtype).
  global_shape: shape of the whole tensor this shard belongs to; default:
    `shape` (not sharded).
  global_offset: index of this shard's first element in the whole tensor;
    default: zeros.
Raises:
  InvalidArgument: unknown dtype.
Example:
  >>> bf16 = torch_tensor.view(torch.int16).numpy()
  >>> snapback.Tensor(bf16, dtype="bfloat16")
)doc")
      .def_property_readonly("data", [](const PyTensor& t) { return t.data; })
      .def_property_readonly("dtype",
                             [](const PyTensor& t) -> std::optional<std::string> {
                               if (!t.dtype) return std::nullopt;
                               return DTypeName(*t.dtype);
                             })
      .def_property_readonly("shape", [](const PyTensor& t) { return t.shape; })
      .def_property_readonly("global_shape",
                             [](const PyTensor& t) { return t.global_shape; })
      .def_property_readonly("global_offset",
                             [](const PyTensor& t) { return t.global_offset; })
      .def("__repr__", [](const PyTensor& t) {
        return absl::StrCat(
            "snapback.Tensor(dtype=", t.dtype ? DTypeName(*t.dtype) : "None", ", shape=",
            t.shape ? absl::StrCat("[", absl::StrJoin(*t.shape, ","), "]") : "None", ")");
      });

  py::class_<RestoredTensor>(m, "RestoredTensor", py::buffer_protocol(),
                             R"doc(One tensor of a restored checkpoint.

Supports the buffer protocol when its bytes are library-owned (restore()):
`numpy.asarray(t)` or `torch.frombuffer(t, dtype=...)` use them without a
copy, and the memory lives as long as any such view. bfloat16 bytes are
exposed as uint16 bit patterns. After restore_into() the bytes are in the
caller's buffer and `has_data` is False.
)doc")
      .def_readonly("name", &RestoredTensor::name)
      .def_property_readonly("dtype",
                             [](const RestoredTensor& t) { return DTypeName(t.dtype); })
      .def_readonly("shape", &RestoredTensor::shape)
      .def_readonly("global_shape", &RestoredTensor::global_shape)
      .def_readonly("global_offset", &RestoredTensor::global_offset)
      .def_property_readonly("nbytes",
                             [](const RestoredTensor& t) {
                               uint64_t n = DTypeSize(t.dtype);
                               for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
                               return n;
                             })
      .def_property_readonly("has_data",
                             [](const RestoredTensor& t) {
                               uint64_t n = DTypeSize(t.dtype);
                               for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
                               return n == 0 || !t.bytes.empty();
                             })
      .def_buffer([](RestoredTensor& t) -> py::buffer_info {
        const Py_ssize_t item = static_cast<Py_ssize_t>(DTypeSize(t.dtype));
        std::vector<Py_ssize_t> shape(t.shape.begin(), t.shape.end());
        uint64_t n = static_cast<uint64_t>(item);
        for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
        if (n > 0 && t.bytes.size() != n) {
          throw py::buffer_error(absl::StrCat("tensor '", t.name,
                                              "' was restored into the caller's memory"));
        }
        std::vector<Py_ssize_t> strides(shape.size());
        Py_ssize_t stride = item;
        for (size_t i = shape.size(); i-- > 0;) {
          strides[i] = stride;
          stride *= shape[i];
        }
        return py::buffer_info(t.bytes.data(), item, DTypeFormat(t.dtype),
                               static_cast<Py_ssize_t>(shape.size()), shape, strides,
                               /*readonly=*/false);
      })
      .def("__repr__", [](const RestoredTensor& t) {
        return absl::StrCat("RestoredTensor('", t.name, "', ", DTypeName(t.dtype), ", [",
                            absl::StrJoin(t.shape, ","), "])");
      });
}

}  // namespace snapback::python
