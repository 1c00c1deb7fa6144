"""The Tinker-style API: ``save_weights_for_sampler``, ``save_state``, ``load_state``,
``load_state_with_optimizer``, ``verify``, ``cleanup``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from . import _core
from ._location import Location, PathLike, is_url, storage_items
from ._plan import SavePlan, save_options
from .checkpoint import Checkpoint
from .errors import CheckpointNotFoundError

_T = TypeVar("_T")
#: Whole reads tried when an object-store checkpoint keeps being replaced mid-read.
_READ_ATTEMPTS = 3


class TrainingState(NamedTuple):
    """What ``load_state_with_optimizer`` returns; unpacks as a 4-tuple.

    Example:
        >>> TrainingState({}, {"step": 3}, 3, None).step
        3
    """

    weights: dict[str, Any]
    optimizer_state: Any
    step: int | None
    metadata: Any


def save_weights_for_sampler(
    path: PathLike,
    weights: Mapping[str, Any],
    *,
    metadata: Any = None,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
    extra_files: Mapping[str, Any] | None = None,
    part_size: int | None = None,
    parts_in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Location:
    """Saves weights only: a light, inference-ready ``sampler`` checkpoint.

    ``weights`` maps names to numpy arrays or torch tensors; they are written straight
    from their memory. The directory appears atomically; an existing one is replaced
    only with ``overwrite=True``. ``durable=False`` skips the fsyncs (faster, but a
    power loss may lose the checkpoint; never a half one under the name).

    ``extra_files`` saves small files with the weights, checksummed and committed with
    them: ``{"config.json": value}`` where a value is ``bytes``, a ``str`` (text), a
    path (``pathlib.Path``: the file's contents) or a dict (saved as JSON).

    ``path`` may be an ``s3://bucket/prefix/name`` URL (docs/STORAGE.md): the tensors
    stream from memory as parallel multipart uploads of ``part_size`` bytes (default
    8 MiB), ``parts_in_flight`` at a time (default 8), and the manifest is committed
    last with a conditional PUT. Endpoint and credentials come from the ``AWS_*``
    variables; ``storage_options`` overrides them per call (``{"endpoint": ...}``).

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "sampler-000100")
        >>> ckptio.save_weights_for_sampler(path, {"weight_happy": np.array(2.0)}).name
        'sampler-000100'
    """
    options = save_options(
        overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
        part_size=part_size, parts_in_flight=parts_in_flight, storage_options=storage_options,
    )  # fmt: skip
    return SavePlan(
        path, "sampler", weights, metadata=metadata, options=options, extra_files=extra_files
    ).write()


def save_state(
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
    extra_files: Mapping[str, Any] | None = None,
    part_size: int | None = None,
    parts_in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Location:
    """Saves weights and optimizer state: a ``state`` checkpoint for an exact resume.

    ``optimizer_state`` is any tree of dict / list / tuple whose leaves are arrays,
    tensors, or the scalars int, float, bool, None and str; it comes back identical
    (types, key order, bits). Nothing is pickled. ``extra_files`` as in
    ``save_weights_for_sampler``.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "step-1200")
        >>> weights = {"weight_happy": np.array(2.0), "weight_sad": np.array(-3.5)}
        >>> adam = {"weight_happy": {"m": 0.004, "v": 0.00002}, "step": 1200}
        >>> _ = ckptio.save_state(path, weights, adam, step=1200)
        >>> ckptio.load_state_with_optimizer(path).optimizer_state == adam
        True
    """
    options = save_options(
        overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
        part_size=part_size, parts_in_flight=parts_in_flight, storage_options=storage_options,
    )  # fmt: skip
    return SavePlan(
        path, "state", weights, optimizer_state, step=step, metadata=metadata, options=options,
        extra_files=extra_files,
    ).write()  # fmt: skip


def open(path: PathLike, *, storage_options: Mapping[str, Any] | None = None) -> Checkpoint:
    """Opens a checkpoint lazily: validates the manifest and headers, maps the files,
    reads no tensor data.

    A directory of plain safetensors files without a ckptio manifest (Hugging Face's
    ``save_pretrained`` output, one file or shards with their index), or a single
    ``.safetensors`` file, opens too: read-only, every header validated as for
    ckptio's own files, but without checksums, with one ``UnverifiedCheckpointWarning``.

    An ``s3://`` URL fetches only the manifest and the headers; each tensor is then
    read with ranged GETs when indexed (a copy, checksum checked: nothing is mapped).

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_weights_for_sampler(path, {"bias": np.float32(0.1)})
        >>> ckptio.open(path).info("bias")
        TensorInfo(name='bias', group='model', dtype='F32', shape=(), nbytes=4, file='model.safetensors')
    """
    return Checkpoint(path, allow_foreign=True, storage_options=storage_options)


def _retry_replaced(read: Callable[[], _T], path: PathLike) -> _T:
    """Runs a whole read; on an object store, starts it over if the checkpoint is
    replaced while it is read (its old data vanishes: never a mix of two saves)."""
    for _ in range(_READ_ATTEMPTS - 1):
        try:
            return read()
        except CheckpointNotFoundError as e:
            if not is_url(path) or "replaced or deleted while it was read" not in str(e):
                raise
    return read()


def load_state(
    path: PathLike,
    *,
    framework: str | None = None,
    device: Any = None,
    verify: bool = False,
    copy: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Loads the weights of either kind of checkpoint, in save order, as zero-copy
    views of the mapped files: numpy arrays or torch tensors, as they were saved, unless
    ``framework="numpy"`` or ``"torch"`` says otherwise.

    ``verify=True`` checks every tensor's checksum first. By default the load checks
    the manifest checksum, every header checksum and all structure, but not the data.
    ``copy=True`` reads the weights into fresh memory instead of mapping them (parallel
    reads, each tensor's checksum checked as it is read). Plain safetensors files open
    as in ``open`` (no checksums: ``verify=True`` refuses them). From an ``s3://`` URL
    every load is such a copy, by parallel ranged GETs (docs/STORAGE.md);
    ``storage_options`` overrides the ``AWS_*`` settings.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_weights_for_sampler(path, {"b": np.zeros(2), "a": np.ones(2)})
        >>> list(ckptio.load_state(path))
        ['b', 'a']
    """

    def read() -> dict[str, Any]:
        if copy:
            ckpt = Checkpoint(path, allow_foreign=True, storage_options=storage_options)
        else:  # mapped: warm the page cache in the background from the start
            ckpt = Checkpoint._for_load(
                path, allow_foreign=True, weights_only=True, storage_options=storage_options
            )
        if verify:
            ckpt.verify()
        return ckpt.weights(framework=framework, device=device, copy=copy)

    return _retry_replaced(read, path)


