"""What a benchmarked library is: its operations, and the fsync helpers that give the
peers a durable save when they have none of their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .workloads import TrainingState

#: Opens timed per round. One open takes 0.2-5 ms, and single opens of one build
#: measured 2.2-2.4 ms and 3.2-3.5 ms within one run (docs/ENGINE.md): one sample per
#: round is as noisy as the gap between libraries, so each round takes the median of
#: several, each after its own garbage collection and ``malloc_trim`` as before.
OPEN_REPEATS = 9

SAVE, SAVE_DURABLE, OPEN, LOAD_HOT, LOAD_COLD, VERIFY = (
    "save",
    "save durable",
    "open",
    "load hot",
    "load cold",
    "verify",
)
#: Every operation, in the order a round runs them.
OPERATIONS = (SAVE, SAVE_DURABLE, OPEN, LOAD_HOT, LOAD_COLD, VERIFY)
SAVES = (SAVE, SAVE_DURABLE)
LOADS = (LOAD_HOT, LOAD_COLD)
#: Operations timed as a rate (GB/s); ``open`` is a latency.
RATE_OPERATIONS = (SAVE, SAVE_DURABLE, LOAD_HOT, LOAD_COLD, VERIFY)
OPERATION_HELP = {
    SAVE: "save to the page cache (no fsync)",
    SAVE_DURABLE: "save with fsync of files and directories (only ckptio has the option; raw: write + fsync)",
    OPEN: f"lazy open: parse headers / index, read no tensor data; a round: median of {OPEN_REPEATS} opens",
    LOAD_HOT: "load everything and touch every page, files in the page cache",
    LOAD_COLD: "load and touch every page after fsync + posix_fadvise(DONTNEED)",
    VERIFY: "check every byte against stored checksums, files in the page cache",
}


class Library:
    """One row family of the comparison; its methods run inside a worker process.

    Subclasses set the class attributes and implement the operations they list. Paths
    are directories that do not exist yet (saves) or that a save made (the rest).

    Example:
        >>> Library.name, SAVE in Library.operations
        ('library', False)
    """

    name: ClassVar[str] = "library"
    #: The worker process that hosts it (one per family: they share one state copy).
    family: ClassVar[str] = "none"
    operations: ClassVar[tuple[str, ...]] = ()
    #: Loads and opens read the checkpoint that this library saved (None: its own).
    reads_from: ClassVar[str | None] = None
    #: Shown under the table, e.g. how durability is obtained.
    note: ClassVar[str] = ""
    #: The physical-limit row.
    is_raw: ClassVar[bool] = False

    def unavailable(self) -> str | None:
        """Why this library cannot run here (not installed, too old), or None."""
        return None

    def version(self) -> str:
        """The installed version, for the report."""
        return ""

    def configure(self, settings: dict[str, Any]) -> None:
        """Takes the run's settings (the S3 rows: part size, parts in flight) before
        anything else; the local rows have none."""

    def prepare(self, state: TrainingState) -> None:
        """Keeps the state in the form the library saves (views, never copies)."""
        self.state = state

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        """Saves the prepared state at ``path``; returns extra figures (e.g. a stall)."""
        raise NotImplementedError

    def open(self, path: Path) -> Any:
        """Opens lazily; returns the handle."""
        raise NotImplementedError

    def load(self, path: Path) -> Any:
        """Loads everything; returns the tree of arrays (touched by the caller)."""
        raise NotImplementedError

    def verify(self, path: Path) -> None:
        """Checks every byte; raises on corruption."""
        raise NotImplementedError


def flat_pieces(state: TrainingState) -> tuple[list[tuple[int, memoryview]], int]:
    """Every array of ``state`` as ``(offset, bytes)`` in one flat layout (the raw
    rows' "same bytes, no format"), and the total size.

    Example:
        >>> from ckptio.bench.workloads import build_state
        >>> pieces, total = flat_pieces(build_state("lora", 1 << 20))
        >>> pieces[0][0], total == sum(len(p) for _, p in pieces)
        (0, True)
    """
    pieces: list[tuple[int, memoryview]] = []
    offset = 0
    for _, array in state.flat():
        pieces.append((offset, array.reshape(-1).view(np.uint8).data))
        offset += array.nbytes
    return pieces, offset


def fsync_file(path: Path) -> None:
    """fsyncs one file or directory.

    Example:
        >>> fsync_file(Path("."))
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_saved(directory: Path) -> None:
    """Makes a peer's save durable the way a careful caller would: fsync every file in
    ``directory``, the directory, and its parent (which gained the directory's entry).

    Example:
        >>> import tempfile
        >>> fsync_saved(Path(tempfile.mkdtemp()))
    """
    for entry in directory.iterdir():
        if entry.is_file():
            fsync_file(entry)
    fsync_file(directory)
    fsync_file(directory.parent)


def module_version(module_name: str) -> str:
    """``__version__`` of an importable module, or ``""``.

    Example:
        >>> module_version("numpy") != ""
        True
    """
    try:
        module = __import__(module_name)
    except ImportError:
        return ""
    return str(getattr(module, "__version__", ""))
