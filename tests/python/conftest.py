"""Fixtures of the Python tests: a real snapback-server on 127.0.0.1:0.

The server binary comes from $SNAPBACK_BIN_DIR (ctest sets it to the build
tree's bin/); the package from PYTHONPATH (ctest: the build tree's python/).
Run by hand:

    SNAPBACK_BIN_DIR=build/dev/bin PYTHONPATH=build/dev/python \\
        /usr/bin/python3 -m pytest -q tests/python
"""

from __future__ import annotations

import itertools
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLE = os.path.join(ROOT, "examples", "train_mlp.py")


def bin_dir() -> str:
    d = os.environ.get("SNAPBACK_BIN_DIR")
    if not d:
        pytest.fail("set SNAPBACK_BIN_DIR to the build tree's bin/ (ctest does)")
    return d


class Server:
    """snapback-server (coordinator + storage) on a fresh data dir."""

    def __init__(self, data_dir: str, *flags: str) -> None:
        self.data_dir = data_dir
        self.log_path = os.path.join(data_dir, "server.log")
        ready = os.path.join(data_dir, "ready")
        cmd = [os.path.join(bin_dir(), "snapback-server"), "--data-dir",
               os.path.join(data_dir, "node"), "--listen", "127.0.0.1:0",
               "--ready-file", ready, "--gc-interval", "0", *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # The ready file is written before the "listening" line: wait for the
        # line (with a deadline), then read the port.
        line = read_line_until(self.proc, "listening", deadline=time.monotonic() + 60)
        if line is None:
            self.proc.kill()
            pytest.fail(f"snapback-server did not start: {self.proc.stdout.read()!r}")
        with open(ready) as f:
            self.port = int(f.read().strip())
        self.endpoint = f"127.0.0.1:{self.port}"
        self._drain = threading.Thread(target=self._drain_output, daemon=True)
        self._drain.start()

    def _drain_output(self) -> None:
        with open(self.log_path, "ab") as log:
            for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
                log.write(chunk)
                log.flush()

    def stop(self) -> None:
        # A throwaway: SIGKILL. (A graceful SIGTERM waits out the server's
        # 10 s shutdown grace while this process still holds channels.)
        self.proc.kill()
        self.proc.wait()

    def stats(self) -> Dict[str, int]:
        """The storage tier's chunk store figures (StorageService.Stat)."""
        return storage_stats(self.endpoint)


def read_line_until(proc: subprocess.Popen, needle: str, deadline: float) -> Optional[str]:
    """Reads proc's stdout lines until one contains `needle` or the deadline."""
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        data = os.read(fd, 4096)
        if not data:
            return None
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if needle.encode() in line:
                return line.decode(errors="replace")
    return None


def storage_stats(endpoint: str) -> Dict[str, int]:
    """Calls snapback.v1.StorageService/Stat with hand-encoded protobuf
    (StatRequest is empty; StatResponse's figures are uint64 fields)."""
    import grpc

    names = {1: "chunks", 2: "raw_bytes", 3: "encoded_bytes", 4: "live_bytes",
             5: "file_bytes", 6: "segments", 7: "puts", 8: "dedup_hits"}
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary("/snapback.v1.StorageService/Stat",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        raw = call(b"", timeout=30)
    out = {name: 0 for name in names.values()}
    i = 0
    while i < len(raw):
        key, i = _varint(raw, i)
        field, wire = key >> 3, key & 7
        value, i = _varint(raw, i)
        if wire == 2:  # length-delimited (io_mode): skip
            i += value
        elif field in names:
            out[names[field]] = value
    return out


def _varint(b: bytes, i: int):
    shift = value = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="snapback-pytest-") as d:
        s = Server(d)
        yield s
        s.stop()


@pytest.fixture
def fresh_server(tmp_path) -> Iterator[Server]:
    """A server of its own (for tests that corrupt or stop it)."""
    s = Server(str(tmp_path), "--io", "pwrite")
    yield s
    s.stop()


_jobs = itertools.count()


@pytest.fixture
def job(request) -> str:
    """A job id no other test uses."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")
    return f"{name[:80]}-{os.getpid()}-{next(_jobs)}"


def python_env(endpoint: str, **env: str) -> Dict[str, str]:
    """Environment of a Python child: this PYTHONPATH, the SNAPBACK_* given."""
    out = dict(os.environ)
    out["SNAPBACK_ENDPOINT"] = endpoint
    out.update({k: str(v) for k, v in env.items()})
    return out


PYTHON = sys.executable


def run_python(code: str, env: Dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


def lines(text: str, kind: str) -> List[List[str]]:
    return [line.split() for line in text.splitlines() if line.startswith(kind + " ")]


class Rank:
    """One rank of examples/train_mlp.py as a process; stdout read line by
    line (select with a deadline: no sleeps), stderr to a file."""

    def __init__(self, args: List[str], env: Dict[str, str], stderr_path: str) -> None:
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([PYTHON, EXAMPLE, *args], env=env,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
        self._buf = b""
        self.output: List[str] = []

    def lines(self, deadline: float) -> Iterator[str]:
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.output.append(text)
                yield text
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"rank still running at its deadline: {self.output[-3:]}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                return
            self._buf += data

    def finish(self, deadline: float) -> int:
        for _ in self.lines(deadline):
            pass
        rc = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        self._stderr.close()
        return rc

    def kill(self) -> None:
        self.proc.kill()
