#!/usr/bin/env python3
"""Trains a small MLP on synthetic data, checkpointing with snapback.torch.

Deterministic: the same seed gives bit-identical losses and parameters, and
a run killed at any point and restarted (a new incarnation) resumes from the
last committed checkpoint and continues bit-identically.

Against a running server (README.md, "Python"):

    PYTHONPATH=build/dev/python python3 examples/train_mlp.py \\
        --endpoint 127.0.0.1:7420 --job mlp --steps 200 --save-every 10

Under snapback-launch the endpoint, job, rank, world size and incarnation come
from the SNAPBACK_* environment, and with a world size above 1 the ranks train
data-parallel (gradients all-reduced with torch.distributed, gloo on CPU;
MASTER_ADDR / MASTER_PORT, default 127.0.0.1:29500):

    build/dev/bin/snapback-launch --job mlp --nproc 2 -- \\
        env PYTHONPATH=build/dev/python python3 examples/train_mlp.py

Prints one line per event (tests/python/test_resume.py reads them):
    start                                     fresh job
    restored STEP PATH SECONDS                resumed after checkpoint STEP
    step STEP LOSS_HEX LOSS                   after each step (and its save)
    saved STEP BLOCKED_MS LOGICAL_MB NEW_MB COMMIT_MS   a finished save
    done STEPS SHA256 BLOCKED_MS              final parameters, total stall
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import signal
import sys


def _import_snapback():
    try:
        import snapback.torch  # noqa: F401
    except ImportError:
        # Not installed: use a build tree of this repository.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for build in ("dev", "release", "py"):
            path = os.path.join(root, "build", build, "python")
            if glob.glob(os.path.join(path, "snapback", "_core*.so")):
                sys.path.insert(0, path)
                break
        import snapback.torch  # noqa: F401
    return sys.modules["snapback"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default=None, help="HOST:PORT (default $SNAPBACK_ENDPOINT)")
    p.add_argument("--job", default=None, help="job id (default $SNAPBACK_JOB)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--kill-self-mid-save", type=int, default=None, metavar="STEP",
                   help="SIGKILL this process right after save(STEP) returns, while the "
                        "upload is in flight (for demos and tests)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    snapback = _import_snapback()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    world = int(os.environ.get("SNAPBACK_WORLD_SIZE", "1"))
    rank = int(os.environ.get("SNAPBACK_RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("gloo", rank=rank, world_size=world)

    # Same initial weights on every rank; each rank its own data stream.
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, args.hidden), torch.nn.GELU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(args.hidden, args.hidden), torch.nn.GELU(),
        torch.nn.Linear(args.hidden, 8))
    teacher = torch.nn.Linear(32, 8)
    with torch.no_grad():
        g = torch.Generator().manual_seed(args.seed + 1)
        teacher.weight.copy_(torch.randn(8, 32, generator=g))
        teacher.bias.copy_(torch.randn(8, generator=g))
    # Data parallel by hand: every gradient is all-reduced on its own, in a
    # fixed order. DistributedDataParallel regroups gradients into buckets
    # after its first iteration, so a restarted process would sum them in a
    # different order for one step and drift by an ulp from an uninterrupted
    # run; this keeps a resumed run bit-identical.
    def average_gradients() -> None:
        if world > 1:
            for p in model.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)
    data = torch.Generator().manual_seed(args.seed * 1000 + rank + 2)
    # The data-loader position: the data generator's state.
    state = {"data_rng": data.get_state(), "samples": 0}

    ck = snapback.torch.Checkpointer(args.endpoint, job=args.job)
    start = ck.restore(model, optimizer, sched, extra=state)
    if start is None:
        print("start", flush=True)
    else:
        data.set_state(state["data_rng"])
        r = ck.last_restore
        print(f"restored {r['step']} {r['path']} {r['seconds']:.3f}", flush=True)

    pending = None
    for step in range(start or 0, args.steps):
        x = torch.randn(args.batch, 32, generator=data)
        y = teacher(x).detach() + 0.01 * torch.randn(args.batch, 8, generator=data)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        average_gradients()
        optimizer.step()  # waits for the previous save's snapshot copy
        sched.step()
        if (step + 1) % args.save_every == 0:
            state["data_rng"] = data.get_state()
            state["samples"] += args.save_every * args.batch
            if pending is not None and pending.done():
                report(pending)
                pending = None
            pending = ck.save(step, model, optimizer, sched, extra=state)
            if step == args.kill_self_mid_save:
                print(f"killing myself mid-save at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        ck.report_step(step + 1)  # progress for the detector's hang check (no RPC)
        print(f"step {step} {loss.item().hex()} {loss.item():.6f}", flush=True)
    ck.close()
    if pending is not None:
        report(pending)
    digest = hashlib.sha256()
    for t in model.state_dict().values():
        digest.update(t.detach().contiguous().numpy().tobytes())
    print(f"done {args.steps} {digest.hexdigest()} {ck.blocked_seconds * 1e3:.1f}", flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def report(handle) -> None:
    s = handle.result()
    print(f"saved {s.step} {s.blocked * 1e3:.2f} {s.logical_bytes / 1e6:.2f} "
          f"{s.new_bytes / 1e6:.2f} {s.to_commit * 1e3:.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
