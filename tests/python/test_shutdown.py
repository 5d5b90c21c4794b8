"""Interpreter shutdown with a save in flight neither hangs nor crashes, and
the save still completes (the atexit hook closes live checkpointers)."""

from __future__ import annotations

import subprocess

import pytest

import snapback
from conftest import python_env, run_python

SAVE_IN_FLIGHT = {
    # The script ends while the upload (and, in overlap mode, the copy) runs.
    "falls_off_the_end": ("", 0),
    "sys_exit": ("import sys; sys.exit(0)", 0),
    "uncaught_exception": ("raise RuntimeError('boom')", 1),
    "checkpointer_dropped": ("del ck; import gc; gc.collect()", 0),
}


@pytest.mark.parametrize("how", sorted(SAVE_IN_FLIGHT))
def test_core_save_in_flight_at_exit(server, job, how):
    ending, rc = SAVE_IN_FLIGHT[how]
    code = f"""
import numpy as np, snapback
ck = snapback.connect(job={job!r}, overlap=True)
w = np.random.default_rng(0).integers(0, 255, 96 << 20, dtype=np.uint8)
h = ck.save(1, {{"w": w}})
assert not h.done()
{ending}
"""
    try:
        p = run_python(code, python_env(server.endpoint), timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the interpreter hung at exit with a save in flight")
    assert p.returncode == rc, p.stderr
    assert "Fatal Python error" not in p.stderr and "Segmentation" not in p.stderr
    if rc == 1:
        assert "RuntimeError: boom" in p.stderr
    # The save was not lost: the exit waited for it.
    with snapback.connect(server.endpoint, job=job, heartbeat_interval=0) as ck:
        assert ck.latest_step() == 1


def test_torch_save_in_flight_at_exit(server, job):
    code = f"""
import sys, torch, snapback.torch
model = torch.nn.Linear(4096, 4096)
ck = snapback.torch.Checkpointer(job={job!r})
ck.save(7, model)
sys.exit(3)
"""
    try:
        p = run_python(code, python_env(server.endpoint), timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the interpreter hung at exit with a save in flight")
    assert p.returncode == 3, p.stderr
    assert "Fatal Python error" not in p.stderr, p.stderr
    with snapback.connect(server.endpoint, job=job, heartbeat_interval=0) as ck:
        assert ck.latest_step() == 7
