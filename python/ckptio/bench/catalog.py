"""Every benchmarked library, in table order, and the worker families hosting them."""

from __future__ import annotations

from .library import Library
from .runners_ckptio import Ckptio, CkptioAsync, CkptioCopy, RawFile
from .runners_peers import (
    NumpySavez,
    SafetensorsNumpy,
    SafetensorsTorch,
    TorchLoadMmap,
    TorchSave,
)

#: Table order: ckptio first (the reference), the raw physical limit last.
LIBRARIES: tuple[type[Library], ...] = (
    Ckptio,
    CkptioAsync,
    CkptioCopy,
    SafetensorsNumpy,
    SafetensorsTorch,
    TorchSave,
    TorchLoadMmap,
    NumpySavez,
    RawFile,
)
BY_NAME: dict[str, type[Library]] = {lib.name: lib for lib in LIBRARIES}
REFERENCE = Ckptio.name
RAW = RawFile.name


def families() -> dict[str, list[str]]:
    """Worker family -> names of the libraries it hosts.

    Example:
        >>> families()["torch"]
        ['torch.save/load', 'torch.load mmap']
    """
    out: dict[str, list[str]] = {}
    for lib in LIBRARIES:
        out.setdefault(lib.family, []).append(lib.name)
    return out


def source_of(name: str) -> str:
    """The library whose saved checkpoint ``name`` opens and loads.

    Example:
        >>> source_of("torch.load mmap")
        'torch.save/load'
    """
    return BY_NAME[name].reads_from or name
