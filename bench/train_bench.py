#!/usr/bin/env python3
"""Training-loop checkpoint benchmark: snapback.torch vs torch.save/torch.load.

One process, one machine, one disk, one run. A model of --param-mib MiB of
fp32 parameters (Linear 4096x4096 layers and a 4096x1024 head) trained with
Adam (2 more copies of state), so a checkpoint is about 3x --param-mib.

  1. Time the training loop is blocked per checkpoint:
       snapback (overlap mode: save() returns before the copy, the next
       optimizer step waits for it), snapback without overlap (save()
       returns after the copy), torch.save + fsync (synchronous), and
       torch.save + fsync from a background thread (after a clone of the
       state, which is what makes it safe). Also the step-time inflation
       while each runs in the background.
  2. Restore: snapback.torch.restore (every byte SHA-256 verified) into a
     fresh model and optimizer (a restarted process) and into the live ones,
     vs torch.load + load_state_dict of the same state from a file evicted
     from the page cache (snapback's store reads with O_DIRECT too) and from
     a warm cache.
  3. Bytes per checkpoint: full fine-tuning vs a frozen base (only the head
     trains) after the first checkpoint.

Targets (issue 5): blocked <= 1/20 of torch.save; restore <= 1.0x torch.load;
frozen-base checkpoints >= 5x smaller than full ones after the first.

    PYTHONPATH=build/release/python /usr/bin/python3 bench/train_bench.py \\
        --bin-dir build/release/bin [--param-mib 512] [--saves 3] [--save-every 3]
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import torch

import snapback
import snapback.torch

MiB = 1 << 20


def parse_args() -> argparse.Namespace:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", default=os.path.join(root, "build", "release", "bin"),
                   help="where snapback-server is")
    p.add_argument("--dir", default=os.path.join(root, ".bench-train"),
                   help="scratch dir (server data, torch.save files); removed after")
    p.add_argument("--param-mib", type=int, default=512, help="fp32 parameters, MiB")
    p.add_argument("--saves", type=int, default=3, help="checkpoints per method")
    p.add_argument("--save-every", type=int, default=3, help="training steps per checkpoint")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--restore-rounds", type=int, default=2,
                   help="interleaved restore measurements (best kept)")
    return p.parse_args()


class Server:
    def __init__(self, bin_dir: str, data_dir: str) -> None:
        ready = os.path.join(data_dir, "ready")
        os.makedirs(data_dir, exist_ok=True)
        self.log = open(os.path.join(data_dir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "snapback-server"), "--data-dir",
             os.path.join(data_dir, "node"), "--listen", "127.0.0.1:0", "--ready-file",
             ready, "--gc-interval", "0", "--keep-last", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        buf = b""
        while b"listening" not in buf:  # printed after the ready file is written
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                sys.exit("train_bench: snapback-server did not start")
            data = os.read(self.proc.stdout.fileno(), 4096)
            if not data:
                sys.exit(f"train_bench: snapback-server exited: {buf.decode()}")
            buf += data
        self.log.write(buf)
        threading.Thread(target=self._drain, daemon=True).start()
        with open(ready) as f:
            self.endpoint = f"127.0.0.1:{int(f.read())}"

    def _drain(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self.log.write(chunk)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def make_model(param_mib: int, frozen_base: bool = False):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4096, 4096, bias=False) for _ in range(max(1, param_mib // 64))]
    head = torch.nn.Linear(4096, 1024)
    model = torch.nn.Sequential(*layers, head)
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(0.5)
    if frozen_base:
        for layer in layers:
            layer.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(params, lr=1e-4)


def nbytes(model, optimizer) -> int:
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for s in optimizer.state.values():
        n += sum(t.numel() * t.element_size() for t in s.values() if torch.is_tensor(t))
    return n


class Loop:
    """The training loop: forward, backward, optimizer step; step times kept."""

    def __init__(self, model, optimizer, batch: int) -> None:
        self.model, self.optimizer = model, optimizer
        self.x = torch.randn(batch, 4096)
        self.step = 0
        self.times: List[float] = []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            start = time.perf_counter()
            loss = self.model(self.x).square().mean()
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
            self.optimizer.step()
            self.times.append(time.perf_counter() - start)
            self.step += 1


def fsync_save(obj, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def checksum(model, optimizer) -> float:
    s = sum(float(t.double().sum()) for t in model.state_dict().values())
    for st in optimizer.state.values():
        s += sum(float(t.double().sum()) for t in st.values() if torch.is_tensor(t))
    return s


def median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    args = parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    server = Server(args.bin_dir, os.path.join(args.dir, "server"))
    try:
        return run(args, server)
    finally:
        server.stop()
        shutil.rmtree(args.dir, ignore_errors=True)


def run(args: argparse.Namespace, server: Server) -> int:
    model, optimizer = make_model(args.param_mib)
    loop = Loop(model, optimizer, args.batch)
    loop.run(2)  # Adam state exists from here on
    ckpt = nbytes(model, optimizer)
    loop.times.clear()
    loop.run(args.save_every)
    base_step = median(loop.times)
    print(f"model {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M fp32 parameters; "
          f"checkpoint (model + Adam) {ckpt / MiB:.0f} MiB; torch threads "
          f"{torch.get_num_threads()}; step {base_step * 1e3:.0f} ms without checkpoints")
    results: Dict[str, Dict[str, float]] = {}

    # -- 1. blocked time per checkpoint --------------------------------------
    def snapback_run(name: str, overlap: bool) -> None:
        ck = snapback.torch.Checkpointer(server.endpoint, job=f"bench-{name}", overlap=overlap,
                                         rng=False)
        blocked, durable, sent, steps = [], [], [], []
        for _ in range(args.saves):
            before = ck.blocked_seconds
            handle = ck.save(loop.step, model, optimizer)
            loop.times.clear()
            loop.run(args.save_every)  # the next optimizer step waits for the copy
            steps.extend(loop.times)
            blocked.append(ck.blocked_seconds - before)
            stats = handle.result()
            durable.append(stats.to_durable)
            sent.append(stats.sent_bytes)
        ck.close()
        results[name] = dict(blocked=median(blocked), durable=median(durable),
                             step=median(steps), sent=median(sent))

    snapback_run("snapback", overlap=True)
    snapback_run("snapback-sync-copy", overlap=False)

    path = os.path.join(args.dir, "torch.pt")
    blocked, steps = [], []
    for _ in range(args.saves):
        start = time.perf_counter()
        fsync_save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
        blocked.append(time.perf_counter() - start)
        loop.times.clear()
        loop.run(args.save_every)
        steps.extend(loop.times)
    results["torch.save"] = dict(blocked=median(blocked), durable=median(blocked),
                                 step=median(steps), sent=os.path.getsize(path))

    blocked, steps, durable = [], [], []
    writer: Optional[threading.Thread] = None
    for _ in range(args.saves):
        start = time.perf_counter()
        if writer is not None:
            writer.join()  # one checkpoint in flight, as snapback
        state = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                 "optimizer": copy.deepcopy(optimizer.state_dict())}
        began = time.perf_counter()

        def write(state=state, began=began) -> None:
            fsync_save(state, path)
            durable.append(time.perf_counter() - began)

        writer = threading.Thread(target=write)
        writer.start()
        blocked.append(time.perf_counter() - start)
        loop.times.clear()
        loop.run(args.save_every)
        steps.extend(loop.times)
    writer.join()
    del state
    results["torch.save-thread"] = dict(blocked=median(blocked), durable=median(durable),
                                        step=median(steps), sent=os.path.getsize(path))

    print(f"\n1. training loop blocked per checkpoint ({args.saves} checkpoints each, one every "
          f"{args.save_every} steps; median)")
    print(f"   {'method':<22}{'blocked':>11}{'vs torch.save':>15}{'step time':>12}"
          f"{'durable after':>15}")
    ref = results["torch.save"]["blocked"]
    for name, r in results.items():
        print(f"   {name:<22}{r['blocked'] * 1e3:>9.1f}ms{r['blocked'] / ref:>14.4f}x"
              f"{r['step'] * 1e3:>10.0f}ms{r['durable']:>14.2f}s")
    ratio = ref / results["snapback"]["blocked"]
    print(f"   snapback blocks the loop {ratio:.0f}x less than torch.save "
          f"(target >= 20x): {'OK' if ratio >= 20 else 'MISSED'}")

    # -- 2. restore ------------------------------------------------------------
    expected = checksum(model, optimizer)
    latest_step = loop.step
    with snapback.torch.Checkpointer(server.endpoint, job="bench-final", rng=False) as ck:
        ck.save(latest_step, model, optimizer).result()
    fsync_save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    del loop
    restore: Dict[str, List[float]] = collections.defaultdict(list)
    paths = {}

    def fresh_objects():
        # A restarted process: new objects, the optimizer without state
        # (the model's memory touched, as its initialisation does).
        return make_model(args.param_mib)

    def snapback_restore(label: str, target_model, target_optimizer) -> None:
        ck = snapback.torch.Checkpointer(server.endpoint, job="bench-final", rng=False,
                                         heartbeat_interval=0)
        start = time.perf_counter()
        assert ck.restore(target_model, target_optimizer) == latest_step + 1
        restore[label].append(time.perf_counter() - start)
        paths[label] = ck.last_restore["path"]
        assert checksum(target_model, target_optimizer) == expected, "restore mismatch"
        ck.close()

    def torch_restore(cold: bool) -> None:
        label = "cold cache" if cold else "warm cache"
        target_model, target_optimizer = fresh_objects()
        if cold:
            evict(path)
        start = time.perf_counter()
        state = torch.load(path)
        loaded = time.perf_counter() - start
        target_model.load_state_dict(state["model"])
        target_optimizer.load_state_dict(state["optimizer"])
        restore[f"torch.load + load_state_dict, {label}"].append(time.perf_counter() - start)
        restore[f"torch.load alone, {label}"].append(loaded)
        assert checksum(target_model, target_optimizer) == expected

    # Interleaved rounds (the machine may be shared); the best of each.
    for _ in range(args.restore_rounds):
        snapback_restore("snapback, fresh process", *fresh_objects())
        torch_restore(cold=True)
        with torch.no_grad():  # the live objects drifted (e.g. a rollback)
            for p in model.parameters():
                p.add_(1)
        snapback_restore("snapback, live objects", model, optimizer)
        torch_restore(cold=False)
    restore = {name: min(times) for name, times in restore.items()}
    fresh_path, live_path = paths["snapback, fresh process"], paths["snapback, live objects"]

    print(f"\n2. restore of {ckpt / MiB:.0f} MiB, best of {args.restore_rounds} (snapback "
          "verifies every byte with SHA-256; torch.load verifies nothing)")
    ref = restore["torch.load + load_state_dict, cold cache"]
    for name, seconds in restore.items():
        print(f"   {name:<42}{seconds:>7.2f}s{ckpt / seconds / 1e9:>7.2f} GB/s"
              f"{seconds / ref:>8.2f}x")
    print(f"   (snapback paths: fresh process {fresh_path}, live objects {live_path})")
    r = restore["snapback, fresh process"] / ref
    print(f"   snapback restore / torch.load (cold, same disk) = {r:.2f}x (target <= 1.0x): "
          f"{'OK' if r <= 1.0 else 'MISSED'}")

    # -- 3. bytes per checkpoint: full vs frozen base ---------------------------
    full_sent = results["snapback"]["sent"]
    model, optimizer = make_model(args.param_mib, frozen_base=True)
    loop = Loop(model, optimizer, args.batch)
    loop.run(1)
    new, sent = [], []
    with snapback.torch.Checkpointer(server.endpoint, job="bench-frozen", rng=False) as ck:
        for _ in range(args.saves):
            stats = ck.save(loop.step, model, optimizer).result()
            new.append(stats.new_bytes)
            sent.append(stats.sent_bytes)
            loop.run(args.save_every)
    torch_bytes = nbytes(model, optimizer)
    print("\n3. bytes per checkpoint after the first (sent to the storage tier)")
    print(f"   full fine-tune          {full_sent / MiB:>9.1f} MiB")
    print(f"   frozen base (head only) {median(sent[1:]) / MiB:>9.1f} MiB   (first: "
          f"{sent[0] / MiB:.1f} MiB; torch.save writes {torch_bytes / MiB:.0f} MiB every time)")
    ratio = full_sent / max(1, median(sent[1:]))
    print(f"   frozen-base checkpoints are {ratio:.0f}x smaller (target >= 5x): "
          f"{'OK' if ratio >= 5 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
