"""The Tinker-style API: ``save_weights_for_sampler``, ``save_state``, ``load_state``,
``load_state_with_optimizer``, ``verify``, ``cleanup``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from . import _core
from ._tensors import as_saveable, storage_key
from ._tree import flatten
from .checkpoint import OPTIMIZER, WEIGHTS, Checkpoint

PathLike = str | os.PathLike[str]


class TrainingState(NamedTuple):
    """What ``load_state_with_optimizer`` returns; unpacks as a 4-tuple."""

    weights: dict[str, Any]
    optimizer_state: Any
    step: int | None
    metadata: Any


def _user_section(metadata: Any, step: Any, optimizer_skeleton: Any, weights: _Weights) -> str:
    if step is not None:
        if isinstance(step, bool) or not hasattr(step, "__index__"):
            raise TypeError(f"step must be an int or None, got {type(step).__name__}")
        step = int(step)
    try:
        meta_json = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise type(e)(f"metadata must be JSON-serializable (no NaN/inf): {e}") from None
    section: dict[str, Any] = {"step": step, "optimizer": optimizer_skeleton}
    if weights.aliases:
        section["aliases"] = weights.aliases
        section["order"] = weights.order
    body = json.dumps(section, allow_nan=False)
    return '{"metadata":' + meta_json + "," + body[1:]


class _Weights(NamedTuple):
    """The weights group ready for the core, with tied entries folded."""

    rows: list[tuple[str, str, list[int], Any]]
    aliases: list[tuple[str, str]]  # (alias, name stored)
    order: list[str]


def _rows(items: Any, *, fold_tied: bool) -> _Weights:
    rows: list[tuple[str, str, list[int], Any]] = []
    aliases: list[tuple[str, str]] = []
    order: list[str] = []
    stored: dict[tuple[Any, ...], str] = {}
    for name, value in items:
        key = storage_key(value) if fold_tied and isinstance(name, str) else None
        if key is not None and key in stored:  # tied weights: same memory, store once
            aliases.append((name, stored[key]))
        else:
            s = as_saveable(name, value)
            rows.append((name, s.dtype, list(s.shape), s.buffer))
            if key is not None:
                stored[key] = name
        order.append(name)
    return _Weights(rows, aliases, order)


def _fold_weights(weights: Mapping[str, Any]) -> _Weights:
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
    return _rows(weights.items(), fold_tied=True)


def _save(
    path: PathLike,
    kind: str,
    weights: _Weights,
    optimizer_arrays: list[tuple[str, Any]] | None,
    user_json: str,
    *,
    overwrite: bool,
    durable: bool,
    threads: int | None,
    max_shard_bytes: int | None,
) -> Path:
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if threads is not None and threads <= 0:
        raise ValueError(f"threads must be positive, got {threads}")
    groups: list[tuple[Any, ...]] = [(WEIGHTS, weights.rows, [("format", "pt")])]
    if optimizer_arrays is not None:
        groups.append((OPTIMIZER, _rows(optimizer_arrays, fold_tied=False).rows, []))
    _core.save(
        os.fspath(path),
        kind,
        groups,
        user_json,
        overwrite=overwrite,
        durable=durable,
        threads=threads or 0,
        max_shard_bytes=max_shard_bytes,
    )
    return Path(path)


def save_weights_for_sampler(
    path: PathLike,
    weights: Mapping[str, Any],
    *,
    metadata: Any = None,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Saves weights only: a light, inference-ready ``sampler`` checkpoint.

    ``weights`` maps names to numpy arrays or torch tensors; they are written straight
    from their memory. The directory appears atomically; an existing one is replaced
    only with ``overwrite=True``. ``durable=False`` skips the fsyncs (faster, but a
    power loss may lose the checkpoint; never a half one under the name).

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "sampler-000100")
        >>> ckptio.save_weights_for_sampler(path, {"weight_happy": np.array(2.0)}).name
        'sampler-000100'
    """
    folded = _fold_weights(weights)
    user = _user_section(metadata, None, None, folded)
    return _save(
        path, "sampler", folded, None, user,
        overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
    )  # fmt: skip


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
) -> Path:
    """Saves weights and optimizer state: a ``state`` checkpoint for an exact resume.

    ``optimizer_state`` is any tree of dict / list / tuple whose leaves are arrays,
    tensors, or the scalars int, float, bool, None and str; it comes back identical
    (types, key order, bits). Nothing is pickled.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "step-1200")
        >>> weights = {"weight_happy": np.array(2.0), "weight_sad": np.array(-3.5)}
        >>> adam = {"weight_happy": {"m": 0.004, "v": 0.00002}, "step": 1200}
        >>> _ = ckptio.save_state(path, weights, adam, step=1200)
        >>> ckptio.load_state_with_optimizer(path).optimizer_state == adam
        True
    """
    folded = _fold_weights(weights)
    skeleton, arrays = flatten(optimizer_state)
    user = _user_section(metadata, step, skeleton, folded)
    return _save(
        path, "state", folded, arrays, user,
        overwrite=overwrite, durable=durable, threads=threads, max_shard_bytes=max_shard_bytes,
    )  # fmt: skip


