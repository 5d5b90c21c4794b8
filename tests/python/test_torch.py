"""snapback.torch: a whole training state round-trips exactly (both restore
paths), and an asynchronous save never mixes two steps."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

import snapback
import snapback.torch


def raw(t: torch.Tensor) -> bytes:
    """The tensor's bytes (bit-exact comparison: NaN payloads, -0.0)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def assert_same(a, b, path="state"):
    """Recursive exact equality: tensors bit for bit with dtype and shape,
    containers with their type, other leaves with == (NaN by bits)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert raw(a) == raw(b), path
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), path
    else:
        assert type(a) is type(b) and a == b, path
        if isinstance(a, float):
            assert math.copysign(1, a) == math.copysign(1, b), path


class Net(torch.nn.Module):
    """Parameters and buffers of every dtype snapback.torch promises."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fp32 = torch.nn.Linear(16, 8)
        self.bf16 = torch.nn.Linear(8, 4).to(torch.bfloat16)
        self.fp16 = torch.nn.Parameter(torch.randn(3, 5).to(torch.float16), requires_grad=False)
        self.register_buffer("counts", torch.randint(0, 1 << 40, (6,), dtype=torch.int64))
        self.register_buffer("mask", torch.rand(7) > 0.5)
        self.register_buffer("scalar", torch.tensor(seed, dtype=torch.float64))
        self.register_buffer("empty", torch.zeros(0, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fp32(x).to(torch.bfloat16)
        return self.bf16(h).float().sum() + self.fp16.float().sum() * 0


def make(seed: int):
    model = Net(seed)
    optimizer = torch.optim.Adam([
        {"params": [model.fp32.weight, model.fp32.bias], "lr": 1e-2},
        {"params": list(model.bf16.parameters()), "lr": 1e-3, "betas": (0.8, 0.9)},
    ])
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, sched


def train(model, optimizer, sched, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(4, 16))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sched.step()


def extras():
    return {
        "int": 1 << 70, "floats": [float("nan"), float("inf"), -0.0, 0.1],
        "tuple": (1, "two", None, b"\x00\xff"), "nested": {3: {"deep": [True, 2.5]}},
        "position": torch.tensor([12, 34], dtype=torch.int64),
        "bf16": torch.randn(5).to(torch.bfloat16),
    }


def snapshot(model, optimizer, sched, extra):
    return dict(model=copy.deepcopy(model.state_dict()),
                optimizer=copy.deepcopy(optimizer.state_dict()),
                sched=copy.deepcopy(sched.state_dict()), extra=copy.deepcopy(extra),
                torch_rng=torch.get_rng_state(), python_rng=random.getstate(),
                numpy_rng=np.random.get_state())


def check(expected, model, optimizer, sched, extra):
    assert_same(expected["model"], model.state_dict(), "model")
    assert_same(expected["optimizer"], optimizer.state_dict(), "optimizer")
    assert_same(expected["sched"], sched.state_dict(), "sched")
    assert_same(expected["extra"], extra, "extra")
    assert raw(expected["torch_rng"]) == raw(torch.get_rng_state())
    assert expected["python_rng"] == random.getstate()
    assert_same(expected["numpy_rng"], np.random.get_state(), "numpy_rng")


@pytest.mark.parametrize("overlap", [True, False])
def test_training_state_round_trips(server, job, overlap):
    model, optimizer, sched = make(seed=1)
    train(model, optimizer, sched, 3)
    extra = extras()
    random.seed(5)
    np.random.seed(6)
    expected = snapshot(model, optimizer, sched, extra)
    with snapback.torch.Checkpointer(server.endpoint, job=job, overlap=overlap) as ck:
        assert ck.restore(model, optimizer, sched, extra={}) is None  # fresh job
        ck.save(2, model, optimizer, sched, extra=extra).result(timeout=60)

    # 1. A fresh process: new objects, the optimizer without state yet.
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    model2, optimizer2, sched2 = make(seed=2)
    extra2 = {"stale": 1}
    with snapback.torch.Checkpointer(server.endpoint, job=job, incarnation=2) as ck:
        assert ck.restore(model2, optimizer2, sched2, extra=extra2) == 3
        assert ck.last_restore["path"] == "library_owned"
    check(expected, model2, optimizer2, sched2, extra2)
    assert isinstance(extra2["floats"][2], float) and isinstance(extra2["tuple"], tuple)

    # 2. A fresh process whose `extra` has its tensors: everything, the
    # fresh optimizer's state included, is restored in place.
    model3, optimizer3, sched3 = make(seed=3)
    extra3 = extras()
    with snapback.torch.Checkpointer(server.endpoint, job=job, incarnation=3) as ck:
        assert ck.restore(model3, optimizer3, sched3, extra=extra3) == 3
        assert ck.last_restore["path"] == "in_place"
    check(expected, model3, optimizer3, sched3, extra3)

    # 3. The live objects, trained further: restored in place.
    train(model, optimizer, sched, 2)
    ptrs = [t.data_ptr() for t in model.state_dict().values()]
    state_ptrs = [t.data_ptr() for s in optimizer.state.values() for t in s.values()]
    extra["position"] += 1
    with snapback.torch.Checkpointer(server.endpoint, job=job, incarnation=4) as ck:
        assert ck.restore(model, optimizer, sched, extra=extra) == 3
        assert ck.last_restore["path"] == "in_place"
    check(expected, model, optimizer, sched, extra)
    assert ptrs == [t.data_ptr() for t in model.state_dict().values()]
    assert state_ptrs == [t.data_ptr() for s in optimizer.state.values() for t in s.values()]

    # Both continue identically.
    torch.manual_seed(7)
    train(model, optimizer, sched, 1)
    torch.manual_seed(7)
    train(model2, optimizer2, sched2, 1)
    assert_same(model.state_dict(), model2.state_dict(), "continued")


def test_restore_of_a_different_model_changes_nothing(server, job):
    model, optimizer, sched = make(seed=1)
    train(model, optimizer, sched, 1)
    with snapback.torch.Checkpointer(server.endpoint, job=job) as ck:
        ck.save(0, model, optimizer).result(timeout=60)
    other = torch.nn.Linear(16, 9)
    before = raw(other.weight)
    with snapback.torch.Checkpointer(server.endpoint, job=job, incarnation=2) as ck:
        with pytest.raises(snapback.InvalidArgument, match="does not match"):
            ck.restore(other)
    assert raw(other.weight) == before
    with pytest.raises(TypeError, match="extra must be a dict"):
        snapback.torch.Checkpointer(server.endpoint, job=job).restore(model, extra=[1])


def test_save_never_mixes_two_steps(server, job):
    """save() returns before the copy; the next optimizer step (and, for a
    model with buffers, forward) waits for it, so the checkpoint holds
    exactly the state at save time."""
    def make_model():
        return torch.nn.Sequential(torch.nn.Linear(4096, 2048), torch.nn.BatchNorm1d(2048))

    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(4, 4096)
    with snapback.torch.Checkpointer(server.endpoint, job=job, overlap=True) as ck:
        for step in range(2):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
            expected_model = copy.deepcopy(model.state_dict())
            expected_optimizer = copy.deepcopy(optimizer.state_dict())
            handle = ck.save(step, model, optimizer)
            # Mutate at once (96 MiB are being copied): forward updates the
            # BatchNorm buffers, the step (same gradients) every parameter.
            model(x)
            optimizer.step()
            with torch.no_grad():  # a mutation the hooks cannot see: wait first
                ck.wait_snapshot()
                model[0].bias.add_(1)
            handle.result(timeout=120)
            saved_model = make_model()
            saved_optimizer = torch.optim.Adam(saved_model.parameters(), lr=0.1)
            with snapback.torch.Checkpointer(server.endpoint, job=job, rng=False,
                                             heartbeat_interval=0) as reader:
                assert reader.restore(saved_model, saved_optimizer, step=step) == step + 1
            assert_same(expected_model, saved_model.state_dict(), "model")
            assert_same(expected_optimizer, saved_optimizer.state_dict(), "optimizer")
        assert ck.blocked_seconds > 0
