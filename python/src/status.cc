// absl::Status → Python exceptions: the one place status codes are mapped.
//
// snapback.Error is the base of one class per status code; a class also
// derives from the built-in exception a Python caller would expect (e.g.
// InvalidArgument is a ValueError, DeadlineExceeded a TimeoutError), so code
// that knows nothing about snapback still catches the right thing. Every
// exception carries `code`, the status code's name ("UNAVAILABLE", ...).
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "python/src/bindings.h"

namespace snapback::python {
namespace {

struct ErrorClass {
  absl::StatusCode code;
  const char* name;
  PyObject* builtin;  // a second base class, or nullptr
  const char* doc;
};

// What the caller should do decides the code (conventions.md, Errors).
const ErrorClass* ErrorClasses(size_t* n) {
  static const ErrorClass kClasses[] = {
      {absl::StatusCode::kCancelled, "Cancelled", nullptr,
       "The operation was cancelled."},
      {absl::StatusCode::kUnknown, "Unknown", nullptr, "An error of unknown kind."},
      {absl::StatusCode::kInvalidArgument, "InvalidArgument", PyExc_ValueError,
       "A bad argument: fix the call (a tensor without a buffer, a duplicate\n"
       "name, a shape that does not match, a step that does not grow)."},
      {absl::StatusCode::kDeadlineExceeded, "DeadlineExceeded", PyExc_TimeoutError,
       "A deadline passed (an RPC, or SaveHandle.result(timeout)); the\n"
       "operation may still complete."},
      {absl::StatusCode::kNotFound, "NotFound", PyExc_LookupError,
       "Nothing there: e.g. no committed checkpoint to restore."},
      {absl::StatusCode::kAlreadyExists, "AlreadyExists", nullptr,
       "Already there: e.g. the step is already committed; save a later one."},
      {absl::StatusCode::kPermissionDenied, "PermissionDenied", PyExc_PermissionError,
       "The caller may not do this."},
      {absl::StatusCode::kResourceExhausted, "ResourceExhausted", nullptr,
       "A limit was reached (message size, memory, disk)."},
      {absl::StatusCode::kFailedPrecondition, "FailedPrecondition", nullptr,
       "Do not retry until something is fixed: e.g. a stale incarnation (this\n"
       "process belongs to a previous run of the job and must exit) or a\n"
       "closed checkpointer."},
      {absl::StatusCode::kAborted, "Aborted", nullptr,
       "Retry the whole operation (e.g. save again at a later step)."},
      {absl::StatusCode::kOutOfRange, "OutOfRange", nullptr, "A value out of range."},
      {absl::StatusCode::kUnimplemented, "Unimplemented", PyExc_NotImplementedError,
       "Not supported by this server or build."},
      {absl::StatusCode::kInternal, "Internal", nullptr,
       "A bug or broken invariant in snapback."},
      {absl::StatusCode::kUnavailable, "Unavailable", PyExc_ConnectionError,
       "The service could not be reached or is overloaded: retry the call."},
      {absl::StatusCode::kDataLoss, "DataLoss", nullptr,
       "Bytes failed verification and no good copy exists: restore an older\n"
       "step."},
      {absl::StatusCode::kUnauthenticated, "Unauthenticated", nullptr,
       "Missing or bad credentials."},
  };
  *n = sizeof(kClasses) / sizeof(kClasses[0]);
  return kClasses;
}

// Indexed by status code; filled once at import. The classes are never
// freed (the module holds them too), so they outlive every call.
PyObject* g_base = nullptr;
PyObject* g_by_code[32] = {};

}  // namespace

void RegisterErrors(py::module_& m) {
  g_base = PyErr_NewExceptionWithDoc(
      "snapback.Error",
      "Base of every snapback error. `code` is the status code's name\n"
      "(e.g. 'UNAVAILABLE'); str(e) says what happened and what to do.",
      PyExc_Exception, nullptr);
  if (g_base == nullptr) throw py::error_already_set();
  // The class attribute answers for errors raised from Python code too.
  py::handle(g_base).attr("code") = "UNKNOWN";
  m.attr("Error") = py::handle(g_base);
  size_t n;
  const ErrorClass* classes = ErrorClasses(&n);
  for (size_t i = 0; i < n; ++i) {
    const ErrorClass& c = classes[i];
    py::tuple bases = c.builtin
                          ? py::make_tuple(py::handle(g_base), py::handle(c.builtin))
                          : py::make_tuple(py::handle(g_base));
    const std::string name = absl::StrCat("snapback.", c.name);
    PyObject* cls = PyErr_NewExceptionWithDoc(name.c_str(), c.doc, bases.ptr(), nullptr);
    if (cls == nullptr) throw py::error_already_set();
    py::handle(cls).attr("code") = absl::StatusCodeToString(c.code);
    g_by_code[static_cast<int>(c.code)] = cls;
    m.attr(c.name) = py::handle(cls);
  }
}

void RaiseStatus(const absl::Status& status) {
  const int code = static_cast<int>(status.code());
  PyObject* cls = (code >= 0 && code < 32 && g_by_code[code]) ? g_by_code[code] : g_base;
  const std::string message(status.message());
  // Messages may quote bytes from elsewhere: never fail on bad UTF-8.
  py::object text = py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(
      message.data(), static_cast<Py_ssize_t>(message.size()), "replace"));
  if (!text) throw py::error_already_set();
  py::object exc = py::handle(cls)(text);
  exc.attr("code") = absl::StatusCodeToString(status.code());
  PyErr_SetObject(cls, exc.ptr());
  throw py::error_already_set();
}

absl::Duration ToDuration(double seconds) {
  if (std::isinf(seconds) && seconds > 0) return absl::InfiniteDuration();
  if (!(seconds >= 0)) {
    RaiseStatus(absl::InvalidArgumentError(
        absl::StrCat("a duration must be >= 0 seconds, got ", seconds)));
  }
  return absl::Seconds(seconds);
}

double ToSeconds(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return std::numeric_limits<double>::infinity();
  return absl::ToDoubleSeconds(d);
}

}  // namespace snapback::python
