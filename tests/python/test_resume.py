"""The resume tests: a deterministic training run (examples/train_mlp.py:
200 steps, a save every 10) killed with SIGKILL at three random steps, one
of them in the middle of a save, resumes from its latest committed
checkpoint each time, computes the same loss at every step and ends with the
same parameters, bit for bit, as an uninterrupted run.

- test_resume_after_sigkill_is_bit_identical: one rank, restarted by a small
  launcher here (a new incarnation each time); the mid-save kill is the
  rank's own (--kill-self-mid-save: SIGKILL right after save() returned).
- test_resume_under_snapback_launch_is_bit_identical: two data-parallel ranks
  (gradients all-reduced over gloo) under the real snapback-launch, the restarts decided by the
  coordinator's failure detector. The test SIGKILLs one rank process (a child
  of the launcher, found through /proc) when a step line appears, the
  mid-save kill when the line of a save step appears (the save is
  asynchronous: its upload is then in flight), and checks the launcher's
  exit, the restores, the losses, the final digests and the incident table.

The seed of the kill plan is printed; SNAPBACK_RESUME_SEED replays it.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import EXAMPLE, PYTHON, Rank, bin_dir, lines, python_env

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


# --- under snapback-launch ---------------------------------------------------

NPROC = 2  # data-parallel ranks (gloo)
STARTED = re.compile(r"snapback-launch: job \S+: incarnation (\d+) started")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launcher(Rank):
    """snapback-launch running NPROC ranks of the example; its stdout (its
    own "snapback-launch:" lines and the ranks' lines, passed through) read
    line by line with deadlines (Rank's reader; Rank's constructor, which
    runs the example itself, is not called), its stderr and the ranks' to a
    file."""

    def __init__(self, server, job: str, tmp_path) -> None:
        cmd = [os.path.join(bin_dir(), "snapback-launch"), "--job", job,
               "--nproc", str(NPROC), "--endpoint", server.endpoint, "--stop-grace", "1s",
               "--", PYTHON, EXAMPLE, "--steps", str(STEPS), "--save-every", str(SAVE_EVERY)]
        # A gloo rendezvous port of its own (every incarnation reuses it).
        env = python_env(server.endpoint, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
        # The ranks share the launcher's stdout: each print(flush=True) must
        # be one write() (an atomic pipe write), which unbuffered Python's
        # separate writes of the text and its newline are not.
        env.pop("PYTHONUNBUFFERED", None)
        self.stderr_path = str(tmp_path / f"{job}.stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._stderr)
        self._buf = b""
        self.output: List[str] = []

    def stop(self) -> None:
        """SIGTERM: the launcher stops its ranks (process groups of their
        own, which a SIGKILL of the launcher would leave running), then exits."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def why(self) -> str:
        return ("\n".join(self.output[-30:]) + "\n--- stderr (launcher and ranks), tail:\n"
                + open(self.stderr_path, errors="replace").read()[-4000:])

    def rank_pid(self, rank: int, incarnation: int) -> Optional[int]:
        """The pid of the launcher's live child running `rank` of
        `incarnation` (read from /proc: its children, and their environment)."""
        children: List[str] = []
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/children") as f:
                    children += f.read().split()
            except OSError:  # a thread that ended meanwhile
                continue
        want = {f"SNAPBACK_RANK={rank}".encode(), f"SNAPBACK_INCARNATION={incarnation}".encode()}
        for pid in children:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = set(f.read().split(b"\0"))  # empty for a zombie
            except OSError:
                continue
            if want <= env:
                return int(pid)
        return None


def segments(output: List[str]) -> List[Tuple[int, List[str]]]:
    """(incarnation, the ranks' lines) per incarnation the launcher started:
    it starts one only once the previous one's ranks are gone, so every rank
    line after its "started" line is that incarnation's."""
    out: List[Tuple[int, List[str]]] = []
    for line in output:
        m = STARTED.match(line)
        if m:
            out.append((int(m.group(1)), []))
        elif out and not line.startswith("snapback-launch:"):
            out[-1][1].append(line)
    return out


def step_losses(rank_lines: List[str]) -> Dict[int, collections.Counter]:
    """step -> the loss hexes its ranks printed for it."""
    out: Dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for f in lines("\n".join(rank_lines), "step"):
        out[int(f[1])][f[2]] += 1
    return out


def incidents(output: List[str], job: str) -> int:
    """The count of the launcher's final incident table."""
    for line in output:
        if line == f"snapback-launch: job {job}: no incidents":
            return 0
        m = re.fullmatch(rf"snapback-launch: job {re.escape(job)}: (\d+) incident\(s\)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no incident summary in the launcher's output: {output[-10:]}")


@pytest.fixture
def launch_job(server, tmp_path):
    """Starts a Launcher; stops any still running when the test ends."""
    started: List[Launcher] = []

    def start(job: str) -> Launcher:
        started.append(Launcher(server, job, tmp_path))
        return started[-1]

    yield start
    for launcher in started:
        launcher.stop()


def test_resume_under_snapback_launch_is_bit_identical(launch_job, job):
    # The uninterrupted reference, under the launcher too.
    t0 = time.monotonic()
    ref = launch_job(job + "-ref")
    assert ref.finish(t0 + 90) == 0, ref.why()
    t_ref = time.monotonic() - t0
    ((_, ref_lines),) = segments(ref.output)
    assert ref_lines.count("start") == NPROC, ref.why()
    ref_losses = step_losses(ref_lines)
    assert sorted(ref_losses) == list(range(STEPS))
    # The ranks see different data: their losses differ at every step, so a
    # loss printed after a resume names its rank, and "equals a reference
    # loss of that step" is the bit-exact per-rank check.
    assert all(len(c) == NPROC and sum(c.values()) == NPROC for c in ref_losses.values())
    ref_done = lines("\n".join(ref_lines), "done")
    assert len(ref_done) == NPROC and len({d[2] for d in ref_done}) == 1, "replicas diverged"
    ref_digest = ref_done[0][2]
    assert incidents(ref.output, job + "-ref") == 0, ref.why()

    seed = int(os.environ.get("SNAPBACK_RESUME_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    # (kind, step, rank): SIGKILL `rank` as soon as a rank reports `step`;
    # "mid_save" steps are save steps: the line comes right after save()
    # returned, the snapshot being copied and uploaded asynchronously.
    plan: List[Tuple[str, int, int]] = [
        ("external", rng.randrange(20, 60), rng.randrange(NPROC)),
        ("mid_save", rng.randrange(7, 13) * SAVE_EVERY - 1, rng.randrange(NPROC)),
        ("external", rng.randrange(140, 190), rng.randrange(NPROC)),
    ]
    print(f"resume-under-launch seed {seed} (SNAPBACK_RESUME_SEED), kills {plan}")
    t1 = time.monotonic()
    run = launch_job(job)
    deadline = t1 + 120
    started: List[int] = []
    killed: List[Tuple[int, int]] = []  # (pid, incarnation)
    for line in run.lines(deadline):
        m = STARTED.match(line)
        if m:
            started.append(int(m.group(1)))
        elif len(killed) < len(plan) and len(killed) == len(started) - 1:
            kind, at, rank = plan[len(killed)]
            if line.startswith(f"step {at} "):
                pid = run.rank_pid(rank, started[-1])
                assert pid, f"no live rank {rank} of incarnation {started[-1]}\n{run.why()}"
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, started[-1]))
    rc = run.finish(deadline)
    t_run = time.monotonic() - t1
    print(f"reference {t_ref:.1f} s, run with 3 kills {t_run:.1f} s")
    assert rc == 0, f"snapback-launch exited {rc}\n{run.why()}"
    assert len(killed) == len(plan), f"only {len(killed)} kills happened\n{run.why()}"
    assert len(started) == len(plan) + 1, run.why()
    for (kind, at, rank), (pid, inc) in zip(plan, killed):
        assert (f"snapback-launch: rank {rank} (pid {pid}, incarnation {inc}) killed by "
                f"signal 9 (Killed): restart") in run.output, run.why()

    segs = segments(run.output)
    assert [inc for inc, _ in segs] == started
    assert segs[0][1].count("start") == NPROC, run.why()
    seen = set()
    restored: List[int] = []
    for i, (inc, rank_lines) in enumerate(segs):
        if i > 0:
            r = lines("\n".join(rank_lines), "restored")
            assert len(r) == NPROC and len({f[1] for f in r}) == 1, (
                f"incarnation {inc}: {r}\n{run.why()}")
            restored.append(int(r[0][1]))
        # Every step this incarnation computed, as the reference did: each
        # line one of the reference's losses at that step, no rank twice.
        for step, got in step_losses(rank_lines).items():
            assert not got - ref_losses[step], (
                f"incarnation {inc} step {step}: losses {dict(got)} != reference "
                f"{dict(ref_losses[step])}")
            seen.add(step)
        done = lines("\n".join(rank_lines), "done")
        assert len(done) == (NPROC if i == len(segs) - 1 else 0), done
    assert sorted(seen) == list(range(STEPS))
    # The last incarnation ran every step after its restore on every rank.
    last = step_losses(segs[-1][1])
    for step in range(restored[-1] + 1, STEPS):
        assert last[step] == ref_losses[step], (step, dict(last[step]))
    done = lines("\n".join(segs[-1][1]), "done")
    assert [d[2] for d in done] == [ref_digest] * NPROC, (
        "final parameters differ from the uninterrupted run")

    # Each restart resumed from the latest committed checkpoint: a save step
    # the killed incarnation reached, and no older than a checkpoint known to
    # be committed before the kill (every rank printed "saved S": its
    # manifest committed) or than the previous restore. How far back the kill
    # sends it depends on how far the uploads got (a save in flight at the
    # kill is aborted by the fencing), so no closer bound.
    committed = -1
    for (kind, at, rank), step, (_, rank_lines) in zip(plan, restored, segs):
        saved = collections.Counter(int(f[1]) for f in lines("\n".join(rank_lines), "saved"))
        committed = max([committed] + [s for s, n in saved.items() if n == NPROC])
        reached = max(step_losses(rank_lines))
        assert (step + 1) % SAVE_EVERY == 0 and committed <= step <= reached, (
            f"kill ({kind}, step {at}, rank {rank}): restored {step}, committed {committed}, "
            f"reached {reached}")
        committed = step
    print(f"restored {restored} after kills at {[at for _, at, _ in plan]}")

    # One incident per kill, closed by the detector (the launcher's table).
    assert incidents(run.output, job) == len(plan), run.why()
    table = run.output[run.output.index(f"snapback-launch: job {job}: {len(plan)} incident(s)"):]
    print("\n".join(table))
