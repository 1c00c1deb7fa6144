"""ckptio's own rows (sync save, async save, zero-copy and copying loads) and the raw
``write()`` / ``read()`` physical-limit row."""

from __future__ import annotations

import inspect
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import ckptio

from .library import (
    LOAD_COLD,
    LOAD_HOT,
    OPEN,
    SAVE,
    SAVE_DURABLE,
    VERIFY,
    Library,
    flat_pieces,
    fsync_saved,
)
from .workloads import TrainingState

_RAW_CHUNK = 256 << 20


class Ckptio(Library):
    """``ckptio.save_state`` / ``load_state_with_optimizer`` / ``open`` / ``verify``.

    Example:
        >>> Ckptio().unavailable() is None
        True
    """

    name = "ckptio"
    family = "ckptio"
    operations: ClassVar[tuple[str, ...]] = (SAVE, SAVE_DURABLE, OPEN, LOAD_HOT, LOAD_COLD, VERIFY)
    note = "loads are zero-copy views of the mapped files (the default)"

    def version(self) -> str:
        return ckptio.__version__

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        s = self.state
        ckptio.save_state(path, s.weights, s.optimizer, step=s.step, durable=durable)
        return {}

    def open(self, path: Path) -> Any:
        ckpt = ckptio.open(path)
        ckpt.names  # noqa: B018 - what a caller does first: list the tensors
        return ckpt

    def load(self, path: Path) -> Any:
        return ckptio.load_state_with_optimizer(path)

    def verify(self, path: Path) -> None:
        ckptio.verify(path)


class CkptioAsync(Ckptio):
    """``ckptio.save_state_async``: the call returns once the state is snapshotted; the
    figure is the time until ``result()``, the stall is the call itself.

    Example:
        >>> CkptioAsync.operations
        ('save', 'save durable')
    """

    name = "ckptio async"
    operations = (SAVE, SAVE_DURABLE)
    note = (
        "time = until result(); stall = the call itself, the training loop's pause; the staging "
        "buffer of the first (untimed) save is reused, as in a training loop"
    )

    def unavailable(self) -> str | None:
        if not hasattr(ckptio, "save_state_async"):
            return f"this ckptio ({ckptio.__version__}) has no save_state_async"
        return None

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        s = self.state
        start = time.perf_counter()
        future = ckptio.save_state_async(path, s.weights, s.optimizer, step=s.step, durable=durable)
        stall = time.perf_counter() - start
        future.result()
        return {"stall": stall}


class CkptioCopy(Ckptio):
    """``load_state_with_optimizer(..., copy=True)``: arrays read into process memory.

    Example:
        >>> CkptioCopy.reads_from
        'ckptio'
    """

    name = "ckptio copy=True"
    operations = (LOAD_HOT, LOAD_COLD)
    reads_from = "ckptio"
    note = "arrays read into RAM with parallel reads instead of mapped"

    def unavailable(self) -> str | None:
        if "copy" not in inspect.signature(ckptio.load_state_with_optimizer).parameters:
            return f"this ckptio ({ckptio.__version__}) has no load_state_with_optimizer(copy=True)"
        return None

    def load(self, path: Path) -> Any:
        return ckptio.load_state_with_optimizer(path, copy=True)  # type: ignore[call-arg]


_threads: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    if not _threads:
        _threads.append(ThreadPoolExecutor(_cores(), thread_name_prefix="raw-io"))
    return _threads[0]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """``total`` bytes cut into ``parts`` contiguous ranges, page-aligned.

    Example:
        >>> split_ranges(10000, 2)
        [(0, 8192), (8192, 10000)]
    """
    step = -(-total // max(parts, 1))
    step = -(-step // 4096) * 4096
    return [(a, min(a + step, total)) for a in range(0, total, step)] or [(0, 0)]


def _pwrite_range(fd: int, pieces: list[tuple[int, memoryview]], begin: int, end: int) -> None:
    """Writes the bytes ``[begin, end)`` of the concatenated ``pieces`` (offset, bytes)."""
    for offset, data in pieces:
        lo, hi = max(begin, offset), min(end, offset + len(data))
        while lo < hi:
            n = os.pwrite(fd, data[lo - offset : min(hi, lo + _RAW_CHUNK) - offset], lo)
            lo += n


def _pread_range(fd: int, buffer: memoryview, begin: int, end: int, file: Path) -> None:
    while begin < end:
        n = os.preadv(fd, [buffer[begin : min(end, begin + _RAW_CHUNK)]], begin)
        if n == 0:
            raise OSError(f"{file}: unexpected end of file")
        begin += n


class RawFile(Library):
    """The physical limit: the same tensor bytes as one file, no format, written with
    ``pwrite()`` and read back with ``preadv()`` into one reused, pre-faulted buffer,
    by one thread per core over contiguous slices (the GIL is released in those
    calls): what is left is the kernel's copy and the device.

    Example:
        >>> RawFile.is_raw
        True
    """

    name = "raw write/read"
    family = "raw"
    operations = (SAVE, SAVE_DURABLE, LOAD_HOT, LOAD_COLD)
    is_raw = True
    note = (
        "the physical limit: the same bytes in one file, no format, pwrite()/preadv() of "
        "contiguous slices by one thread per core, into a reused buffer; durable = + fsync"
    )
    FILE = "tensors.bin"

    def version(self) -> str:
        return f"os.pwrite / os.preadv, {_cores()} threads"

    def prepare(self, state: TrainingState) -> None:
        self.pieces, self.nbytes = flat_pieces(state)
        self.buffer = np.ones(self.nbytes, dtype=np.uint8)  # faulted in now, not timed

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        path.mkdir()
        fd = os.open(path / self.FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            ranges = split_ranges(self.nbytes, _cores())
            for done in [_pool().submit(_pwrite_range, fd, self.pieces, a, b) for a, b in ranges]:
                done.result()
        finally:
            os.close(fd)
        if durable:
            fsync_saved(path)
        return {}

    def load(self, path: Path) -> Any:
        file = path / self.FILE
        size = file.stat().st_size
        data = self.buffer[:size]
        view = data.data
        fd = os.open(file, os.O_RDONLY)
        try:
            ranges = split_ranges(size, _cores())
            for done in [_pool().submit(_pread_range, fd, view, a, b, file) for a, b in ranges]:
                done.result()
        finally:
            os.close(fd)
        return data
