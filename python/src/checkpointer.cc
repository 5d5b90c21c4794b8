// snapback::Checkpointer, SaveHandle, SaveStats, RestoreResult and
// CheckpointerOptions (include/snapback/client.h).
//
// Lifetime of caller memory: Save() reads the caller's buffers until the
// save's snapshot copy is done, which in overlap mode is after Save()
// returns. The Python Checkpointer therefore keeps those buffers exported
// (HeldBuffers) until it knows the copy is over: the next successful save()
// (the C++ Save() waits for the previous snapshot first), wait_snapshot(),
// flush(), close(), or the save being done. A dropped SaveHandle therefore
// never frees memory C++ still reads.
//
// Interpreter shutdown: the package's atexit hook calls _close_all(), which
// closes every live checkpointer with the GIL released while its uploads
// finish; the library's threads never call into Python, so nothing can
// deadlock on the GIL or touch a finalized interpreter.
#include <pybind11/stl.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "python/src/bindings.h"

namespace snapback::python {
namespace {

// Releases the GIL for a blocking call, except while the interpreter is
// finalizing (a destructor run by Py_Finalize): no other Python thread can
// run then, and the C++ call needs no Python.
class BlockingCall {
 public:
  BlockingCall() {
#if PY_VERSION_HEX >= 0x030D0000
    const bool finalizing = Py_IsFinalizing();
#else
    const bool finalizing = _Py_IsFinalizing();
#endif
    if (!finalizing) release_.emplace();
  }

 private:
  std::optional<py::gil_scoped_release> release_;
};

// The future of one save.
struct PySaveHandle {
  SaveHandle handle;
};

// What restore() and restore_into() return. Holds Python objects: created
// and destroyed with the GIL held.
struct PyRestoreResult {
  int64_t step = -1;
  uint64_t bytes = 0;
  double elapsed = 0;
  py::dict tensors;
  py::dict blobs;
};

PyRestoreResult ToPython(RestoreResult r) {
  PyRestoreResult out;
  out.step = r.step;
  out.bytes = r.bytes;
  out.elapsed = ToSeconds(r.elapsed);
  for (RestoredTensor& t : r.tensors) {
    const std::string name = t.name;
    out.tensors[py::str(name)] = WrapRestoredTensor(std::move(t));
  }
  for (RestoredBlob& b : r.blobs) out.blobs[py::str(b.name)] = py::bytes(b.bytes);
  return out;
}

std::string KeyName(py::handle key, const char* what) {
  if (!py::isinstance<py::str>(key)) {
    RaiseStatus(absl::InvalidArgumentError(
        absl::StrCat(what, " names must be str, got ", Py_TYPE(key.ptr())->tp_name)));
  }
  return key.cast<std::string>();
}

class PyCheckpointer;
// Live checkpointers, for _close_all() at exit. Guarded by the GIL; never
// destroyed (it may be used during finalization).
std::set<PyCheckpointer*>* LiveCheckpointers() {
  static auto* live = new std::set<PyCheckpointer*>();
  return live;
}

class PyCheckpointer {
 public:
  PyCheckpointer(std::unique_ptr<Checkpointer> ck, bool overlap)
      : ck_(std::move(ck)), overlap_(overlap) {
    LiveCheckpointers()->insert(this);
  }
  PyCheckpointer(const PyCheckpointer&) = delete;
  PyCheckpointer& operator=(const PyCheckpointer&) = delete;

  ~PyCheckpointer() {
    LiveCheckpointers()->erase(this);
    {
      BlockingCall blocking;
      if (!closed_) (void)ck_->Close();
      ck_.reset();  // joins the library's threads
    }
    pending_.clear();  // with the GIL: releases Python buffers
  }

  PySaveHandle Save(int64_t step, py::handle tensors, py::handle blobs) {
    CheckOpen();
    Prune();
    auto held = std::make_unique<HeldBuffers>();
    std::vector<TensorView> tensor_views;
    std::vector<BlobView> blob_views;
    py::dict tensor_map(py::reinterpret_borrow<py::object>(tensors));
    for (auto [key, value] : tensor_map) {
      tensor_views.push_back(ToTensorView(KeyName(key, "tensor"), value, held.get()));
    }
    if (!blobs.is_none()) {
      py::dict blob_map(py::reinterpret_borrow<py::object>(blobs));
      for (auto [key, value] : blob_map) {
        blob_views.push_back(ToBlobView(KeyName(key, "blob"), value, held.get()));
      }
    }
    absl::StatusOr<SaveHandle> handle;
    {
      BlockingCall blocking;
      handle = ck_->Save(step, tensor_views, blob_views);
    }
    ThrowIfError(handle.status());
    // Success means the C++ Save() waited for every earlier snapshot.
    pending_.clear();
    if (overlap_) pending_.push_back({*handle, std::move(held)});
    return PySaveHandle{*handle};
  }

