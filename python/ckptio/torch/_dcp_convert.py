"""``ckptio.torch.dcp.convert``: a checkpoint of torch's ``FileSystemWriter`` into
ckptio's layout, read without running code from its files.

Its ``.metadata`` is a pickle and its non-tensor values are ``torch.save`` pickles.
The metadata is read by an unpickler that resolves only DCP's own metadata classes and
torch's dtype-like constants; values by torch's restricted unpickler
(``weights_only``). ``allow_pickle=True`` lifts both
restrictions, for checkpoints whose origin you trust.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import pickle
from collections import OrderedDict
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_METADATA_NAMES = frozenset(
    {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
     "MetadataIndex", "StorageMeta", "_StorageInfo", "_MEM_FORMAT_ENCODING"}
)  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and nothing else: the only globals it resolves are DCP's
    metadata dataclasses, ``torch.Size``, torch dtypes, layouts (by name) and memory
    formats, ``OrderedDict`` and POSIX paths, so no function can be called while loading."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES and name in _METADATA_NAMES:
            return getattr(importlib.import_module(module), name)
        if module == "torch":
            value = getattr(torch, name, None)
            if value is torch.Size or isinstance(value, torch.dtype | torch.layout | torch.memory_format):
                return value
        if (module, name) == ("torch.serialization", "_get_layout"):
            return (
                torch.serialization._get_layout
            )  # a name -> layout lookup, as torch's safe unpickler allows
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "pathlib" and name in ("PosixPath", "PurePosixPath"):
            return getattr(pathlib, name)  # StorageMeta.checkpoint_id
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")


class _SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` is unpickled with allow-listed classes."""

    def __init__(self, path: str, allow_pickle: bool) -> None:
        super().__init__(path)
        self.allow_pickle = allow_pickle

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.allow_pickle:
            return super().read_metadata(*args, **kwargs)
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except Exception as e:
                raise ValueError(
                    f"{path}: the DCP metadata holds objects ckptio will not unpickle ({e}); ckptio does not "
                    "run code from files. If you trust this checkpoint, pass allow_pickle=True"
                ) from None
        if not isinstance(metadata, Metadata):
            raise ValueError(f"{path}: not DCP metadata (a {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(DefaultLoadPlanner):
    """Values are unpickled with torch's restricted unpickler unless ``allow_pickle``."""

    def __init__(self, allow_pickle: bool) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.allow_pickle = allow_pickle

    def load_bytes(self, read_item: Any, value: Any) -> None:
        fqn = read_item.dest_index.fqn
        try:
            self.state_dict[fqn] = torch.load(value, weights_only=not self.allow_pickle)
        except Exception as e:
            raise ValueError(
                f"value {fqn!r}: a pickle torch's safe unpickler refuses ({e}); "
                "if you trust this checkpoint, pass allow_pickle=True"
            ) from None


class _KeepPlannerData(DefaultSavePlanner):
    """Saves a flat state dict under the source's ``planner_data`` (its key paths)."""

    def __init__(self, planner_data: Any) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._planner_data = planner_data

    def create_global_plan(self, all_plans: list[Any]) -> tuple[list[Any], Metadata]:
        plans, metadata = super().create_global_plan(all_plans)
        metadata = dataclasses.replace(metadata, planner_data=self._planner_data)
        self.metadata = metadata
        return plans, metadata


def convert(src: str, dst: str, *, overwrite: bool, allow_pickle: bool) -> Metadata:
    """See ``ckptio.torch.dcp.convert``."""
    from .dcp import Writer

    reader = _SafeFileSystemReader(src, allow_pickle)
    metadata = reader.read_metadata()
    state: dict[str, Any] = {}
    for fqn, m in metadata.state_dict_metadata.items():
        if isinstance(m, TensorStorageMetadata):
            state[fqn] = torch.empty(tuple(m.size), dtype=m.properties.dtype)
        else:
            state[fqn] = None  # replaced by the loaded value
    dcp.load(state, storage_reader=reader, planner=_SafeLoadPlanner(allow_pickle), no_dist=True)
    writer = Writer(dst, overwrite=overwrite)
    dcp.save(state, storage_writer=writer, planner=_KeepPlannerData(metadata.planner_data), no_dist=True)
    return metadata
