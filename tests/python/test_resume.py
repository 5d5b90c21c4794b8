"""The resume test: a deterministic training run (examples/train_mlp.py:
200 steps, a save every 10) killed with SIGKILL at three random steps, one
of them in the middle of a save, and restarted each time as a new
incarnation (a small launcher here, as snapback-launch would), computes the
same loss at every step and ends with the same parameters, bit for bit, as
an uninterrupted run."""

from __future__ import annotations

import os
import random
import time
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import Rank, lines, python_env

STEPS = 200
SAVE_EVERY = 10


def launch(server, job: str, tmp_path, incarnation: int, extra_args: List[str]) -> Rank:
    env = python_env(server.endpoint, SNAPBACK_JOB=job, SNAPBACK_RANK=0,
                     SNAPBACK_WORLD_SIZE=1, SNAPBACK_INCARNATION=incarnation)
    args = ["--steps", str(STEPS), "--save-every", str(SAVE_EVERY), *extra_args]
    return Rank(args, env, str(tmp_path / f"{job}-inc{incarnation}.stderr"))


def losses(output: List[str]) -> Dict[int, str]:
    return {int(f[1]): f[2] for f in lines("\n".join(output), "step")}


def test_resume_after_sigkill_is_bit_identical(server, job, tmp_path):
    # The uninterrupted reference.
    ref = launch(server, job + "-ref", tmp_path, 1, [])
    assert ref.finish(time.monotonic() + 120) == 0, open(tmp_path / f"{job}-ref-inc1.stderr").read()
    ref_losses = losses(ref.output)
    assert sorted(ref_losses) == list(range(STEPS))
    ref_done = lines("\n".join(ref.output), "done")[0]

    seed = int(os.environ.get("SNAPBACK_RESUME_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    # (kind, step): "external" = the launcher SIGKILLs the rank as soon as it
    # reports the step; "mid_save" = the rank SIGKILLs itself right after
    # save(step) returned (the snapshot taken, the upload under way).
    plan: List[Tuple[str, int]] = [
        ("external", rng.randrange(12, 60)),
        ("mid_save", rng.randrange(7, 13) * SAVE_EVERY - 1),
        ("external", rng.randrange(140, 190)),
    ]
    print(f"resume test seed {seed} (SNAPBACK_RESUME_SEED), kills {plan}")
    seen: Dict[int, str] = {}
    restored: List[int] = []
    incarnation = 0
    for kill in plan + [None]:
        incarnation += 1
        kind, at = kill if kill else (None, None)
        args = ["--kill-self-mid-save", str(at)] if kind == "mid_save" else []
        rank = launch(server, job, tmp_path, incarnation, args)
        deadline = time.monotonic() + 120
        for line in rank.lines(deadline):
            if kind == "external" and line.startswith(f"step {at} "):
                rank.kill()
        rc = rank.finish(deadline)
        stderr = open(tmp_path / f"{job}-inc{incarnation}.stderr").read()
        assert rc == (-9 if kind else 0), f"incarnation {incarnation}: rc {rc}\n{stderr}"
        first = rank.output[0].split()
        if incarnation == 1:
            assert first == ["start"]
        else:
            assert first[0] == "restored", rank.output[:2]
            restored.append(int(first[1]))
        # Every step this incarnation computed, as the reference did.
        for step, loss in losses(rank.output).items():
            assert loss == ref_losses[step], (
                f"incarnation {incarnation} step {step}: loss {loss} != {ref_losses[step]}")
            seen[step] = loss
        if kind == "mid_save":
            assert rank.output[-1] == f"killing myself mid-save at step {at}"
    assert sorted(seen) == list(range(STEPS))
    done = lines("\n".join(rank.output), "done")[0]
    assert done[:3] == ref_done[:3], "final parameters differ from the uninterrupted run"

    # Each restart resumed from the latest checkpoint it could have: the one
    # before the kill (or the one before that when the kill caught its save
    # uncommitted); the mid-save kill's step was never committed.
    for (kind, at), step in zip(plan, restored):
        last_save = (at + 1) // SAVE_EVERY * SAVE_EVERY - 1
        if kind == "mid_save":
            assert step == at - SAVE_EVERY, (at, step)
        else:
            assert step in (last_save, last_save - SAVE_EVERY), (at, step)
