"""Every benchmarked library, in table order, and the worker families hosting them: the
local suite (files in a directory) and the S3 suite (``ckptio bench --s3``)."""

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
from .runners_s3 import S3_LIBRARIES

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
#: The suites a worker can host: the same name may mean a local and an S3 row.
SUITES: dict[str, tuple[type[Library], ...]] = {"local": LIBRARIES, "s3": S3_LIBRARIES}


def by_name(suite: str = "local") -> dict[str, type[Library]]:
    """Name -> library class of one suite.

    Example:
        >>> by_name("s3")["ckptio"].family
        's3-ckptio'
    """
    return {lib.name: lib for lib in SUITES[suite]}


def families(libraries: tuple[type[Library], ...] = LIBRARIES) -> dict[str, list[str]]:
    """Worker family -> names of the libraries it hosts.

    Example:
        >>> families()["torch"]
        ['torch.save/load', 'torch.load mmap']
    """
    out: dict[str, list[str]] = {}
    for lib in libraries:
        out.setdefault(lib.family, []).append(lib.name)
    return out


def source_of(name: str) -> str:
    """The library whose saved checkpoint ``name`` opens and loads.

    Example:
        >>> source_of("torch.load mmap")
        'torch.save/load'
    """
    return BY_NAME[name].reads_from or name