  void WaitSnapshot() {
    CheckOpen();
    absl::Status s;
    {
      BlockingCall blocking;
      s = ck_->WaitSnapshot();
    }
    pending_.clear();
    ThrowIfError(s);
  }

  void Flush() {
    CheckOpen();
    absl::Status s;
    {
      BlockingCall blocking;
      s = ck_->Flush();
    }
    pending_.clear();
    ThrowIfError(s);
  }

  std::optional<int64_t> LatestStep() {
    CheckOpen();
    absl::StatusOr<std::optional<int64_t>> latest;
    {
      BlockingCall blocking;
      latest = ck_->LatestStep();
    }
    return ValueOrThrow(std::move(latest));
  }

  PyRestoreResult Restore(std::optional<int64_t> step) {
    CheckOpen();
    absl::StatusOr<RestoreResult> r;
    {
      BlockingCall blocking;
      r = ck_->Restore(step);
    }
    return ToPython(ValueOrThrow(std::move(r)));
  }

  PyRestoreResult RestoreInto(py::handle targets, std::optional<int64_t> step) {
    CheckOpen();
    HeldBuffers held;
    std::vector<MutableTensorView> views;
    py::dict target_map(py::reinterpret_borrow<py::object>(targets));
    for (auto [key, value] : target_map) {
      views.push_back(ToMutableTensorView(KeyName(key, "target"), value, &held));
    }
    absl::StatusOr<RestoreResult> r;
    {
      BlockingCall blocking;
      r = ck_->RestoreInto(views, step);
    }
    return ToPython(ValueOrThrow(std::move(r)));
  }

  void ReportStep(int64_t step) {
    CheckOpen();
    ck_->ReportStep(step);  // an atomic store: no need to release the GIL
  }

  // Idempotent; the first call's status.
  absl::Status CloseStatus() {
    if (closed_) return absl::OkStatus();
    closed_ = true;
    absl::Status s;
    {
      BlockingCall blocking;
      s = ck_->Close();
    }
    pending_.clear();
    return s;
  }
  void Close() { ThrowIfError(CloseStatus()); }

  bool closed() const { return closed_; }
  bool overlap() const { return overlap_; }
  size_t held_saves() const { return pending_.size(); }

 private:
  void CheckOpen() const {
    if (closed_) {
      RaiseStatus(absl::FailedPreconditionError(
          "checkpointer is closed; open a new one with snapback.connect()"));
    }
  }
  // Drops the buffers of saves that are over.
  void Prune() {
    std::erase_if(pending_, [](const Pending& p) { return p.handle.Done(); });
  }

