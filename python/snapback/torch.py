"""snapback.torch: checkpoint a whole PyTorch training state in one call.

    ck = snapback.torch.Checkpointer()                          # SNAPBACK_* environment
    start = ck.restore(model, optimizer, sched, extra=state)    # None on a fresh job
    for step in range(start or 0, total):
        train_step(...)
        ck.save(step, model, optimizer, sched, extra=state)     # async; returns at once
    ck.close()

What a checkpoint holds: the model's state_dict, the optimizer's state_dict
(tensor states and the non-tensor parts: param_groups, hyperparameters), the
LR scheduler's state, the CPU RNG state (and every CUDA device's when CUDA is
present), Python's `random` and numpy's global RNG states, the step, and
user extras (e.g. the data-loader position). Nested state is flattened to
named tensors (model/<key>, optimizer/state/<i>/<key>, extra/<path>, ...)
plus one small structure blob: the pickled skeleton with every tensor
replaced by its name, so tensors are never pickled and every non-tensor leaf
comes back exactly (ints, floats, tuples, strings, None, ...).

When tensors may be mutated again -- the rule that keeps two steps from
mixing. save() runs in the library's overlap mode: it returns before the
snapshot copy of the model and optimizer tensors is done (the copy runs on
the library's threads while the next forward and backward pass run). Those
tensors must not change until the copy is over, so the checkpointer makes
the optimizer's next step() wait for it (a wrapper around the optimizer's
step(), installed by the first save()), and, when the model has buffers
that forward() updates in place (BatchNorm running statistics), the model's
next forward() as well. Tensors in `extra` and in the scheduler's state are
copied during save(). If you modify parameters or optimizer state any other
way (e.g. in place under torch.no_grad()), call ck.wait_snapshot() first.
Checkpointer(overlap=False) makes save() itself wait for the copy.

CPU tensors are read straight from their memory (no extra copy in Python;
bfloat16 is passed as its bytes). CUDA tensors are copied to pinned host
staging memory first. restore() writes straight into the model's and the
optimizer's tensors: the existing ones, or, for a fresh optimizer (whose
state its first step creates), new ones laid out as that step would (learnt
by stepping the optimizer's class on a small stand-in parameter). Only when
the checkpoint's tensors differ from what is there (names, dtypes, shapes:
checked before anything is written) is it restored into library-owned memory
instead; the model's tensors are then filled from it and every other tensor
uses that memory without a copy.

Progress for the failure detector (hang detection): save() reports its
step, and each optimizer step after it reports the next step, so a training
loop that calls the optimizer once per step needs nothing more; otherwise
call ck.report_step(step) every step.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import random
import time
import types
import warnings
import weakref
from collections.abc import MutableMapping
from itertools import chain
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

import snapback

__all__ = ["Checkpointer"]

# Version of the structure blob's layout.
_FORMAT = 1
_STRUCTURE_BLOB = "snapback.torch/structure"

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float64: "float64",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.bool: "bool",
}
_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_CLIENT_OPTIONS = ("tls_root_ca_file", "rpc_deadline", "bulk_deadline")
_DEFAULT_CHUNK_BYTES = 4 << 20
_MIN_STAGING_BYTES = 256 << 20


def _walk(tree: Any, path: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in nested dicts, lists and tuples."""
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _walk(value, f"{path}/{i}")


def _dtype_name(t: torch.Tensor, name: str) -> str:
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise snapback.InvalidArgument(
            f"tensor '{name}' has dtype {t.dtype}; snapback stores "
            f"{', '.join(_DTYPE_NAMES.values())}")
    if t.layout != torch.strided:
        raise snapback.InvalidArgument(
            f"tensor '{name}' has layout {t.layout}; only dense (strided) tensors "
            "are supported (convert with .to_dense())")
    return dtype


def _host_view(t: torch.Tensor, name: str) -> snapback.Tensor:
    """A snapback.Tensor over the memory of CPU, contiguous `t` (no copy)."""
    dtype = _dtype_name(t, name)
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: pass its bytes
        return snapback.Tensor(t.view(torch.int16).numpy(), dtype=dtype)
    return snapback.Tensor(t.numpy(), dtype=dtype)


