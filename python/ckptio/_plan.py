"""A save, prepared: arguments checked, the tensors planned by the binding in one call
(``_core.plan_save``: the weights walked, tied weights folded, the optimizer tree
flattened, one row per tensor kept in Rust), the manifest's user section encoded.
``write()`` hands it to the core; ``snapshot()`` first copies the caller's memory aside
(for async saves). Python's work per save does not grow with the tensor count; only
uncommon arrays (see ``_tensors.PLAN_HOOKS``) call back into Python, one call each."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from ._location import Location, as_location, storage_items
from ._side_files import prepare_side_files
from ._tensors import PLAN_HOOKS
from ._tree import MAX_DEPTH, int_json
from .checkpoint import OPTIMIZER, WEIGHTS

PathLike = str | os.PathLike[str]


def _user_section(
    metadata: Any,
    step: Any,
    skeleton_json: str | None,
    planned: tuple[list[tuple[str, str]], list[str], bool],
    weights_group: str,
    extra: Mapping[str, Any],
) -> str:
    """The manifest's user section as JSON text: the text ``json.dumps`` makes of
    ``{"metadata": ..., "step": ..., "optimizer": skeleton, ...}``, with the skeleton's
    text (already JSON, from the binding) put in place."""
    aliases, order, all_torch = planned
    if step is not None:
        if isinstance(step, bool) or not hasattr(step, "__index__"):
            raise TypeError(f"step must be an int or None, got {type(step).__name__}")
        step = int_json(int(step))
    try:
        meta_json = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise type(e)(f"metadata must be JSON-serializable (no NaN/inf): {e}") from None
    rest: dict[str, Any] = {}
    if all_torch:
        rest["framework"] = "torch"  # loads default to what was saved
    if aliases:
        rest["aliases"] = aliases
        rest["order"] = order
    if weights_group != WEIGHTS:  # e.g. adapter_model.safetensors for PEFT
        rest["weights_group"] = weights_group
    if "step" in extra or "optimizer" in extra:
        raise ValueError("extra_user may not set 'step' or 'optimizer'")
    rest.update(extra)
    tail = json.dumps(rest, allow_nan=False)[1:]  # '}' or '"key": ..., ...}'
    optimizer = "null" if skeleton_json is None else skeleton_json
    head = '{"metadata":' + meta_json + ',"step": ' + json.dumps(step) + ', "optimizer": ' + optimizer
    return head + (tail if tail == "}" else ", " + tail)


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
        self.tensors, skeleton_json, aliases, order, all_torch = _core.plan_save(
            weights,
            optimizer_state,
            weights_group=weights_group,
            weights_metadata=[("format", "pt")],
            optimizer_group=OPTIMIZER if kind == "state" else None,
            max_depth=MAX_DEPTH,
            hooks=PLAN_HOOKS,
        )
        self.user_json = _user_section(
            metadata, step, skeleton_json, (aliases, order, all_torch), weights_group, extra_user or {}
        )

    @property
    def nbytes(self) -> int:
        """Tensor bytes this save writes."""
        return self.tensors.nbytes

    def staging_bytes(self) -> int:
        """Size of the staging buffer ``snapshot`` needs."""
        return self.tensors.staging_bytes()

    def snapshot(self, staging: np.ndarray | None = None) -> np.ndarray:
        """Copies every tensor still in the caller's memory into one staging buffer
        (parallel, GIL released), so the caller may change its tensors at once.
        Reuses ``staging`` when it is large enough; returns the buffer used."""
        need = self.tensors.staging_bytes()
        if staging is None or len(staging) < need:
            staging = np.empty(need, np.uint8)
        self.tensors.snapshot(staging, self.threads)
        return staging

    def hold_storages(self) -> None:
        """For a write that runs later without a snapshot: each borrowed torch tensor is
        replaced by a new tensor over the same storage, so a caller who then rebinds
        ``p.data`` neither frees the memory the write reads nor changes what it saves.
        (The binding checks each storage again when the write starts.)"""
        self.tensors.hold_storages()

    def write(self) -> Location:
        """Writes and commits the checkpoint (GIL released inside the core)."""
        _core.save(
            os.fspath(self.path),
            self.kind,
            self.tensors,
            self.user_json,
            self.options,
            side_files=self.side_files,
        )
        return self.path