  struct Pending {
    SaveHandle handle;
    std::unique_ptr<HeldBuffers> held;
  };
  std::unique_ptr<Checkpointer> ck_;
  const bool overlap_;
  bool closed_ = false;           // guarded by the GIL
  std::vector<Pending> pending_;  // guarded by the GIL
};

// result(): waits in slices so Ctrl-C (a pending signal) interrupts it.
SaveStats WaitResult(const SaveHandle& h, std::optional<double> timeout) {
  const absl::Time deadline =
      timeout.has_value() ? absl::Now() + ToDuration(*timeout) : absl::InfiniteFuture();
  while (!h.Done()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      RaiseStatus(absl::DeadlineExceededError(
          absl::StrCat("save of step ", h.step(), " still running after ", *timeout,
                       " s; it continues in the background (result() again to wait)")));
    }
    {
      BlockingCall blocking;
      (void)h.WaitFor(std::min(left, absl::Milliseconds(100)));
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
  ThrowIfError(h.Wait());  // done: returns at once
  return h.stats();
}

}  // namespace

py::object WrapCheckpointer(std::unique_ptr<Checkpointer> ck, bool overlap) {
  return py::cast(std::make_unique<PyCheckpointer>(std::move(ck), overlap));
}

void RegisterCheckpointer(py::module_& m) {
  py::class_<CheckpointerOptions>(m, "CheckpointerOptions",
                                  R"doc(Options of Client.new_checkpointer().

Every field and its default is documented in include/snapback/client.h:
job_id [$SNAPBACK_JOB], rank [$SNAPBACK_RANK or 0; -1 = from the
environment], world_size [$SNAPBACK_WORLD_SIZE or 1; 0 = from the
environment], incarnation [$SNAPBACK_INCARNATION, else the job's at the
coordinator; -1 = that default], heartbeat_interval [seconds between
heartbeats to the failure detector, 0 = off; $SNAPBACK_HEARTBEAT_MS, else 1;
negative = that default], chunk_bytes [4 MiB], staging_bytes [1 GiB; twice the checkpoint
for save() to block only for the copy], copy_threads [2], pipeline_threads [2],
upload_streams [2], max_inflight [1], busy_policy ["wait" or "skip"; "wait"],
overlap [False: save() returns after the copy; True: before it, and the
caller must wait_snapshot() before mutating the tensors], compress [True],
min_compress_saving [0.25], zstd_level [1], restore_threads [4].
)doc")
      .def(py::init<>())
      .def_readwrite("job_id", &CheckpointerOptions::job_id)
      .def_readwrite("rank", &CheckpointerOptions::rank)
      .def_readwrite("world_size", &CheckpointerOptions::world_size)
      .def_readwrite("incarnation", &CheckpointerOptions::incarnation)
      .def_property(
          "heartbeat_interval",
          [](const CheckpointerOptions& o) { return ToSeconds(o.heartbeat_interval); },
          [](CheckpointerOptions& o, double seconds) {
            // Negative: from $SNAPBACK_HEARTBEAT_MS, else 1 s (the C++ default).
            o.heartbeat_interval =
                seconds < 0 ? absl::Milliseconds(-1) : ToDuration(seconds);
          })
      .def_readwrite("chunk_bytes", &CheckpointerOptions::chunk_bytes)
      .def_readwrite("staging_bytes", &CheckpointerOptions::staging_bytes)
      .def_readwrite("copy_threads", &CheckpointerOptions::copy_threads)
      .def_readwrite("pipeline_threads", &CheckpointerOptions::pipeline_threads)
      .def_readwrite("upload_streams", &CheckpointerOptions::upload_streams)
      .def_readwrite("max_inflight", &CheckpointerOptions::max_inflight)
      .def_property(
          "busy_policy",
          [](const CheckpointerOptions& o) {
            return o.busy_policy == BusyPolicy::kSkip ? "skip" : "wait";
          },
          [](CheckpointerOptions& o, const std::string& v) {
            if (v != "wait" && v != "skip") {
              RaiseStatus(absl::InvalidArgumentError(
                  absl::StrCat("busy_policy must be 'wait' or 'skip', got '", v, "'")));
            }
            o.busy_policy = v == "skip" ? BusyPolicy::kSkip : BusyPolicy::kWait;
          })
      .def_readwrite("overlap", &CheckpointerOptions::overlap)
      .def_readwrite("compress", &CheckpointerOptions::compress)
      .def_readwrite("min_compress_saving", &CheckpointerOptions::min_compress_saving)
      .def_readwrite("zstd_level", &CheckpointerOptions::zstd_level)
      .def_readwrite("restore_threads", &CheckpointerOptions::restore_threads);

  py::class_<SaveStats>(m, "SaveStats", R"doc(Figures of one save (final once it is done).

Durations are in seconds. `blocked` is the time save() blocked its caller;
`snapshot` the copy into staging; `to_durable` / `to_commit` run from the
save() call until every chunk was durable / this rank's manifest committed.
)doc")
      .def_readonly("step", &SaveStats::step)
      .def_readonly("skipped", &SaveStats::skipped)
      .def_readonly("logical_bytes", &SaveStats::logical_bytes)
      .def_readonly("chunks", &SaveStats::chunks)
      .def_readonly("chunks_unchanged", &SaveStats::chunks_unchanged)
      .def_readonly("chunks_present", &SaveStats::chunks_present)
      .def_readonly("new_bytes", &SaveStats::new_bytes)
      .def_readonly("sent_bytes", &SaveStats::sent_bytes)
      .def_property_readonly("blocked",
                             [](const SaveStats& s) { return ToSeconds(s.blocked); })
      .def_property_readonly("snapshot",
                             [](const SaveStats& s) { return ToSeconds(s.snapshot); })
      .def_property_readonly("to_durable",
                             [](const SaveStats& s) { return ToSeconds(s.to_durable); })
      .def_property_readonly("to_commit",
                             [](const SaveStats& s) { return ToSeconds(s.to_commit); })
      .def_readonly("checkpoint_committed", &SaveStats::checkpoint_committed)
      .def("__repr__", [](const SaveStats& s) {
        return absl::StrCat(
            "SaveStats(step=", s.step, ", logical_bytes=", s.logical_bytes,
            ", new_bytes=", s.new_bytes, ", sent_bytes=", s.sent_bytes,
            ", blocked=", ToSeconds(s.blocked), ", to_commit=", ToSeconds(s.to_commit),
            ", checkpoint_committed=", s.checkpoint_committed ? "True" : "False", ")");
      });

  py::class_<PySaveHandle>(m, "SaveHandle", R"doc(The future of one save().

Thread-safe. A failure in the background is raised by result() and also by
the checkpointer's next save().
)doc")
      .def(
          "result",
          [](const PySaveHandle& h, std::optional<double> timeout) {
            return WaitResult(h.handle, timeout);
          },
          py::arg("timeout") = py::none(), R"doc(Waits for the save to finish.

Args:
  timeout: seconds to wait; None waits until it is done.
Returns:
  The save's SaveStats (uploaded, this rank's manifest committed).
Raises:
  DeadlineExceeded: still running after `timeout` (also a TimeoutError).
  Error: the save failed; the subclass says why (Unavailable, Aborted,
    FailedPrecondition for a stale incarnation, ...).
Example:
  >>> stats = ck.save(10, tensors).result(timeout=60)
)doc")
      .def(
          "done", [](const PySaveHandle& h) { return h.handle.Done(); },
          R"doc(True once the save has finished (committed, failed or skipped).

Returns:
  bool; never blocks.
)doc")
      .def(
          "wait_snapshot",
          [](const PySaveHandle& h) {
            absl::Status s;
            {
              BlockingCall blocking;
              s = h.handle.WaitSnapshot();
            }
            ThrowIfError(s);
          },
          R"doc(Blocks until this save's snapshot copy is complete.

After it returns the tensors given to save() may be mutated again.

Raises:
  Error: the copy failed.
)doc")
      .def_property_readonly(
          "stats", [](const PySaveHandle& h) { return h.handle.stats(); },
          "SaveStats so far (final once done()).")
      .def_property_readonly("step",
                             [](const PySaveHandle& h) { return h.handle.step(); })
      .def("__repr__", [](const PySaveHandle& h) {
        return absl::StrCat("SaveHandle(step=", h.handle.step(),
                            ", done=", h.handle.Done() ? "True" : "False", ")");
      });

