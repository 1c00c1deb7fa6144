"""``ckptio.copy``: a checkpoint from one place to another (local paths and ``s3://``
URLs, either way), every checksum checked on the way, committed atomically."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from . import _core
from ._location import Location, PathLike, as_location, storage_items
from ._plan import save_options


def copy(
    src: PathLike,
    dst: PathLike,
    *,
    overwrite: bool = False,
    durable: bool = True,
    part_size: int | None = None,
    parts_in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    src_storage_options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Location:
    """Copies the checkpoint at ``src`` to ``dst``: local → S3, S3 → local, S3 → S3 or
    local → local. Every file is streamed (no buffer the size of the checkpoint), every
    tensor and header is checked against its checksum on the way (CorruptCheckpointError
    names the first bad one, and nothing is committed), and ``dst`` appears atomically,
    as a save does. The copy is the same checkpoint (same id): a local copy is an
    ordinary ckptio checkpoint whose weights any safetensors reader opens.

    ``storage_options`` apply to both ends unless ``src_storage_options`` is given;
    ``progress(done_bytes, total_bytes)`` is called as tensor files stream.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> _ = ckptio.save_weights_for_sampler(os.path.join(d, "a"), {"w": np.arange(3)})
        >>> ckptio.copy(os.path.join(d, "a"), os.path.join(d, "b")).name
        'b'
        >>> ckptio.load_state(os.path.join(d, "b"))["w"].tolist()
        [0, 1, 2]
    """
    options = save_options(
        overwrite=overwrite, durable=durable, part_size=part_size, parts_in_flight=parts_in_flight,
        storage_options=storage_options,
    )  # fmt: skip
    _core.copy(os.fspath(src), os.fspath(dst), options, storage_items(src_storage_options), progress)
    return as_location(dst)
