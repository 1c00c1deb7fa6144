"""Async saves: the call returns as soon as the tensors are snapshotted; the write,
checksums, fsyncs and commit run in a background thread.

- ``snapshot=True`` (default): every tensor still in the caller's memory is copied
  into a staging buffer (parallel copy, GIL released) before the call returns, so the
  caller may update its weights at once and the checkpoint holds the values of the
  moment of the call. Costs one extra copy of the state in RAM until the write ends.
- The staging buffer of a finished save is kept for the next one (one buffer, the
  largest), so a training loop that saves every N steps pays the page faults of a
  fresh allocation once; ``release_staging_memory()`` frees it.
- ``snapshot=False``: no copy; the caller promises not to change the tensors' values
  until the future is done. The save holds the tensors' storages until then, so
  rebinding ``p.data`` meanwhile is safe (the old values are saved); a storage resized
  before the write starts makes the save fail cleanly.
- Saves to one target run one at a time, in call order: a second save to a path whose
  previous async save is still running is snapshotted at once and then waits, in the
  background, for the first to finish. The caller never waits for it.
- At interpreter exit, pending saves are completed (the worker threads are joined) and
  any failure nobody looked at is reported on stderr. A process killed mid-save leaves
  the previous checkpoint intact: commits are atomic.
- A child made by ``fork`` (multiprocessing's default start method on Linux) starts
  with no pending saves and new worker threads: the parent's saves stay the parent's.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import numpy as np

from ._location import Location
from ._plan import PathLike, SavePlan, save_options

_WORKERS = 4


class SaveFuture(Future[Location]):
    """A ``concurrent.futures.Future`` whose result is the checkpoint path; a failed
    save raises its exception from ``result()``.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> fut = ckptio.save_weights_for_sampler_async(os.path.join(tempfile.mkdtemp(), "a"), {})
        >>> fut.result().name, fut.done(), fut.exception()
        ('a', True, None)
    """

    def __init__(self, path: Location) -> None:
        super().__init__()
        self.path = path
        self._observed = False

    def result(self, timeout: float | None = None) -> Location:
        self._observed = True
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._observed = True
        return super().exception(timeout)


_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_last_by_target: dict[str, SaveFuture] = {}
_all: list[SaveFuture] = []
_spare_staging: list[np.ndarray] = []  # at most one buffer, reused by the next snapshot


def _take_staging(need: int) -> np.ndarray | None:
    with _lock:
        if _spare_staging and len(_spare_staging[0]) >= need:
            return _spare_staging.pop()
    return None


def _give_back_staging(buf: np.ndarray) -> None:
    with _lock:
        if not _spare_staging or len(_spare_staging[0]) < len(buf):
            _spare_staging[:] = [buf]


def release_staging_memory() -> None:
    """Frees the staging buffer kept from the last async save.

    Example:
        >>> import ckptio
        >>> ckptio.release_staging_memory()
    """
    with _lock:
        _spare_staging.clear()


def _run(plan: SavePlan, future: SaveFuture, previous: SaveFuture | None, staging: np.ndarray | None) -> None:
    try:
        if previous is not None:
            wait_futures([previous])  # one save per target at a time, in call order
        if future.set_running_or_notify_cancel():
            future.set_result(plan.write())
    except BaseException as e:
        future.set_exception(e)
    finally:
        del plan  # drop the views into the staging buffer before handing it on
        if staging is not None:
            _give_back_staging(staging)


def _submit(plan: SavePlan, snapshot: bool) -> SaveFuture:
    global _executor
    staging = None
    if snapshot:
        staging = plan.snapshot(_take_staging(plan.staging_bytes()))
    else:
        plan.hold_storages()
    future = SaveFuture(plan.path)
    key = os.path.abspath(plan.path)
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="ckptio-save")
        previous = _last_by_target.get(key)
        _last_by_target[key] = future
        _all[:] = [f for f in _all if not f.done() or (f.exception() is not None and not f._observed)]
        _all.append(future)
        waits_for = previous if previous is not None and not previous.done() else None
        _executor.submit(_run, plan, future, waits_for, staging)
    return future


def save_state_async(
    path: PathLike,
    weights: Mapping[str, Any],
    optimizer_state: Any,
    *,
    step: int | None = None,
    metadata: Any = None,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
    snapshot: bool = True,
    extra_files: Mapping[str, Any] | None = None,
    part_size: int | None = None,
    parts_in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> SaveFuture:
    """``save_state`` in the background; returns once the state is snapshotted.

    Argument errors (bad names, dtypes, tree leaves, unreadable ``extra_files``) raise
    here, at once; errors of the write itself (disk full, target exists) come from
    ``future.result()``. ``extra_files`` are read during the call.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> w = {"w": np.zeros(3)}
        >>> fut = ckptio.save_state_async(os.path.join(tempfile.mkdtemp(), "s"), w, {"step": 1})
        >>> w["w"] += 1  # safe: the checkpoint keeps the values of the call
        >>> ckptio.load_state(fut.result())["w"].tolist()
        [0.0, 0.0, 0.0]
    """
    options = save_options(
        overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
        part_size=part_size, parts_in_flight=parts_in_flight, storage_options=storage_options,
    )  # fmt: skip
    plan = SavePlan(
        path, "state", weights, optimizer_state, step=step, metadata=metadata, options=options,
        extra_files=extra_files,
    )  # fmt: skip
    return _submit(plan, snapshot)


def save_weights_for_sampler_async(
    path: PathLike,
    weights: Mapping[str, Any],
    *,
    metadata: Any = None,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
    snapshot: bool = True,
    extra_files: Mapping[str, Any] | None = None,
    part_size: int | None = None,
    parts_in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> SaveFuture:
    """``save_weights_for_sampler`` in the background; returns once the weights are
    snapshotted (see ``save_state_async``).

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "s")
        >>> fut = ckptio.save_weights_for_sampler_async(path, {"w": np.ones(2)})
        >>> fut.result().name
        's'
    """
    options = save_options(
        overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
        part_size=part_size, parts_in_flight=parts_in_flight, storage_options=storage_options,
    )  # fmt: skip
    plan = SavePlan(path, "sampler", weights, metadata=metadata, options=options, extra_files=extra_files)
    return _submit(plan, snapshot)


def wait_for_saves(timeout: float | None = None) -> list[Location]:
    """Waits for every pending async save; returns their paths and raises the first
    failure among them.

    Example:
        >>> import ckptio
        >>> ckptio.wait_for_saves()
        []
    """
    with _lock:
        pending = [f for f in _all if not f.done() or not f._observed]
    wait_futures(pending, timeout=timeout)
    return [f.result(timeout=0) for f in pending]


def _start_afresh_in_child() -> None:
    """After ``fork``: the child has none of the parent's worker threads, and the lock
    may have been held by one of them. Pending saves are the parent's to finish; the
    child starts with no executor, a new lock and no saves of its own."""
    global _lock, _executor
    _lock = threading.Lock()
    _executor = None  # the parent's, whose threads do not exist here: never shut down
    _last_by_target.clear()
    _all.clear()
    _spare_staging.clear()


os.register_at_fork(after_in_child=_start_afresh_in_child)


def _report_unobserved_failures() -> None:
    # ThreadPoolExecutor joins its workers before atexit handlers run, so every
    # pending save has finished here.
    for f in list(_all):
        if f.done() and not f.cancelled() and not f._observed and f.exception() is not None:
            print(f"ckptio: async save to {f.path} failed: {f._exception!r}", file=sys.stderr)


atexit.register(_report_unobserved_failures)
