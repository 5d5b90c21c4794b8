"""snapback: asynchronous, incremental, verified checkpoints for training jobs.

The core API saves any mapping of numpy arrays / buffers / bytes and restores
it, bit for bit, after a crash::

    import numpy as np
    import snapback

    ck = snapback.connect()               # SNAPBACK_ENDPOINT, _JOB, _RANK, ...
    start = ck.latest_step()              # None on a fresh job
    if start is not None:
        ck.restore_into({"w": weights})   # verified, straight into `weights`
    for step in range(...):
        ...
        handle = ck.save(step, {"w": weights})   # blocks only for the copy
    ck.close()                            # waits for the uploads

`snapback.torch` checkpoints a whole PyTorch training state in one call.

Errors are subclasses of `snapback.Error`, one per status code; each also
derives from the built-in exception a Python caller expects (InvalidArgument
is a ValueError, DeadlineExceeded a TimeoutError, NotFound a LookupError,
Unavailable a ConnectionError).
"""

from __future__ import annotations

import atexit
import sys
from typing import Any, Optional

from snapback import _core
from snapback._core import (
    DTYPES,
    Aborted,
    AlreadyExists,
    Cancelled,
    Checkpointer,
    CheckpointerOptions,
    ClientOptions,
    DataLoss,
    DeadlineExceeded,
    Error,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    RestoredTensor,
    RestoreResult,
    SaveHandle,
    SaveStats,
    Tensor,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    dtype_size,
    get_log_level,
    set_log_level,
)

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "Checkpointer",
    "CheckpointerOptions",
    "Client",
    "ClientOptions",
    "DTYPES",
    "DataLoss",
    "DeadlineExceeded",
    "Error",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "RestoreResult",
    "RestoredTensor",
    "SaveHandle",
    "SaveStats",
    "Tensor",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "checkpointer_options",
    "connect",
    "dtype_size",
    "get_log_level",
    "set_log_level",
]


def checkpointer_options(
    job: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    incarnation: Optional[int] = None,
    **options: Any,
) -> CheckpointerOptions:
    """Builds CheckpointerOptions from keyword arguments.

    Args:
      job: job id; None = $SNAPBACK_JOB.
      rank: this process's rank; None = $SNAPBACK_RANK, else 0.
      world_size: ranks of the job; None = $SNAPBACK_WORLD_SIZE, else 1.
      incarnation: run of the job (grows on every restart); None =
        $SNAPBACK_INCARNATION, else the job's current one at the coordinator.
      **options: any other CheckpointerOptions field (staging_bytes,
        overlap, chunk_bytes, busy_policy, heartbeat_interval, ...).

    Returns:
      The options.

    Raises:
      TypeError: an unknown option.
      InvalidArgument: a bad value (e.g. busy_policy).

    Example:
      >>> snapback.checkpointer_options(job="llm", overlap=True)
    """
    o = CheckpointerOptions()
    if job is not None:
        o.job_id = job
    if rank is not None:
        o.rank = rank
    if world_size is not None:
        o.world_size = world_size
    if incarnation is not None:
        o.incarnation = incarnation
    for name, value in options.items():
        if name.startswith("_") or not hasattr(o, name):
            raise TypeError(f"unknown checkpointer option {name!r}")
        setattr(o, name, value)
    return o


class Client:
    """A connection to the coordinator, shared by the checkpointers it makes.

    Thread-safe. The connection is lazy: an unreachable endpoint is reported
    by the first call that needs it.

    Args:
      endpoint: coordinator HOST:PORT; None = $SNAPBACK_ENDPOINT, else
        127.0.0.1:7420.
      tls_root_ca_file: PEM CA of the servers; None = $SNAPBACK_TLS_CA, else
        plaintext.
      rpc_deadline: seconds per metadata RPC (default 30).
      bulk_deadline: seconds per chunk stream (default 600).

    Raises:
      NotFound: the CA file cannot be read.

    Example:
      >>> client = snapback.Client("127.0.0.1:7420")
      >>> ck = client.checkpointer(job="llm", rank=0, world_size=8)
    """

    def __init__(
        self,
        endpoint: Optional[str] = None,
        *,
        tls_root_ca_file: Optional[str] = None,
        rpc_deadline: Optional[float] = None,
        bulk_deadline: Optional[float] = None,
    ) -> None:
        o = ClientOptions()
        if endpoint is not None:
            o.endpoint = endpoint
        if tls_root_ca_file is not None:
            o.tls_root_ca_file = tls_root_ca_file
        if rpc_deadline is not None:
            o.rpc_deadline = rpc_deadline
        if bulk_deadline is not None:
            o.bulk_deadline = bulk_deadline
        self._client = _core.Client.connect(o)

    def checkpointer(
        self,
        job: Optional[str] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        incarnation: Optional[int] = None,
        **options: Any,
    ) -> Checkpointer:
        """A checkpointer for one rank of one job incarnation.

        Args: as checkpointer_options().

        Returns:
          A Checkpointer (registers the job with the coordinator if new).

        Raises:
          InvalidArgument: no job id, rank outside the world, bad options.
          Unavailable: the coordinator cannot be reached.
        """
        opts = checkpointer_options(job, rank, world_size, incarnation, **options)
        return self._client.new_checkpointer(opts)


def connect(
    endpoint: Optional[str] = None,
    *,
    job: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    incarnation: Optional[int] = None,
    tls_root_ca_file: Optional[str] = None,
    rpc_deadline: Optional[float] = None,
    bulk_deadline: Optional[float] = None,
    **options: Any,
) -> Checkpointer:
    """Connects and returns this rank's checkpointer.

    Every argument left None comes from the environment snapback-launch sets:
    SNAPBACK_ENDPOINT, SNAPBACK_JOB, SNAPBACK_RANK, SNAPBACK_WORLD_SIZE,
    SNAPBACK_INCARNATION (and SNAPBACK_TLS_CA).

    Args:
      endpoint, tls_root_ca_file, rpc_deadline, bulk_deadline: as Client.
      job, rank, world_size, incarnation, **options: as
        checkpointer_options().

    Returns:
      A Checkpointer.

    Raises:
      InvalidArgument: no job id, rank outside the world, bad options.
      Unavailable: the coordinator cannot be reached.
      TypeError: an unknown option.

    Example:
      >>> with snapback.connect(job="demo") as ck:
      ...     ck.save(1, {"w": numpy.ones(4, numpy.float32)}).result()
    """
    client = Client(
        endpoint,
        tls_root_ca_file=tls_root_ca_file,
        rpc_deadline=rpc_deadline,
        bulk_deadline=bulk_deadline,
    )
    return client.checkpointer(job, rank, world_size, incarnation, **options)


def _close_at_exit() -> None:
    # Saves still in flight finish (with the GIL released) before the
    # interpreter tears down; a failure is printed, since nobody can catch it.
    for error in _core._close_all():
        print(f"snapback: a save in flight at exit failed: {error}", file=sys.stderr)


atexit.register(_close_at_exit)
