"""``torch.distributed.checkpoint`` through ckptio: checksums, an atomic commit and
safetensors files under DCP's own planners, so resharding keeps working.

    >>> import torch.distributed.checkpoint as dcp            # doctest: +SKIP
    >>> dcp.save(state_dict, storage_writer=Writer(path))      # doctest: +SKIP
    >>> dcp.load(state_dict, storage_reader=Reader(path))      # doctest: +SKIP

Each rank writes its shards into one safetensors file (``rank_00003.safetensors``) in a
staging directory that the coordinator created and holds locked; each shard is hashed
as it is written from the rank's memory, and the file is fsynced. Only when every rank
succeeded does the coordinator write ONE manifest (DCP's metadata without pickle, the
chunk index, every checksum) and rename the directory into place. See docs/FORMAT.md
("DCP checkpoints") and docs/GUARANTEES.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .. import _core
from .._dcp_index import BYTES_SUFFIX, chunk_name
from .._location import as_location, is_url
from .._plan import save_options
from .._tensors import as_saveable
from ..checkpoint import Checkpoint
from . import _dcp_metadata as md
from . import _dcp_read
from ._dcp_staging import stage_state_dict

__all__ = ["Reader", "Writer", "convert"]


def _place(path: str | os.PathLike[str]) -> str:
    """A checkpoint path or ``s3://`` URL as text (a URL without a trailing slash)."""
    return str(as_location(path))


@dataclasses.dataclass(frozen=True)
class _RankTarget:
    """What the coordinator tells each rank (``SavePlan.storage_data``): where to
    write (the staging directory, or the checkpoint's URL), the id and the file."""

    place: str
    checkpoint_id: str
    group: str


