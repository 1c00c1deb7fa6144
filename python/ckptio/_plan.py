"""A save, prepared: arguments checked, tensors turned into byte views, the optimizer
tree flattened, the manifest's user section encoded. ``write()`` hands it to the core;
``snapshot()`` first copies the caller's memory aside (for async saves)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from . import _core
from ._gc import gc_paused
from ._location import Location, as_location, storage_items
from ._side_files import prepare_side_files
from ._tensors import SameViews, as_saveable, is_torch_tensor
from ._tree import flatten, int_json
from .checkpoint import OPTIMIZER, WEIGHTS

PathLike = str | os.PathLike[str]
_ALIGN = 64  # staging slices start on cache lines


class _Row(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: Any  # a buffer or a CPU torch tensor (the binding checks and holds its memory)
    nbytes: int
    owner: Any
    borrowed: bool  # still the caller's memory


class _Rows(NamedTuple):
    rows: list[_Row]
    aliases: list[tuple[str, str]]  # (alias, stored name): tied weights
    order: list[str]


def _rows(items: Any, *, fold_tied: bool) -> _Rows:
    rows: list[_Row] = []
    aliases: list[tuple[str, str]] = []
    order: list[str] = []
    views = SameViews()
    for name, value in items:
        tied = views.find_or_add(value, name) if fold_tied and isinstance(name, str) else None
        if tied is not None:  # tied weights: the same view of the same memory, store once
            aliases.append((name, tied))
        else:
            rows.append(_Row(name, *as_saveable(name, value)))
        order.append(name)
    return _Rows(rows, aliases, order)


def _user_section(
    metadata: Any, step: Any, skeleton: Any, weights: _Rows, weights_group: str, extra: Mapping[str, Any]
) -> str:
    if step is not None:
        if isinstance(step, bool) or not hasattr(step, "__index__"):
            raise TypeError(f"step must be an int or None, got {type(step).__name__}")
        step = int_json(int(step))
    try:
        meta_json = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise type(e)(f"metadata must be JSON-serializable (no NaN/inf): {e}") from None
    section: dict[str, Any] = {"step": step, "optimizer": skeleton}
    if weights.rows and all(is_torch_tensor(r.owner) for r in weights.rows):
        section["framework"] = "torch"  # loads default to what was saved
    if weights.aliases:
        section["aliases"] = weights.aliases
        section["order"] = weights.order
    if weights_group != WEIGHTS:  # e.g. adapter_model.safetensors for PEFT
        section["weights_group"] = weights_group
    section.update(extra)
    return '{"metadata":' + meta_json + "," + json.dumps(section, allow_nan=False)[1:]


def save_options(
    *,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
    part_size: int | None = None,
    parts_in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> _core.SaveOptions:
    """The public save keywords, checked, as the one options object that travels to the
    core (a new option is a field here and in ``_core.SaveOptions``).

    Example:
        >>> save_options(overwrite=True, threads=2).threads
        2
    """
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if threads is not None and threads <= 0:
        raise ValueError(f"threads must be positive, got {threads}")
    sizes: dict[str, int] = {}
    if part_size is not None:
        if part_size < 5 << 20:
            raise ValueError(f"part_size must be at least 5 MiB (an S3 rule), got {part_size}")
        sizes["part_size"] = part_size
    if parts_in_flight is not None:
        if parts_in_flight <= 0:
            raise ValueError(f"parts_in_flight must be positive, got {parts_in_flight}")
        sizes["parts_in_flight"] = parts_in_flight
    return _core.SaveOptions(
        overwrite=overwrite,
        durable=durable,
        threads=threads or 0,
        max_shard_bytes=max_shard_bytes,
        storage_options=storage_items(storage_options),
        **sizes,
    )


class SavePlan:
    """Everything a save needs, checked; built synchronously in the caller's thread."""

    def __init__(
        self,
        path: PathLike,
        kind: str,
        weights: Mapping[str, Any],
        optimizer_state: Any = None,
        *,
        options: _core.SaveOptions | None = None,
        step: Any = None,
        metadata: Any = None,
        extra_files: Mapping[str, Any] | None = None,
        weights_group: str = WEIGHTS,
        extra_user: Mapping[str, Any] | None = None,  # more keys of the manifest's user section
    ) -> None:
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights must be a mapping of name -> array, got {type(weights).__name__}")
        self.path: Location = as_location(path)
        self.kind = kind
        self.options = options if options is not None else save_options()
        self.threads = self.options.threads
        if weights_group == OPTIMIZER:
            raise ValueError(f"the weights cannot be stored as group {OPTIMIZER!r}")
        self.side_files = prepare_side_files(extra_files)
        with gc_paused():
            folded = _rows(weights.items(), fold_tied=True)
            self.groups: list[tuple[str, list[_Row], list[tuple[str, str]]]] = [
                (weights_group, folded.rows, [("format", "pt")])
            ]
            skeleton = None
            if kind == "state":
                skeleton, arrays = flatten(optimizer_state)
                self.groups.append((OPTIMIZER, _rows(arrays, fold_tied=False).rows, []))
        self.user_json = _user_section(metadata, step, skeleton, folded, weights_group, extra_user or {})

    @property
    def nbytes(self) -> int:
        """Tensor bytes this save writes."""
        return sum(r.nbytes for _, rows, _ in self.groups for r in rows)

    def staging_bytes(self) -> int:
        """Size of the staging buffer ``snapshot`` needs."""
        return sum(-(-r.nbytes // _ALIGN) * _ALIGN for _, rows, _ in self.groups for r in rows if r.borrowed)

    def snapshot(self, staging: np.ndarray | None = None) -> np.ndarray:
        """Copies every tensor still in the caller's memory into one staging buffer
        (parallel, GIL released), so the caller may change its tensors at once.
        Reuses ``staging`` when it is large enough; returns the buffer used."""
        need = self.staging_bytes()
        if staging is None or len(staging) < need:
            staging = np.empty(need, np.uint8)
        pairs, names, offset = [], [], 0
        for _, rows, _ in self.groups:
            for i, row in enumerate(rows):
                if row.borrowed:
                    n = row.nbytes
                    copy = staging[offset : offset + n]
                    pairs.append((row.data, copy))
                    names.append(row.name)
                    rows[i] = row._replace(data=copy, owner=staging, borrowed=False)
                    offset += -(-n // _ALIGN) * _ALIGN
        _core.copy_into(pairs, self.threads, names=names)
        return staging

    def hold_storages(self) -> None:
        """For a write that runs later without a snapshot: each borrowed torch tensor is
        replaced by a new tensor over the same storage, so a caller who then rebinds
        ``p.data`` neither frees the memory the write reads nor changes what it saves.
        (The binding checks each storage again when the write starts.)"""
        for _, rows, _ in self.groups:
            for i, row in enumerate(rows):
                if row.borrowed and is_torch_tensor(row.data):
                    rows[i] = row._replace(data=row.data.detach())

    def write(self) -> Location:
        """Writes and commits the checkpoint (GIL released inside the core)."""
        _core.save(
            os.fspath(self.path),
            self.kind,
            [(name, [r[:4] for r in rows], meta) for name, rows, meta in self.groups],
            self.user_json,
            self.options,
            side_files=self.side_files,
        )
        return self.path