def _from_restored(rt: snapback.RestoredTensor) -> torch.Tensor:
    """A torch tensor over library-owned restored bytes (no copy)."""
    dtype = _TORCH_DTYPES[rt.dtype]
    if rt.nbytes == 0:
        return torch.empty(rt.shape, dtype=dtype)
    return torch.frombuffer(rt, dtype=dtype).reshape(rt.shape)


def _rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _chunked(nbytes: int, chunk: int) -> int:
    """Staging bytes a tensor takes: whole chunks (a small one takes one)."""
    return math.ceil(nbytes / chunk) * chunk


class _Flattener:
    """The named tensors and the pickled skeleton of one save."""

    def __init__(self, pinned: Dict[str, torch.Tensor]) -> None:
        self.sources: Dict[str, torch.Tensor] = {}  # name -> CPU contiguous tensor
        self._names: Dict[int, str] = {}  # id(tensor) -> name
        self._keep: List[torch.Tensor] = []  # keeps ids unique while pickling
        self._pinned = pinned
        self._device_copies: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._unnamed = 0

    def add(self, section: str, tree: Any, copy: bool) -> None:
        """Registers the tensors of `tree`; `copy` snapshots them now."""
        for path, t in _walk(tree, section):
            self._register(path, t, copy)

    def _register(self, path: str, t: torch.Tensor, copy: bool) -> str:
        name = self._names.get(id(t))
        if name is not None:
            return name
        name = path
        n = 1
        while name in self.sources:
            n += 1
            name = f"{path}#{n}"
        _dtype_name(t, name)
        self._names[id(t)] = name
        self._keep.append(t)
        t = t.detach()
        if t.device.type != "cpu":
            # Pinned host staging, reused across saves (the caller waited
            # for the previous snapshot before this save refills it).
            staging = self._pinned.get(name)
            if staging is None or staging.shape != t.shape or staging.dtype != t.dtype:
                staging = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                self._pinned[name] = staging
            self._device_copies.append((staging, t))
            source = staging
        elif copy:
            source = t.clone(memory_format=torch.contiguous_format)
        elif not t.is_contiguous():
            source = t.contiguous()
        else:
            source = t
        self.sources[name] = source
        return name

    def pickle(self, state: Dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        flat = self

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj: Any) -> Optional[Tuple[str, str]]:
                if isinstance(obj, torch.Tensor):
                    name = flat._names.get(id(obj))
                    if name is None:  # inside an object the walk does not enter
                        flat._unnamed += 1
                        name = flat._register(f"unnamed/{flat._unnamed}", obj, copy=True)
                    return ("tensor", name)
                return None

        Pickler(buf, protocol=4).dump(state)
        return buf.getvalue()

    def finish_device_copies(self) -> None:
        if not self._device_copies:
            return
        for staging, t in self._device_copies:
            staging.copy_(t, non_blocking=True)
        torch.cuda.synchronize()

    def views(self) -> Dict[str, snapback.Tensor]:
        return {name: _host_view(t, name) for name, t in self.sources.items()}

    def staging_bytes(self, chunk: int) -> int:
        return sum(_chunked(t.numel() * t.element_size(), chunk) for t in self.sources.values())


