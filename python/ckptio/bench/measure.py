"""Measuring inside a worker: resident memory from ``/proc/self/status``, touching every
page of loaded tensors, and putting files into (or out of) the page cache."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def settle_memory() -> None:
    """Frees what the last operation left: a garbage collection (fast once the
    long-lived objects are frozen with ``gc.freeze()``), then glibc's ``malloc_trim(0)``,
    which hands freed heap pages back to the kernel. Without it a later operation would
    reuse already-faulted memory (faster than a fresh process) and its RSS growth would
    read too low.

    Example:
        >>> settle_memory()
    """
    gc.collect()
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def resident_fraction(paths: Iterable[Path]) -> float:
    """The fraction of the pages of ``paths`` that are in the page cache (``mincore``),
    checked before a cold load to make sure it is cold.

    Example:
        >>> resident_fraction([])
        0.0
    """
    resident = total = 0
    _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) != 0:
                return float("nan")
            resident += int(np.count_nonzero(np.ctypeslib.as_array(vec) & 1))
            total += pages
    return resident / total if total else 0.0


def memory_status() -> dict[str, int]:
    """Bytes of ``VmHWM`` (peak resident set), ``VmRSS`` and ``RssAnon`` of this process.

    Example:
        >>> memory_status()["VmRSS"] > 0
        True
    """
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Resets ``VmHWM`` to the current resident set (Linux ``clear_refs`` 5), so the
    next peak is the peak of what runs next. False where the kernel does not allow it.

    Example:
        >>> reset_peak_rss() in (True, False)
        True
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _as_numpy_bytes(value: Any) -> np.ndarray | None:
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        return flat.view(np.uint8) if flat.flags.c_contiguous else None
    if type(value).__module__.startswith("torch") and hasattr(value, "untyped_storage"):
        import torch

        flat = value.reshape(-1)
        return flat.view(torch.uint8).numpy() if flat.is_contiguous() else None
    return None


def touch(tree: Any) -> int:
    """Reads one byte of every page of every array / tensor in ``tree`` (dicts, lists,
    tuples, objects with ``.items()``), so lazily mapped data really comes in.
    Returns the number of array bytes visited.

    Example:
        >>> touch({"a": np.zeros(3, np.float32), "b": [np.ones((2, 2))]})
        44
    """
    total = sink = 0
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) or (hasattr(node, "items") and not hasattr(node, "shape")):
            stack.extend(v for _, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        else:
            raw = _as_numpy_bytes(node)
            if raw is None or raw.size == 0:
                continue
            sink += int(raw[::PAGE].sum()) + int(raw[-1])
            total += raw.size
    return total


def files_under(path: str | os.PathLike[str]) -> list[Path]:
    """Every regular file at or under ``path``.

    Example:
        >>> files_under("/nonexistent")
        []
    """
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []


def drop_from_cache(paths: Iterable[Path]) -> None:
    """Makes the next read of ``paths`` cold: fsync each file (dirty pages cannot be
    dropped), then ``posix_fadvise(DONTNEED)`` over the whole file.

    Example:
        >>> drop_from_cache([])
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(paths: Iterable[Path], chunk: int = 8 << 20) -> None:
    """Reads ``paths`` through once so the next read is served from the page cache.

    Example:
        >>> warm_cache([])
    """
    buf = bytearray(chunk)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
