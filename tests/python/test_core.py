"""The core API (snapback._core through the snapback package) against a real
server: every dtype round-trips bit for bit, caller memory is read without a
copy and held exactly as long as needed, and every error class is its own
exception type."""

from __future__ import annotations

import gc
import os
import socket
import sys
import zlib

import numpy as np
import pytest

import snapback
from snapback import _core

# Every dtype snapback stores, with numpy's name for it (bfloat16 has none:
# its bit patterns travel as uint16 with dtype="bfloat16").
DTYPES = {
    "float32": np.float32,
    "bfloat16": np.uint16,
    "float16": np.float16,
    "float64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


def sample(dtype: str, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    npd = DTYPES[dtype]
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    # Random bit patterns: every byte value, NaN payloads and -0.0 included.
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(npd).itemsize
    return np.frombuffer(rng.bytes(n), dtype=npd).reshape(shape).copy()


def connect(server, job, **options) -> snapback.Checkpointer:
    return snapback.connect(server.endpoint, job=job, **options)


@pytest.mark.parametrize("overlap", [False, True])
def test_every_dtype_round_trips(server, job, overlap):
    shapes = [(), (0,), (1,), (3, 5), (1000, 7)]  # scalar, empty, uneven tails
    tensors = {}
    for dtype in DTYPES:
        for i, shape in enumerate(shapes):
            arr = sample(dtype, shape, seed=zlib.crc32(f"{dtype}/{i}".encode()))
            tensors[f"{dtype}/{i}"] = snapback.Tensor(arr, dtype=dtype)
    # A tensor larger than one chunk, and plain buffers without a wrapper.
    big = sample("float32", (3, 1 << 19), seed=7)
    tensors["big"] = big
    tensors["raw_bytes"] = b"\x00\x01\xfe\xff" * 3
    tensors["bytearray"] = bytearray(b"snapback")
    blobs = {"empty": b"", "meta": b"\x00" * 10 + bytes(range(256))}
    with connect(server, job, overlap=overlap, chunk_bytes=1 << 20) as ck:
        assert ck.latest_step() is None
        h = ck.save(3, tensors, blobs=blobs)
        stats = h.result(timeout=120)
        assert h.done() and stats.step == 3 and stats.checkpoint_committed
        assert stats.logical_bytes == sum(
            memoryview(t.data if isinstance(t, snapback.Tensor) else t).nbytes
            for t in tensors.values()) + sum(len(b) for b in blobs.values())
        assert ck.latest_step() == 3

        # Library-owned: buffers with the right format, shape and bytes.
        r = ck.restore()
        assert r.step == 3 and r.blobs == blobs
        for name, t in tensors.items():
            if isinstance(t, snapback.Tensor):
                want = t.data
            elif isinstance(t, np.ndarray):
                want = t
            else:
                want = np.frombuffer(t, np.uint8)
            got = r.tensors[name]
            if isinstance(t, snapback.Tensor):
                assert got.dtype == t.dtype
            assert got.shape == list(np.shape(want))
            arr = np.asarray(got)
            assert arr.dtype == np.asarray(want).dtype
            assert arr.tobytes() == np.asarray(want).tobytes(), name
        assert r.tensors["big"].dtype == "float32"

        # Into caller memory: the same bytes, in place.
        targets, homes = {}, {}
        for name, t in tensors.items():
            if isinstance(t, snapback.Tensor):
                home = np.zeros_like(t.data)
                targets[name] = snapback.Tensor(home, dtype=t.dtype)
            elif isinstance(t, np.ndarray):
                home = targets[name] = np.zeros_like(t)
            else:
                home = targets[name] = bytearray(len(t))
            homes[name] = home
        r2 = ck.restore_into(targets)
        assert r2.step == 3 and r2.blobs == blobs
        assert not r2.tensors["big"].has_data
        for name, t in tensors.items():
            want = t.data if isinstance(t, snapback.Tensor) else t
            assert memoryview(homes[name]).tobytes() == memoryview(want).tobytes(), name


def test_restored_memory_outlives_the_result(server, job):
    w = sample("float32", (256, 256), 1)
    with connect(server, job) as ck:
        ck.save(1, {"w": w}).result(timeout=60)
        arr = np.asarray(ck.restore().tensors["w"])
    gc.collect()  # the result and checkpointer are gone; the array owns the bytes
    assert arr.tobytes() == w.tobytes()


def test_overlap_mode_holds_buffers_until_the_copy_is_done(server, job):
    w = sample("float32", (1 << 20,), 2)
    unheld = sys.getrefcount(w)
    with connect(server, job, overlap=True) as ck:
        h = ck.save(1, {"w": w})
        # Still exported: the held buffer references the array.
        assert ck._held_saves == 1 and sys.getrefcount(w) == unheld + 1
        ck.wait_snapshot()
        assert ck._held_saves == 0 and sys.getrefcount(w) == unheld
        h.result(timeout=60)
        # Neither the caller's references nor the handle keep the array
        # alive here: the checkpointer does, until the copy is over.
        ck.save(2, {"w": sample("float32", (1 << 22,), 3)})
        gc.collect()
        ck.flush()
        assert ck._held_saves == 0
        want = sample("float32", (1 << 22,), 3)
        assert np.asarray(ck.restore(2).tensors["w"]).tobytes() == want.tobytes()


def test_handle_api_and_incremental_figures(server, job):
    w = sample("float32", (4, 1 << 18), 4)  # 4 MiB: 4 chunks of 1 MiB
    with connect(server, job, chunk_bytes=1 << 20, compress=False) as ck:
        s1 = ck.save(1, {"w": w}).result(timeout=60)
        assert s1.chunks == 4 and s1.new_bytes == w.nbytes and s1.sent_bytes == w.nbytes
        assert s1.blocked >= 0 and s1.to_commit >= s1.to_durable > 0
        w.view(np.uint32)[1, 0] ^= 1  # one chunk changes
        h = ck.save(2, {"w": w})
        assert repr(h).startswith("SaveHandle(step=2")
        s2 = h.result()
        assert s2.chunks_unchanged == 3 and s2.new_bytes == w.nbytes // 4
        assert h.stats.step == 2 and h.step == 2


def test_tensor_wrapper_shapes_and_shards(server, job):
    raw = sample("bfloat16", (6, 4), 5)
    t = snapback.Tensor(raw.view(np.uint8), dtype="bfloat16", shape=[6, 4],
                        global_shape=[12, 4], global_offset=[6, 0])
    assert t.dtype == "bfloat16" and t.shape == [6, 4] and t.global_shape == [12, 4]
    with connect(server, job) as ck:
        ck.save(1, {"shard": t}).result(timeout=60)
        got = ck.restore().tensors["shard"]
        assert (got.dtype, got.shape, got.global_shape, got.global_offset) == (
            "bfloat16", [6, 4], [12, 4], [6, 0])
        assert np.asarray(got).tobytes() == raw.tobytes()


# -- errors: one exception type per status code --------------------------------

ERRORS = {
    "CANCELLED": (snapback.Cancelled, None),
    "UNKNOWN": (snapback.Unknown, None),
    "INVALID_ARGUMENT": (snapback.InvalidArgument, ValueError),
    "DEADLINE_EXCEEDED": (snapback.DeadlineExceeded, TimeoutError),
    "NOT_FOUND": (snapback.NotFound, LookupError),
    "ALREADY_EXISTS": (snapback.AlreadyExists, None),
    "PERMISSION_DENIED": (snapback.PermissionDenied, PermissionError),
    "RESOURCE_EXHAUSTED": (snapback.ResourceExhausted, None),
    "FAILED_PRECONDITION": (snapback.FailedPrecondition, None),
    "ABORTED": (snapback.Aborted, None),
    "OUT_OF_RANGE": (snapback.OutOfRange, None),
    "UNIMPLEMENTED": (snapback.Unimplemented, NotImplementedError),
    "INTERNAL": (snapback.Internal, None),
    "UNAVAILABLE": (snapback.Unavailable, ConnectionError),
    "DATA_LOSS": (snapback.DataLoss, None),
    "UNAUTHENTICATED": (snapback.Unauthenticated, None),
}


def test_error_classes_are_distinct_and_pythonic():
    classes = [cls for cls, _ in ERRORS.values()]
    assert len(set(classes)) == len(classes) == 16
    for code, (cls, builtin) in ERRORS.items():
        assert issubclass(cls, snapback.Error) and cls.__module__ == "snapback"
        assert cls.code == code and cls("raised from Python").code == code
        if builtin is not None:
            assert issubclass(cls, builtin)
        for other in classes:
            assert other is cls or not issubclass(cls, other), (cls, other)


def close_quietly(ck) -> None:
    """Closes `ck`, whose last save failed on purpose (close reports it too)."""
    try:
        ck.close()
    except snapback.Error:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_invalid_argument(server, job):
    with connect(server, job) as ck:
        cases = [
            ({"w": np.zeros((4, 4), np.float32)[:, ::2]}, "not C-contiguous"),
            ({"w": object()}, "gives no buffer"),
            ({"w": np.zeros(3, np.uint64)}, "has no snapback dtype"),
            ({1: np.zeros(3, np.float32)}, "names must be str"),
            ({"w": snapback.Tensor(np.zeros(3, np.float32), shape=[4])}, "needs 16 bytes"),
        ]
        for tensors, message in cases:
            with pytest.raises(snapback.InvalidArgument, match=message) as e:
                ck.save(1, tensors)
            assert e.value.code == "INVALID_ARGUMENT"
        with pytest.raises(snapback.InvalidArgument, match="unknown dtype"):
            snapback.Tensor(b"", dtype="complex64")
        ck.save(5, {"w": np.zeros(3, np.float32)}).result(timeout=60)
        with pytest.raises(ValueError, match="steps must grow"):  # also a ValueError
            ck.save(5, {"w": np.zeros(3, np.float32)})
        with pytest.raises(snapback.InvalidArgument, match="no restore target"):
            ck.restore_into({"x": np.zeros(3, np.float32)})  # nothing is written
        with pytest.raises(snapback.InvalidArgument, match="not writable|writable"):
            ck.restore_into({"w": b"\x00" * 12})
    with pytest.raises(TypeError, match="unknown checkpointer option"):
        snapback.connect(server.endpoint, job=job, no_such_option=1)
    with pytest.raises(snapback.InvalidArgument, match="no job id"):
        snapback.connect(server.endpoint, job="")


def test_not_found(server, job):
    with connect(server, job) as ck:
        with pytest.raises(snapback.NotFound, match="no committed checkpoint") as e:
            ck.restore()
        assert isinstance(e.value, LookupError) and e.value.code == "NOT_FOUND"


def test_failed_precondition_closed_and_stale_incarnation(server, job):
    ck = connect(server, job)
    ck.close()
    ck.close()  # idempotent
    with pytest.raises(snapback.FailedPrecondition, match="closed"):
        ck.save(1, {"w": b"x"})
    old = connect(server, job, incarnation=1)
    with connect(server, job, incarnation=2) as new:
        new.save(1, {"w": b"new"}).result(timeout=60)
        # The old incarnation is fenced: on the handle or on the call.
        with pytest.raises(snapback.FailedPrecondition, match="stale incarnation"):
            old.save(2, {"w": b"old"}).result(timeout=60)
    close_quietly(old)


def test_already_exists(server, job):
    with connect(server, job, incarnation=1) as ck:
        ck.save(7, {"w": b"x"}).result(timeout=60)
    # A later run that saves a step already committed.
    ck = connect(server, job, incarnation=2)
    with pytest.raises(snapback.AlreadyExists, match="already COMMITTED"):
        ck.save(7, {"w": b"y"}).result(timeout=60)
    close_quietly(ck)


def test_unavailable():
    with pytest.raises(snapback.Unavailable) as e:
        snapback.connect(f"127.0.0.1:{free_port()}", job="nobody", rpc_deadline=5)
    assert isinstance(e.value, ConnectionError) and e.value.code == "UNAVAILABLE"


def test_deadline_exceeded(server, job):
    # A peer that accepts TCP connections and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = "127.0.0.1:%d" % silent.getsockname()[1]
        with pytest.raises(snapback.DeadlineExceeded) as e:
            snapback.connect(endpoint, job=job, rpc_deadline=0.5)
    assert isinstance(e.value, TimeoutError) and e.value.code == "DEADLINE_EXCEEDED"
    with connect(server, job) as ck:
        ck.save(1, {"w": sample("uint8", (1 << 20,), 9)})
        with pytest.raises(TimeoutError):  # a save still running...
            ck.save(2, {"w": sample("uint8", (64 << 20,), 10)}).result(timeout=0)
        ck.flush()  # ...continues and completes


def test_data_loss(fresh_server, job):
    # Random bytes are stored raw; flip one byte of them on disk.
    payload = sample("uint8", (1 << 16,), 11)
    with connect(fresh_server, job, compress=False) as ck:
        ck.save(1, {"w": payload}).result(timeout=60)
    needle = payload[1000:1064].tobytes()
    hits = 0
    for root, _, files in os.walk(os.path.join(fresh_server.data_dir, "node")):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                data = fh.read()
                at = data.find(needle)
                if at >= 0:
                    fh.seek(at)
                    fh.write(bytes([data[at] ^ 0xFF]))
                    hits += 1
    assert hits == 1, "the chunk's bytes should be in exactly one segment file"
    with connect(fresh_server, job) as ck:
        with pytest.raises(snapback.DataLoss, match="no good copy") as e:
            ck.restore()
        assert e.value.code == "DATA_LOSS"


def test_log_level_is_set_validated_and_read_back():
    before = snapback.get_log_level()
    try:
        snapback.set_log_level("WARNING")
        assert snapback.get_log_level() == "warning"
        snapback.set_log_level("off")
        assert snapback.get_log_level() == "off"
        with pytest.raises(ValueError, match="unknown log level 'loud'"):
            snapback.set_log_level("loud")
        assert snapback.get_log_level() == "off"
    finally:
        snapback.set_log_level(before)