def _probe_state(cls: type, hyper: Dict[str, Any], dtype: torch.dtype) -> Optional[Dict[str, Any]]:
    """The state tensors optimizer class `cls` creates for a parameter of
    `dtype` at its first step: key -> None (shaped like the parameter) or
    (shape, dtype). Learnt by stepping a stand-in; None if that fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stand_in = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
            stand_in.grad = torch.zeros_like(stand_in)
            probe = cls([stand_in], **hyper)
            probe.step()
            layout: Dict[str, Any] = {}
            for key, value in probe.state[stand_in].items():
                if isinstance(value, torch.Tensor):
                    like = value.shape == stand_in.shape and value.dtype == dtype
                    layout[key] = None if like else (tuple(value.shape), value.dtype)
            return layout
    except Exception:  # an optimizer that needs a closure, arguments, ...
        return None


def _predict_optimizer_state(optimizer: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    """Uninitialized tensors for the state a fresh optimizer (whose state is
    created lazily by its first step) will have, named as save() names them,
    so a restore can write into them directly. Empty when it cannot tell. A
    wrong guess costs nothing: restore_into() checks every name, dtype and
    shape before writing and restore() then falls back."""
    out: Dict[str, torch.Tensor] = {}
    layouts: Dict[Any, Optional[Dict[str, Any]]] = {}
    index = 0
    for group in optimizer.param_groups:
        hyper = {k: group[k] for k in optimizer.defaults if k in group}
        for p in group["params"]:
            i = index
            index += 1
            if not p.requires_grad:
                continue  # never gets a gradient, so never any state
            key = (id(group), p.dtype)
            if key not in layouts:
                layouts[key] = _probe_state(type(optimizer), hyper, p.dtype)
            layout = layouts[key]
            if layout is None:
                return {}
            for name, spec in layout.items():
                if spec is None:
                    t = torch.empty_like(p, memory_format=torch.contiguous_format)
                else:
                    t = torch.empty(spec[0], dtype=spec[1], device=p.device)
                out[f"optimizer/state/{i}/{name}"] = t.detach()
    return out


def _unpickle(blob: bytes, tensors: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> torch.Tensor:
            kind, name = pid
            if kind != "tensor" or name not in tensors:
                raise snapback.DataLoss(
                    f"structure blob names tensor {name!r} the checkpoint does not have")
            return tensors[name]

    return Unpickler(io.BytesIO(blob)).load()


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Dict[str, Any]) -> None:
    """Optimizer.load_state_dict without its deepcopy of every tensor.

    Same mapping and casts as torch's: saved parameter indices map to the
    current parameters in param_group order; floating-point state (except
    'step') takes the parameter's dtype and device. A tensor already of the
    right dtype and device is used as is (restored in place or wrapped).
    """
    groups = optimizer.param_groups
    saved_groups = saved["param_groups"]
    if len(groups) != len(saved_groups) or any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
        raise snapback.InvalidArgument(
            "the optimizer's parameter groups do not match the checkpoint's "
            f"({[len(g['params']) for g in groups]} parameters now, "
            f"{[len(s['params']) for s in saved_groups]} saved)")
    id_map = dict(zip(chain.from_iterable(s["params"] for s in saved_groups),
                      chain.from_iterable(g["params"] for g in groups)))

    def cast(param: torch.Tensor, key: Any, value: Any) -> Any:
        if isinstance(value, torch.Tensor) and key != "step":
            if param.is_floating_point():
                value = value.to(param.dtype)
            value = value.to(param.device)
        return value

    state: Dict[Any, Any] = collections.defaultdict(dict)
    for index, entry in saved["state"].items():
        param = id_map.get(index)
        if param is None:
            state[index] = entry
        else:
            state[param] = {k: cast(param, k, v) for k, v in entry.items()}
    new_groups = [dict(s, params=g["params"]) for g, s in zip(groups, saved_groups)]
    optimizer.__setstate__({"state": state, "param_groups": new_groups})


class Checkpointer:
    """Saves and restores a PyTorch training state through snapback.

    Args:
      endpoint: coordinator HOST:PORT; None = $SNAPBACK_ENDPOINT.
      job, rank, world_size, incarnation: None = $SNAPBACK_JOB, _RANK,
        _WORLD_SIZE, _INCARNATION (set by snapback-launch).
      overlap: True (default): save() returns before the snapshot copy and
        the next optimizer step waits for it (see the module doc); False:
        save() returns after the copy.
      staging_bytes: the library's memory cap; None sizes it to twice the
        checkpoint (estimated from the model and optimizer when the first
        restore() or save() connects), so a save blocks only for the copy.
      rng: also save and restore the torch (CPU, CUDA), `random` and numpy
        global RNG states (default True).
      **options: other snapback.CheckpointerOptions fields (chunk_bytes,
        copy_threads, upload_streams, compress, heartbeat_interval, ...) and
        snapback.Client's (tls_root_ca_file, rpc_deadline, bulk_deadline).

    Thread-safety: one training loop per checkpointer.

    Example:
      >>> ck = snapback.torch.Checkpointer()
      >>> start = ck.restore(model, opt) or 0
    """

    def __init__(
        self,
        endpoint: Optional[str] = None,
        *,
        job: Optional[str] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        incarnation: Optional[int] = None,
        overlap: bool = True,
        staging_bytes: Optional[int] = None,
        rng: bool = True,
        **options: Any,
    ) -> None:
        client_options = {k: options.pop(k) for k in _CLIENT_OPTIONS if k in options}
        # Validate the options now, connect on first use.
        snapback.checkpointer_options(job, rank, world_size, incarnation, **options)
        self._client = snapback.Client(endpoint, **client_options)
        self._identity = dict(job=job, rank=rank, world_size=world_size,
                              incarnation=incarnation)
        self._options = dict(options)
        self._chunk_bytes = int(options.get("chunk_bytes", _DEFAULT_CHUNK_BYTES))
        self._overlap = overlap
        self._staging_bytes = staging_bytes
        self._rng = rng
        self._core: Optional[snapback.Checkpointer] = None
        self._closed = False
        self._snapshot_pending = False
        self._pinned: Dict[str, torch.Tensor] = {}
        self._model_hooks: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = (
            weakref.WeakKeyDictionary())
        self._guarded_optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self._step_base: Optional[int] = None
        self._optimizer_steps = 0
        self._warned_staging = False
        #: Seconds the training loop spent blocked in save() and in waits for
        #: the snapshot copy (optimizer step / forward), summed over saves.
        self.blocked_seconds = 0.0
        #: The handle of the last save().
        self.last_handle: Optional[snapback.SaveHandle] = None
        #: How the last restore() went: step, seconds, bytes, and "in_place"
        #: (every tensor straight into existing memory) or "library_owned".
        self.last_restore: Optional[Dict[str, Any]] = None

    # -- connection -------------------------------------------------------

    def _connect(self, staging_estimate: int) -> snapback.Checkpointer:
        if self._closed:
            raise snapback.FailedPrecondition("checkpointer is closed")
        if self._core is None:
            staging = self._staging_bytes
            if staging is None:
                staging = max(_MIN_STAGING_BYTES, 2 * staging_estimate)
                staging = math.ceil(staging / (64 << 20)) * (64 << 20)
            self._core = self._client.checkpointer(
                **self._identity, overlap=self._overlap, staging_bytes=staging,
                **self._options)
            self._staging_cap = staging
        return self._core

    def _estimate(self, model: Optional[torch.nn.Module],
                  optimizer: Optional[torch.optim.Optimizer]) -> int:
        """Checkpoint bytes (chunk-rounded) before the optimizer has state."""
        chunk = self._chunk_bytes
        total = 4 * chunk  # RNG states, structure blob, scheduler, extras
        if model is not None:
            total += sum(_chunked(t.numel() * t.element_size(), chunk)
                         for t in model.state_dict().values() if isinstance(t, torch.Tensor))
        if optimizer is not None:
            if optimizer.state:
                total += sum(_chunked(t.numel() * t.element_size(), chunk)
                             for _, t in _walk(optimizer.state_dict()["state"], ""))
            else:  # Adam-like: two moments and a step per trainable parameter
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        if p.requires_grad:
                            total += 2 * _chunked(p.numel() * p.element_size(), chunk) + chunk
        return total

    # -- the rule: no mutation before the snapshot copy is done -----------

    def _before_mutation(self) -> None:
        if self._snapshot_pending and self._core is not None and not self._closed:
            start = time.perf_counter()
            self._snapshot_pending = False
            self._core.wait_snapshot()
            self.blocked_seconds += time.perf_counter() - start

    def _after_optimizer_step(self) -> None:
        if self._step_base is not None and self._core is not None and not self._closed:
            self._optimizer_steps += 1
            self._core.report_step(self._step_base + self._optimizer_steps)

    def _guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer in self._guarded_optimizers:
            return
        self._guarded_optimizers.add(optimizer)
        inner = optimizer.step  # bound method, or an LR scheduler's wrapper
        ref = weakref.ref(self)

        def step(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            ck = ref()
            if ck is not None:
                ck._before_mutation()
            result = inner(*args, **kwargs)
            if ck is not None:
                ck._after_optimizer_step()
            return result

        # LR schedulers mark the step they wrapped; keep the mark visible so a
        # scheduler made later does not count steps twice.
        if getattr(inner, "_with_counter", False):
            step._with_counter = True  # type: ignore[attr-defined]
        optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]

    def _guard_model(self, model: torch.nn.Module) -> None:
        if model in self._model_hooks:
            return
        has_buffers = any(True for _ in model.buffers())
        ref = weakref.ref(self)

        def pre_forward(module: torch.nn.Module, inputs: Any) -> None:
            ck = ref()
            if ck is not None:
                ck._before_mutation()

        self._model_hooks[model] = (
            model.register_forward_pre_hook(pre_forward) if has_buffers else None)

    # -- save -------------------------------------------------------------

    def save(
        self,
        step: int,
        model: Optional[torch.nn.Module] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Any = None,
        extra: Any = None,
    ) -> snapback.SaveHandle:
        """Checkpoints the training state after `step`, asynchronously.

        Returns as soon as the snapshot copy has started (overlap mode): the
        copy, dedup, upload and commit run in the background. The model's
        and optimizer's tensors must not be mutated before the copy is done:
        the optimizer's next step() (and, for models with buffers, the next
        forward()) waits for it automatically. Given a model without its
        optimizer, save() waits for the copy itself (it cannot guard an
        optimizer it does not know).

        Args:
          step: the step just completed; must grow. restore() then returns
            step + 1.
          model: its state_dict() is saved (zero-copy from its tensors).
          optimizer: its state_dict() (tensor state zero-copy).
          scheduler: anything with state_dict()/load_state_dict() (LR
            scheduler, GradScaler); its tensors are copied now.
          extra: any picklable user state (dicts, lists, numbers, tensors),
            e.g. the data-loader position; its tensors are copied now.

        Returns:
          The snapback.SaveHandle (result(timeout), done(), stats).

        Raises:
          InvalidArgument: a tensor snapback cannot store (complex, sparse),
            or a step that does not grow.
          snapback.Error: an earlier save failed in the background.

        Example:
          >>> ck.save(step, model, optimizer, sched, extra={"batch": i})
        """
        start = time.perf_counter()
        if self._pinned:
            # Pinned staging of CUDA tensors is refilled below.
            self._before_mutation()
        flat = _Flattener(self._pinned)
        state: Dict[str, Any] = {"format": _FORMAT, "step": int(step)}
        if model is not None:
            state["model"] = model.state_dict()
            flat.add("model", state["model"], copy=False)
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
            flat.add("optimizer", state["optimizer"], copy=False)
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
            flat.add("scheduler", state["scheduler"], copy=True)
        if extra is not None:
            state["extra"] = extra
            flat.add("extra", extra, copy=True)
        if self._rng:
            state["rng"] = _rng_state()
            flat.add("rng", state["rng"], copy=False)  # fresh tensors
        blob = flat.pickle(state)
        flat.finish_device_copies()
        needed = 2 * (flat.staging_bytes(self._chunk_bytes) + _chunked(len(blob), self._chunk_bytes))
        core = self._connect(needed // 2)
        if needed > self._staging_cap and not self._warned_staging and self._staging_bytes is None:
            self._warned_staging = True
            warnings.warn(
                f"snapback: a checkpoint needs {needed >> 20} MiB of staging for save() to "
                f"block only for the copy, the cap is {self._staging_cap >> 20} MiB; pass "
                "staging_bytes= to Checkpointer()", RuntimeWarning, stacklevel=2)
        if model is not None:
            self._guard_model(model)
        if optimizer is not None:
            self._guard_optimizer(optimizer)
        handle = core.save(step, flat.views(), blobs={_STRUCTURE_BLOB: blob})
        self._snapshot_pending = core.overlap
        if model is not None and optimizer is None:
            # Whatever updates this model's parameters is not ours to guard:
            # finish the copy now.
            self._before_mutation()
        self._step_base = int(step)
        self._optimizer_steps = 0
        core.report_step(int(step))
        self.last_handle = handle
        self.blocked_seconds += time.perf_counter() - start
        return handle

    # -- restore ----------------------------------------------------------

    def restore(
        self,
        model: Optional[torch.nn.Module] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Any = None,
        extra: Optional[MutableMapping] = None,
        *,
        step: Optional[int] = None,
    ) -> Optional[int]:
        """Restores the latest committed checkpoint (or `step`), verified.

        The model's tensors are overwritten in place (they must match the
        checkpoint's names, dtypes and shapes), the optimizer's state and
        hyperparameters are loaded, the scheduler's state, the RNG states
        and `extra` are restored.

        Args:
          model, optimizer, scheduler: as given to save().
          extra: a dict; it is cleared and filled with the saved extras.
          step: restore this step instead of the latest committed one.

        Returns:
          The step to continue from (the saved step + 1), or None when the
          job has no checkpoint yet (nothing is changed then).

        Raises:
          InvalidArgument: the model or optimizer does not match the
            checkpoint (nothing is changed in the model then).
          DataLoss: a chunk has no good copy.
          TypeError: `extra` is not a mutable mapping.

        Example:
          >>> start = ck.restore(model, optimizer, sched, extra=state) or 0
        """
        if extra is not None and not isinstance(extra, MutableMapping):
            raise TypeError("extra must be a dict (it is updated in place)")
        started = time.perf_counter()
        core = self._connect(self._estimate(model, optimizer))
        if self.last_handle is not None and not self.last_handle.done():
            core.flush()
        target_step = step if step is not None else core.latest_step()
        if target_step is None:
            return None

        # Fast path: every tensor of the checkpoint has a home already.
        model_sd = model.state_dict() if model is not None else None
        current: Dict[str, Any] = {}
        if model_sd is not None:
            current["model"] = model_sd
        if optimizer is not None and optimizer.state:
            current["optimizer"] = optimizer.state_dict()["state"]
        if scheduler is not None:
            current["scheduler"] = scheduler.state_dict()
        if extra is not None:
            current["extra"] = extra
        if self._rng:
            current["rng"] = _rng_state()
        homes: Dict[str, torch.Tensor] = {}
        for section, tree in current.items():
            prefix = "optimizer/state" if section == "optimizer" else section
            for name, t in _walk(tree, prefix):
                homes.setdefault(name, t)
        if optimizer is not None and not optimizer.state:
            homes.update(_predict_optimizer_state(optimizer))
        targets: Dict[str, snapback.Tensor] = {}
        staged: List[Tuple[torch.Tensor, torch.Tensor]] = []  # (device tensor, host)
        usable = True
        for name, t in homes.items():
            if t.dtype not in _DTYPE_NAMES or t.layout != torch.strided:
                usable = False
                break
            host = t.detach()
            if host.device.type != "cpu":
                pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
                staged.append((host, pinned))
                host = pinned
            elif not host.is_contiguous():
                usable = False
                break
            targets[name] = _host_view(host, name)
        result = None
        if usable:
            try:
                result = core.restore_into(targets, step=target_step)
            except snapback.InvalidArgument:
                result = None  # names/dtypes/shapes differ: nothing was written
        if result is not None:
            path = "in_place"
            for device_t, host in staged:
                device_t.copy_(host)
            tensors = dict(homes)
        else:
            path = "library_owned"
            result = core.restore(step=target_step)
            tensors = {name: _from_restored(rt) for name, rt in result.tensors.items()}
        blob = result.blobs.get(_STRUCTURE_BLOB)
        if blob is None:
            raise snapback.InvalidArgument(
                f"step {result.step} was not saved by snapback.torch (no structure blob)")
        saved = _unpickle(blob, tensors)
        if saved.get("format") != _FORMAT:
            raise snapback.InvalidArgument(
                f"structure format {saved.get('format')} is not {_FORMAT}")

        if model is not None:
            self._apply_model(model, model_sd, saved.get("model"), path)
        if optimizer is not None and "optimizer" in saved:
            _load_optimizer_state(optimizer, saved["optimizer"])
        if scheduler is not None and "scheduler" in saved:
            scheduler.load_state_dict(saved["scheduler"])
        if extra is not None and "extra" in saved:
            # Its tensors are the ones restored in place, or new ones.
            restored_extra = saved["extra"]
            extra.clear()
            extra.update(restored_extra)
        if self._rng and "rng" in saved:
            _set_rng_state(saved["rng"])
        self._step_base = int(saved["step"])
        self._optimizer_steps = 0
        self.last_restore = dict(step=int(saved["step"]), path=path, bytes=result.bytes,
                                 seconds=time.perf_counter() - started)
        return int(saved["step"]) + 1

    @staticmethod
    def _apply_model(model: torch.nn.Module, model_sd: Dict[str, Any],
                     saved_sd: Optional[Dict[str, Any]], path: str) -> None:
        if saved_sd is None:
            raise snapback.InvalidArgument("the checkpoint has no model state")
        now = {k for k, v in model_sd.items() if isinstance(v, torch.Tensor)}
        then = {k for k, v in saved_sd.items() if isinstance(v, torch.Tensor)}
        if now != then:
            raise snapback.InvalidArgument(
                "the model does not match the checkpoint: missing "
                f"{sorted(then - now)[:5]}, unexpected {sorted(now - then)[:5]}")
        if path == "library_owned":
            for key in now:
                dst, src = model_sd[key], saved_sd[key]
                if dst.shape != src.shape or dst.dtype != src.dtype:
                    raise snapback.InvalidArgument(
                        f"model tensor '{key}' is {dst.dtype}{list(dst.shape)}, the "
                        f"checkpoint's is {src.dtype}{list(src.shape)}")
            with torch.no_grad():
                for key in now:
                    model_sd[key].copy_(saved_sd[key])
        if any(not isinstance(v, torch.Tensor) for v in saved_sd.values()):
            # Non-tensor entries (a module's extra state) go through the
            # module's own loader; the tensors it copies are already in place.
            model.load_state_dict(saved_sd)

    # -- the rest ---------------------------------------------------------

    def wait_snapshot(self) -> None:
        """Blocks until the last save's snapshot copy is done.

        After it returns the model and optimizer may be mutated in any way.
        The optimizer's step() calls it by itself.
        """
        self._before_mutation()

    def report_step(self, step: int) -> None:
        """Tells the failure detector the loop reached `step` (cheap, no RPC)."""
        self._step_base = int(step)
        self._optimizer_steps = 0
        if self._core is not None and not self._closed:
            self._core.report_step(int(step))

    def flush(self) -> None:
        """Waits until every save in flight is committed.

        Raises:
          snapback.Error: a save failed.
        """
        if self._core is not None:
            self._core.flush()

    def close(self) -> None:
        """Waits for the saves in flight and disconnects. Idempotent.

        Raises:
          snapback.Error: a save in flight failed.
        """
        if self._closed:
            return
        self._closed = True
        for hook in list(self._model_hooks.values()):
            if hook is not None:
                hook.remove()
        self._model_hooks = weakref.WeakKeyDictionary()
        self._snapshot_pending = False
        if self._core is not None:
            self._core.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