def open(path: PathLike) -> Checkpoint:
    """Opens a checkpoint lazily: validates the manifest and headers, maps the files,
    reads no tensor data.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_weights_for_sampler(path, {"bias": np.float32(0.1)})
        >>> ckptio.open(path).info("bias")
        TensorInfo(name='bias', group='model', dtype='F32', shape=(), nbytes=4, file='model.safetensors')
    """
    return Checkpoint(path)


def load_state(
    path: PathLike, *, framework: str = "numpy", device: Any = None, verify: bool = False
) -> dict[str, Any]:
    """Loads the weights of either kind of checkpoint, in save order, as zero-copy
    views of the mapped files (numpy, or torch with ``framework="torch"``).

    ``verify=True`` checks every tensor's checksum first. By default the load checks
    the manifest checksum, every header checksum and all structure, but not the data.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_weights_for_sampler(path, {"b": np.zeros(2), "a": np.ones(2)})
        >>> list(ckptio.load_state(path))
        ['b', 'a']
    """
    ckpt = Checkpoint(path)
    if verify:
        ckpt.verify()
    ckpt.prefetch()
    return ckpt.weights(framework=framework, device=device)


def load_state_with_optimizer(
    path: PathLike, *, framework: str | None = None, device: Any = None, verify: bool = False
) -> TrainingState:
    """Loads weights, optimizer state, step and metadata of a ``state`` checkpoint.

    Raises CheckpointKindError on a ``sampler`` checkpoint. Optimizer array leaves come
    back as the type they were saved as; ``framework`` forces numpy or torch.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_state(path, {"w": np.ones(2)}, {"step": 7}, step=7, metadata={"lr": 0.1})
        >>> weights, opt, step, meta = ckptio.load_state_with_optimizer(path)
        >>> opt, step, meta
        ({'step': 7}, 7, {'lr': 0.1})
    """
    ckpt = Checkpoint(path)
    optimizer_state = ckpt.optimizer_state(framework=framework, device=device)
    if verify:
        ckpt.verify()
    ckpt.prefetch()
    weights = ckpt.weights(framework=framework or "numpy", device=device)
    return TrainingState(weights, optimizer_state, ckpt.step, ckpt.metadata)


def verify(path: PathLike, *, threads: int | None = None) -> None:
    """Checks every byte of a checkpoint against its checksums.

    Raises CorruptCheckpointError naming the file and tensor, FormatError for structural
    damage, CheckpointNotFoundError if there is no checkpoint.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.save_weights_for_sampler(path, {"w": np.arange(4)})
        >>> ckptio.verify(path)  # silent when intact
    """
    Checkpoint(path).verify(threads=threads)


def cleanup(directory: PathLike) -> list[Path]:
    """Removes what interrupted saves left in ``directory`` (hidden ``.NAME.ckptio-tmp-*``
    directories of dead processes) and puts back an old checkpoint that an interrupted
    replace had moved aside. Returns the paths handled.

    Example:
        >>> import ckptio, tempfile
        >>> ckptio.cleanup(tempfile.mkdtemp())
        []
    """
    return [Path(p) for p in _core.cleanup(os.fspath(directory))]
