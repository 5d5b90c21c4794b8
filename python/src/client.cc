// snapback::Client and ClientOptions (include/snapback/client.h).
#include <pybind11/stl.h>

#include "absl/strings/str_cat.h"
#include "python/src/bindings.h"
#include "snapback/log.h"

namespace snapback::python {

void RegisterClient(py::module_& m) {
  py::class_<ClientOptions>(m, "ClientOptions", R"doc(Options of Client.connect().

Fields (defaults in brackets):
  endpoint: coordinator address HOST:PORT [$SNAPBACK_ENDPOINT, else
    "127.0.0.1:7420"].
  tls_root_ca_file: PEM CA of the servers' certificates; set = TLS
    [$SNAPBACK_TLS_CA, else plaintext].
  rpc_deadline: seconds allowed for each metadata RPC [30].
  bulk_deadline: seconds allowed for one chunk upload or download stream [600].
)doc")
      .def(py::init<>())
      .def_readwrite("endpoint", &ClientOptions::endpoint)
      .def_readwrite("tls_root_ca_file", &ClientOptions::tls_root_ca_file)
      .def_property(
          "rpc_deadline",
          [](const ClientOptions& o) { return ToSeconds(o.rpc_deadline); },
          [](ClientOptions& o, double s) { o.rpc_deadline = ToDuration(s); })
      .def_property(
          "bulk_deadline",
          [](const ClientOptions& o) { return ToSeconds(o.bulk_deadline); },
          [](ClientOptions& o, double s) { o.bulk_deadline = ToDuration(s); })
      .def("__repr__", [](const ClientOptions& o) {
        return absl::StrCat("ClientOptions(endpoint='", o.endpoint, "')");
      });

  // Shared so that a Client may be dropped before its checkpointers (the
  // C++ library allows it).
  py::class_<Client, std::shared_ptr<Client>>(m, "Client",
                                              R"doc(A connection to the coordinator.

Thread-safe. Checkpointers made from it stay usable after it is dropped.
)doc")
      .def_static(
          "connect",
          [](std::optional<ClientOptions> options) {
            std::unique_ptr<Client> client =
                ValueOrThrow(Client::Connect(options.value_or(ClientOptions{})));
            return std::shared_ptr<Client>(std::move(client));
          },
          py::arg("options") = py::none(), R"doc(Connects to the coordinator.

The connection is made lazily: an unreachable endpoint is reported by the
first call that needs it (new_checkpointer()).

Args:
  options: a ClientOptions; default: every field from the environment.
Returns:
  A Client.
Raises:
  NotFound: the TLS CA file cannot be read.
Example:
  >>> client = snapback._core.Client.connect()
)doc")
      .def(
          "new_checkpointer",
          [](Client& self, std::optional<CheckpointerOptions> options) {
            CheckpointerOptions o = options.value_or(CheckpointerOptions{});
            absl::StatusOr<std::unique_ptr<Checkpointer>> ck;
            {
              py::gil_scoped_release release;  // registers the job: an RPC
              ck = self.NewCheckpointer(o);
            }
            return WrapCheckpointer(ValueOrThrow(std::move(ck)), o.overlap);
          },
          py::arg("options") = py::none(),
          R"doc(A checkpointer for one rank of one job incarnation.

Registers the job with the coordinator if it is new.

Args:
  options: a CheckpointerOptions; job, rank, world size and incarnation
    default to SNAPBACK_JOB / SNAPBACK_RANK / SNAPBACK_WORLD_SIZE /
    SNAPBACK_INCARNATION.
Returns:
  A Checkpointer.
Raises:
  InvalidArgument: no job id, rank outside the world, bad option values.
  Unavailable: the coordinator cannot be reached.
Example:
  >>> ck = client.new_checkpointer()
)doc");

  m.def(
      "set_log_level",
      [](const std::string& level) {
        LogLevel parsed;
        if (!ParseLogLevel(level, &parsed)) {
          throw py::value_error("unknown log level '" + level +
                                "'; use debug, info, warning, error or off");
        }
        SetLogLevel(parsed);
      },
      py::arg("level"),
      R"doc(Sets the level of the library's own messages (printed on stderr).

Messages below the level are dropped: a refused heartbeat, a failed
background upload, a detector decision. The default is SNAPBACK_LOG_LEVEL,
else "info".

Args:
  level: "debug", "info", "warning", "error" or "off".
Raises:
  ValueError: an unknown level.
Example:
  >>> snapback.set_log_level("warning")
)doc");
  m.def(
      "get_log_level", [] { return std::string(LogLevelName(GetLogLevel())); },
      "The level set by set_log_level (or SNAPBACK_LOG_LEVEL): a level name.");
}

}  // namespace snapback::python
