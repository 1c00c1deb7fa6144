"""ckptio's own rows (sync save, async save, zero-copy and copying loads) and the raw
``write()`` / ``read()`` physical-limit row."""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any

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
    operations = (SAVE, SAVE_DURABLE, OPEN, LOAD_HOT, LOAD_COLD, VERIFY)
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
    """``ckptio.save_state_async`` to the page cache: the call returns once the state is
    snapshotted; the figure is the time until ``result()``, the stall is the call itself.

    Example:
        >>> CkptioAsync.operations
        ('save',)
    """

    name = "ckptio async"
    operations = (SAVE,)
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


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data[:_RAW_CHUNK])
        data = data[written:]


class RawFile(Library):
    """The physical limit: the same tensor bytes in one file, written with ``write()``
    and read back with ``read()`` into one reused, pre-faulted buffer: no format, no
    allocation, one thread; what is left is the kernel's copy and the device.

    Example:
        >>> RawFile.is_raw
        True
    """

    name = "raw write/read"
    family = "raw"
    operations = (SAVE, SAVE_DURABLE, LOAD_HOT, LOAD_COLD)
    is_raw = True
    note = "the physical limit: the same bytes, no format, one write()/read() stream, reused buffer"
    FILE = "tensors.bin"

    def version(self) -> str:
        return "os.write / os.readv"

    def prepare(self, state: TrainingState) -> None:
        self.state = state
        self.buffer = np.ones(state.nbytes, dtype=np.uint8)  # faulted in now, not timed

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        path.mkdir()
        fd = os.open(path / self.FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for _, array in self.state.flat():
                _write_all(fd, memoryview(array.reshape(-1).view(np.uint8)))
        finally:
            os.close(fd)
        if durable:
            fsync_saved(path)
        return {}

    def load(self, path: Path) -> Any:
        file = path / self.FILE
        data = self.buffer[: file.stat().st_size]
        view = memoryview(data)
        fd = os.open(file, os.O_RDONLY)
        try:
            done = 0
            while done < len(view):
                n = os.readv(fd, [view[done : done + _RAW_CHUNK]])
                if n == 0:
                    raise OSError(f"{file}: unexpected end of file")
                done += n
        finally:
            os.close(fd)
        return data