  py::class_<PyRestoreResult>(m, "RestoreResult", R"doc(A restored checkpoint of one rank.

Attributes:
  step: the restored step.
  bytes: bytes restored (tensors + blobs).
  elapsed: seconds the restore took.
  tensors: name -> RestoredTensor, in manifest order.
  blobs: name -> bytes.
)doc")
      .def_readonly("step", &PyRestoreResult::step)
      .def_readonly("bytes", &PyRestoreResult::bytes)
      .def_readonly("elapsed", &PyRestoreResult::elapsed)
      .def_readonly("tensors", &PyRestoreResult::tensors)
      .def_readonly("blobs", &PyRestoreResult::blobs)
      .def("__repr__", [](const PyRestoreResult& r) {
        return absl::StrCat("RestoreResult(step=", r.step, ", bytes=", r.bytes,
                            ", tensors=", py::len(r.tensors),
                            ", blobs=", py::len(r.blobs), ")");
      });

  py::class_<PyCheckpointer>(m, "Checkpointer",
                             R"doc(Checkpoints of one rank of one job incarnation.

Made by snapback.connect() or Client.new_checkpointer(). Thread-safe, but
saves are meant to come from one training loop. Closing it (close(), `with`,
garbage collection or interpreter exit) waits for the saves in flight.
)doc")
      .def("save", &PyCheckpointer::Save, py::arg("step"), py::arg("tensors"),
           py::arg("blobs") = py::none(),
           R"doc(Snapshots tensors and blobs and uploads them in the background.

The tensors' bytes are read straight from their buffers (no copy in
Python) into the library's staging memory; upload, dedup and the commit run
in the background. Without overlap mode save() returns once the copy is
done; in overlap mode it returns at once, and the caller must not mutate the
tensors before wait_snapshot() (or this handle's wait_snapshot()). The
buffers stay exported (numpy arrays cannot be resized) until the copy is
known to be over.

Args:
  step: training step; must grow from save to save.
  tensors: mapping name -> numpy array / buffer / snapback.Tensor,
    C-contiguous.
  blobs: mapping name -> bytes-like (opaque bytes: RNG state, structure).
Returns:
  A SaveHandle.
Raises:
  InvalidArgument: a bad tensor (no buffer, not contiguous, unknown format,
    duplicate name) or a step that does not grow.
  Error: an earlier save failed in the background (its error, once).
  FailedPrecondition: the checkpointer is closed.
Example:
  >>> h = ck.save(100, {"w": weights, "b": bias}, blobs={"meta": b"..."})
  >>> h.result().sent_bytes
)doc")
      .def("wait_snapshot", &PyCheckpointer::WaitSnapshot,
           R"doc(Overlap mode: blocks until the last save's snapshot copy is done.

Call it before mutating tensors given to save() (e.g. before the next
optimizer step). Returns at once without overlap mode or a save.

Raises:
  Error: the copy failed.
)doc")
      .def("flush", &PyCheckpointer::Flush, R"doc(Waits for every save in flight.

Raises:
  Error: the first failure not reported yet.
)doc")
      .def("latest_step", &PyCheckpointer::LatestStep,
           R"doc(The step restore() would return.

Returns:
  The operator's restore target or the latest committed step; None for a
  job with no checkpoint.
Raises:
  Unavailable: the coordinator cannot be reached.
)doc")
      .def("restore", &PyCheckpointer::Restore, py::arg("step") = py::none(),
           R"doc(Restores this rank's part of a checkpoint into library-owned memory.

Every byte is SHA-256 verified. Prefer restore_into() when the destination
memory exists: it saves an allocation and a copy.

Args:
  step: the step; None = latest_step().
Returns:
  A RestoreResult whose tensors support the buffer protocol.
Raises:
  NotFound: nothing to restore.
  DataLoss: a chunk has no good copy.
Example:
  >>> r = ck.restore()
  >>> w = numpy.asarray(r.tensors["w"])
)doc")
      .def("restore_into", &PyCheckpointer::RestoreInto, py::arg("targets"),
           py::arg("step") = py::none(),
           R"doc(Restores tensors straight into the caller's memory.

Every tensor of the checkpoint needs a target of the same name, dtype and
shape, and every target a tensor; this is checked before anything is
written. Blobs come back library-owned.

Args:
  targets: mapping name -> writable C-contiguous buffer / snapback.Tensor.
  step: the step; None = latest_step().
Returns:
  A RestoreResult (its tensors carry metadata only).
Raises:
  InvalidArgument: targets and checkpoint do not match (nothing written).
  NotFound: nothing to restore.
  DataLoss: a chunk has no good copy (its bytes are left zeroed).
Example:
  >>> ck.restore_into({"w": weights})
)doc")
      .def("report_step", &PyCheckpointer::ReportStep, py::arg("step"),
           R"doc(Tells the failure detector this rank reached training step `step`.

Cheap (no RPC): the heartbeat sends the latest value; a step that stops
advancing is reported as a hang.

Args:
  step: the current training step.
)doc")
      .def("close", &PyCheckpointer::Close,
           R"doc(Waits for the saves in flight and stops the background threads.

Idempotent. Later calls other than close() raise FailedPrecondition.

Raises:
  Error: a save in flight failed.
)doc")
      .def_property_readonly("closed", &PyCheckpointer::closed)
      .def_property_readonly("overlap", &PyCheckpointer::overlap)
      .def_property_readonly("_held_saves", &PyCheckpointer::held_saves,
                             "Saves whose buffers are still exported (tests).")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyCheckpointer& self, py::handle, py::handle, py::handle) {
        self.Close();
      });

  m.def(
      "_close_all",
      [] {
        // Copy: Close() releases the GIL, and another thread may then
        // create or drop checkpointers.
        std::vector<PyCheckpointer*> live(LiveCheckpointers()->begin(),
                                          LiveCheckpointers()->end());
        std::vector<std::string> errors;
        for (PyCheckpointer* ck : live) {
          if (!LiveCheckpointers()->count(ck)) continue;
          // A reference keeps it alive while Close() runs without the GIL.
          py::object keep = py::cast(ck, py::return_value_policy::reference);
          absl::Status s = ck->CloseStatus();
          if (!s.ok()) errors.push_back(s.ToString());
        }
        return errors;
      },
      "Closes every live checkpointer (the atexit hook). Returns the errors.");
}

}  // namespace snapback::python