def _default_resolve(planner: SavePlanner) -> bool:
    """Does the planner turn values into bytes DCP's default way (``torch.save`` of the
    object ``lookup_object`` returns)? Only then is the object itself stored as JSON."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    cls = type(planner)
    return (
        isinstance(planner, DefaultSavePlanner)
        and cls.resolve_data is DefaultSavePlanner.resolve_data
        and cls.transform_object is DefaultSavePlanner.transform_object
    )


class Writer(StorageWriter, AsyncStager):
    """DCP's ``StorageWriter`` for a ckptio checkpoint directory at ``path``.

    ``path`` is a local path or an ``s3://`` URL (``storage_options`` as for every
    save: endpoint, region, credentials). ``overwrite=True`` replaces a checkpoint under
    that name atomically (the old one stays whole until the new one is in place);
    ``durable=False`` skips the fsyncs; ``threads`` bounds each rank's writer threads.
    Picklable, for DCP's PROCESS async mode. As an ``AsyncStager``, it stages
    ``dcp.async_save``'s state dict into CPU memory, pinned when the tensors are on a
    GPU, so the caller's stall is that copy.

    Example:
        >>> import tempfile, os, torch, torch.distributed.checkpoint as dcp
        >>> path = os.path.join(tempfile.mkdtemp(), "step-1")
        >>> _ = dcp.save({"w": torch.arange(4.0), "epoch": 3}, storage_writer=Writer(path), no_dist=True)
        >>> import ckptio; ckptio.open(path).kind
        'dcp'
    """

    _synchronize_after_execute = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        durable: bool = True,
        threads: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.path = _place(path)
        self.overwrite = overwrite
        self.durable = durable
        self.threads = threads
        self.storage_options = dict(storage_options or {})
        self._options = save_options(
            overwrite=overwrite, durable=durable, threads=threads, storage_options=self.storage_options
        )
        self._assembly: _core.Assembly | None = None

    def __getstate__(self) -> dict[str, Any]:
        keys = ("path", "overwrite", "durable", "threads", "storage_options")
        return {k: getattr(self, k) for k in keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.__init__(state.pop("path"), **state)  # type: ignore[misc]

    # -- AsyncStager -----------------------------------------------------------------
    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``state_dict`` in CPU memory that training may not touch (pinned
        for GPU tensors); ``dcp.async_save`` calls it before writing in the background.

        Example:
            >>> sd = {"w": torch.ones(2)}
            >>> staged = Writer("/tmp/x").stage(sd)
            >>> staged["w"].data_ptr() != sd["w"].data_ptr()
            True
        """
        return stage_state_dict(state_dict)

    def synchronize_staging(self) -> None:
        """Nothing to wait for: ``stage`` returns when the copy is done."""

    def close(self) -> None:
        """Drops an uncommitted save's staging directory (a failed save's leftovers)."""
        self._abort()

    # -- StorageWriter ---------------------------------------------------------------
    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Starts a new save, to ``checkpoint_id`` if given (a path)."""
        self._abort()
        if checkpoint_id is not None:
            self.path = _place(checkpoint_id)

    def _abort(self) -> None:
        if self._assembly is not None:
            self._assembly.abort()
            self._assembly = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Nothing to set up: the coordinator stages the directory in
        ``prepare_global_plan``."""

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """The plan as it is."""
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Stages the checkpoint directory (refusing an existing name unless
        ``overwrite``) and tells each rank where to write and under which id."""
        self._abort()
        self._assembly = _core.Assembly(self.path, self._options)
        asm = self._assembly
        return [
            dataclasses.replace(
                plan, storage_data=_RankTarget(str(asm.place), asm.checkpoint_id, f"rank_{i:05d}")
            )
            for i, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Writes this rank's items into its file; non-tensor values that have a JSON
        form go in the results (and so the manifest), without pickle."""
        target: _RankTarget = plan.storage_data
        as_objects = _default_resolve(planner)
        tensors: list[tuple[str, str, tuple[int, ...], Any]] = []
        results: list[WriteResult] = []
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO:
                node = md.encode_tree(planner.lookup_object(item.index)) if as_objects else None  # type: ignore[attr-defined]
                if node is not None:
                    results.append(WriteResult(item.index, 0, md.Stored(None, None, node, None)))
                    continue
                data = planner.resolve_data(item).getbuffer()  # type: ignore[union-attr]
                name = fqn + BYTES_SUFFIX
                tensors.append((name, "U8", (len(data),), data))
                results.append(WriteResult(item.index, len(data), md.Stored(target.group, name, None, None)))
                continue
            name = chunk_name(fqn, item.index.offset or ())
            s = as_saveable(name, planner.resolve_data(item))
            tensors.append((name, s.dtype, s.shape, s.data))
            results.append(WriteResult(item.index, s.nbytes, md.Stored(target.group, name, None, None)))
        if tensors:
            group = (target.group, tensors, [("format", "pt")])
            part = _core.write_part(target.place, target.checkpoint_id, group, self._options)
            first = next(i for i, r in enumerate(results) if r.storage_data.name is not None)
            results[first] = dataclasses.replace(
                results[first], storage_data=results[first].storage_data._replace(part=part)
            )
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Every rank succeeded: writes the one manifest and commits atomically."""
        if self._assembly is None:
            raise RuntimeError("finish() without prepare_global_plan(): this writer staged no checkpoint")
        user = md.encode(metadata, results)
        parts = [r.storage_data.part for rr in results for r in rr if r.storage_data.part is not None]
        asm, self._assembly = self._assembly, None
        try:
            asm.commit(parts, json.dumps(user, allow_nan=False), durable=self.durable)
        finally:
            if asm.open:
                asm.abort()

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """A path, or an ``s3://`` URL."""
        text = os.fspath(checkpoint_id)
        return not is_url(text) or text.startswith("s3://")