def load_state_with_optimizer(
    path: PathLike,
    *,
    framework: str | None = None,
    device: Any = None,
    verify: bool = False,
    copy: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> TrainingState:
    """Loads weights, optimizer state, step and metadata of a ``state`` checkpoint.

    Raises CheckpointKindError on a ``sampler`` checkpoint. Optimizer array leaves come
    back as the type they were saved as, and so do the weights; ``framework`` forces
    numpy or torch. ``copy=True`` reads everything into fresh memory, checking every
    tensor's checksum (see ``load_state``).

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_state(path, {"w": np.ones(2)}, {"step": 7}, step=7, metadata={"lr": 0.1})
        >>> weights, opt, step, meta = ckptio.load_state_with_optimizer(path)
        >>> opt, step, meta
        ({'step': 7}, 7, {'lr': 0.1})
    """

    def read() -> TrainingState:
        if copy:
            ckpt = Checkpoint(path, storage_options=storage_options)
        else:  # mapped: warm the page cache in the background from the start
            ckpt = Checkpoint._for_load(
                path, allow_foreign=False, weights_only=False, storage_options=storage_options
            )
        if verify:
            ckpt.verify()
        optimizer_state = ckpt.optimizer_state(framework=framework, device=device, copy=copy)
        weights = ckpt.weights(framework=framework, device=device, copy=copy)
        return TrainingState(weights, optimizer_state, ckpt.step, ckpt.metadata)

    return _retry_replaced(read, path)


def verify(
    path: PathLike, *, threads: int | None = None, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Checks every byte of a checkpoint against its checksums: tensors, headers, side
    files, manifest.

    Raises CorruptCheckpointError naming the file and tensor, FormatError for structural
    damage, CheckpointNotFoundError if there is no checkpoint. Returns the names of the
    files in the directory that the manifest does not list (added after the save):
    they are not corruption, but no checksum covers them.

    Example:
        >>> import numpy as np, ckptio, tempfile, os, pathlib
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_weights_for_sampler(path, {"w": np.arange(4)})
        >>> ckptio.verify(path)  # intact, nothing uncovered
        []
        >>> _ = pathlib.Path(path, "notes.txt").write_text("dropped in later")
        >>> ckptio.verify(path)
        ['notes.txt']
    """
    return _retry_replaced(
        lambda: Checkpoint(path, storage_options=storage_options).verify(threads=threads), path
    )


class CleanupResult(list[Location]):
    """What ``cleanup`` returns: the leftovers it removed or put back, as a list of
    paths, and in ``skipped`` the entries named like leftovers that it left alone,
    as ``(path, reason)`` pairs (a save in progress, something that is not a
    directory, another user's entry, a filesystem without locks).

    Example:
        >>> r = CleanupResult([Path("/d/.a.ckptio-tmp-1-0123456789abcdef")], [])
        >>> len(r), r.skipped
        (1, [])
    """

    def __init__(self, done: list[Location], skipped: list[tuple[Location, str]]) -> None:
        super().__init__(done)
        self.skipped = skipped


def cleanup(
    directory: PathLike, *, older_than: float = 3600.0, storage_options: Mapping[str, Any] | None = None
) -> CleanupResult:
    """Removes what interrupted saves left in ``directory`` (hidden
    ``.NAME.ckptio-tmp-*`` directories) and puts back an old checkpoint that an
    interrupted replace had moved aside (``.NAME.ckptio-old-*``). Returns the paths
    handled; ``.skipped`` lists what it left alone and why.

    A leftover is removed only once its save is proven over: a live save holds a lock
    on its directory (from any process, container or host that shares the lock), and
    cleanup removes a leftover only while it holds that lock itself. See
    docs/GUARANTEES.md.

    On an object store (``s3://bucket/prefix``: a checkpoint or a folder of them) it
    removes the data of saves that no manifest points to (killed before their commit,
    or replaced) once their newest object is ``older_than`` seconds old (default one
    hour: an object store has no lock to prove a save dead, so age stands in for it).

    Example:
        >>> import ckptio, tempfile, pathlib
        >>> d = tempfile.mkdtemp()
        >>> pathlib.Path(d, ".ck.ckptio-tmp-1-0123456789abcdef").touch()  # not ckptio's
        >>> result = ckptio.cleanup(d)
        >>> result, [reason.split(",")[0] for _, reason in result.skipped]
        ([], ['not a directory'])
    """
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0, got {older_than}")
    done, skipped = _core.cleanup(os.fspath(directory), storage_items(storage_options), older_than)
    place = str if is_url(directory) else Path
    return CleanupResult([place(p) for p in done], [(place(p), why) for p, why in skipped])
