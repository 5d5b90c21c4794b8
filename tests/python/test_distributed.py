"""A 2-rank data-parallel run (torch.distributed, gloo on CPU): the ranks
hold identical replicas of the model and optimizer, and the storage tier
stores their identical tensors once."""

from __future__ import annotations

import hashlib
import socket
import time

import numpy as np

import snapback
from conftest import Rank, lines, python_env

CHUNK = 4 << 20  # the default chunk size: the unit of dedup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunks_of(data: bytes):
    for off in range(0, len(data), CHUNK):
        yield hashlib.sha256(data[off:off + CHUNK]).digest(), len(data[off:off + CHUNK])


def test_identical_replicas_are_stored_once(fresh_server, job, tmp_path):
    server = fresh_server
    before = server.stats()
    port = free_port()
    ranks = []
    for r in range(2):
        env = python_env(server.endpoint, SNAPBACK_JOB=job, SNAPBACK_RANK=r,
                         SNAPBACK_WORLD_SIZE=2, SNAPBACK_INCARNATION=1,
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        ranks.append(Rank(["--steps", "30", "--save-every", "10"], env,
                          str(tmp_path / f"rank{r}.stderr")))
    deadline = time.monotonic() + 150
    for r, rank in enumerate(ranks):
        assert rank.finish(deadline) == 0, open(tmp_path / f"rank{r}.stderr").read()
    done = [lines("\n".join(rank.output), "done")[0] for rank in ranks]
    assert done[0][2] == done[1][2], "the replicas diverged"
    after = server.stats()

    # What was saved, chunk by chunk, read back through the public API.
    logical = 0
    distinct = {}
    per_rank = [set(), set()]
    for r in range(2):
        with snapback.connect(server.endpoint, job=job, rank=r, world_size=2,
                              heartbeat_interval=0) as ck:
            for step in (9, 19, 29):
                result = ck.restore(step)
                items = [memoryview(t).cast("B").tobytes() for t in result.tensors.values()
                         if t.nbytes] + [b for b in result.blobs.values() if b]
                for data in items:
                    logical += len(data)
                    for cid, n in chunks_of(data):
                        distinct[cid] = n
                        per_rank[r].add(cid)
    shared = per_rank[0] & per_rank[1]
    shared_bytes = sum(distinct[c] for c in shared)
    stored = after["raw_bytes"] - before["raw_bytes"]
    print(f"2 ranks saved {logical} bytes in 6 checkpoints; identical on both ranks: "
          f"{shared_bytes} bytes in {len(shared)} chunks; stored {stored} bytes in "
          f"{after['chunks'] - before['chunks']} chunks")
    # Every distinct chunk stored exactly once, identical ones not twice.
    assert after["chunks"] - before["chunks"] == len(distinct)
    assert stored == sum(distinct.values())
    assert shared_bytes > 0.4 * logical  # the model and optimizer state
    assert stored < logical - shared_bytes * 0.99