class Reader(StorageReader):
    """DCP's ``StorageReader`` for a checkpoint written by ``Writer``: ``read_metadata``
    rebuilds DCP's ``Metadata`` from the manifest, so DCP's load planner reshards to
    any world size; ``read_data`` reads each chunk a rank needs once, checking its
    checksum. Works with ``no_dist=True`` in one process. Picklable.

    ``path`` is a local path or an ``s3://`` URL (``storage_options`` as for
    ``ckptio.open``). Values DCP could only pickle are unpickled with torch's restricted
    unpickler unless ``allow_pickle=True`` (for checkpoints you trust).

    Example:
        >>> import tempfile, os, torch, torch.distributed.checkpoint as dcp
        >>> path = os.path.join(tempfile.mkdtemp(), "step-1")
        >>> _ = dcp.save({"w": torch.arange(4.0)}, storage_writer=Writer(path), no_dist=True)
        >>> sd = {"w": torch.zeros(4)}
        >>> dcp.load(sd, storage_reader=Reader(path), no_dist=True); sd["w"]
        tensor([0., 1., 2., 3.])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allow_pickle: bool = False,
        threads: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.path = _place(path)
        self.allow_pickle = allow_pickle
        self.threads = threads
        self.storage_options = dict(storage_options or {})
        self._ckpt: Checkpoint | None = None
        self._storage: Mapping[MetadataIndex, md.Stored] = {}

    def __getstate__(self) -> dict[str, Any]:
        keys = ("path", "allow_pickle", "threads", "storage_options")
        return {k: getattr(self, k) for k in keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.__init__(state.pop("path"), **state)  # type: ignore[misc]

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Starts a new load, from ``checkpoint_id`` if given (a path)."""
        if checkpoint_id is not None:
            self.path = _place(checkpoint_id)
        self._ckpt = None
        self._storage = {}

    def _open(self) -> Checkpoint:
        if self._ckpt is None:
            ckpt = Checkpoint(self.path, storage_options=self.storage_options)
            if ckpt.kind != "dcp":
                ckpt.close()
                from ..errors import CheckpointKindError

                raise CheckpointKindError(
                    f"{self.path} is a {ckpt.kind!r} checkpoint, not a DCP one; "
                    "load it with ckptio.load_state"
                )
            self._ckpt = ckpt
        return self._ckpt

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """DCP's metadata, rebuilt from the manifest (headers checked, no pickle)."""
        metadata = md.decode(self._open()._dcp_index())
        self._storage = metadata.storage_data
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        """Keeps the chunk index of ``metadata``."""
        self._storage = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """The plan as it is."""
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """The plans as they are."""
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Reads what ``plan`` asks into the planner's tensors, every chunk checked."""
        ckpt = self._open()
        requests = []
        for item in plan.items:
            stored = self._storage[item.storage_index]
            if item.type == LoadItemType.BYTE_IO:
                if stored.name is None:
                    planner.load_bytes(item, md.value_bytes(stored.value))
                else:
                    data = _dcp_read.read_bytes(ckpt, stored.group, stored.name, self.threads or 0)
                    planner.load_bytes(item, md.safe_pickled(data, item.storage_index.fqn, self.allow_pickle))
                continue
            dest = planner.resolve_tensor(item).detach()

            def done(item: Any = item, dest: torch.Tensor = dest) -> None:
                planner.commit_tensor(item, dest)

            requests.append(
                _dcp_read.Request(
                    stored.group, stored.name, tuple(item.storage_offsets), tuple(item.lengths), dest, done
                )
            )
        _dcp_read.read(ckpt, requests, self.threads or 0)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """A local directory with a ckptio manifest, or an ``s3://`` URL."""
        text = os.fspath(checkpoint_id)
        return text.startswith("s3://") if is_url(text) else Path(text, "ckptio.json").is_file()


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> Metadata:
    """Converts a checkpoint written by torch's own ``FileSystemWriter`` into ckptio's
    layout: loaded in this process through DCP's ``FileSystemReader`` (its tensors at
    their global shapes), then saved with ``Writer`` at ``dst``. Returns the source's
    metadata. Its ``.distcp`` files are pickles: values that are not plain tensors
    are refused unless ``allow_pickle=True`` (for checkpoints you trust).

    Example:
        >>> import tempfile, os, torch, torch.distributed.checkpoint as dcp
        >>> d = tempfile.mkdtemp()
        >>> _ = dcp.save({"w": torch.ones(3)}, storage_writer=dcp.FileSystemWriter(f"{d}/fs"), no_dist=True)
        >>> _ = convert(f"{d}/fs", f"{d}/ck")
        >>> import ckptio; ckptio.open(f"{d}/ck").tensor("w")
        tensor([1., 1., 1.])
    """
    from ._dcp_convert import convert as run

    return run(os.fspath(src), _place(dst), overwrite=overwrite, allow_pickle=allow_pickle)
