"""The index of a ``torch.distributed.checkpoint`` save (manifest kind ``dcp``), without
torch: global tensors, their shards, non-tensor values. Read from the manifest's
``user.dcp`` section and checked against the tensor records before anything is used.

The section (written by ``ckptio.torch.dcp.Writer``, see docs/FORMAT.md):

    {"version": "1", "planner_data": <tree skeleton> | null,
     "tensors": [{"fqn": "model.w", "dtype": "F32", "shape": [8, 4],
                  "requires_grad": false, "pin_memory": false,
                  "chunks": [{"offsets": [0, 0], "sizes": [4, 4],
                              "group": "rank_00000", "name": "model.w@0,0"}, ...]}, ...],
     "objects": [{"fqn": "epoch", "value": <tree skeleton>},
                 {"fqn": "blob", "group": "rank_00001", "name": "blob@bytes"}, ...]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from .errors import FormatError

SECTION = "dcp"
#: Manifest tensors that hold pickled bytes DCP handed over are named like this.
BYTES_SUFFIX = "@bytes"


class Shard(NamedTuple):
    """One stored chunk of a global tensor: where it sits in the tensor, and the
    manifest tensor (group, name, file) that holds its bytes.

    Example:
        >>> Shard((0, 0), (2, 4), "rank_00000", "w@0,0", "rank_00000.safetensors").sizes
        (2, 4)
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    group: str
    name: str
    file: str


class GlobalTensor(NamedTuple):
    """A tensor of the saved state dict, as DCP's metadata describes it.

    Example:
        >>> GlobalTensor("w", "F32", (4,), False, False, ()).shape
        (4,)
    """

    fqn: str
    dtype: str  # safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    requires_grad: bool
    pin_memory: bool
    shards: tuple[Shard, ...]


class StoredObject(NamedTuple):
    """A non-tensor value: its tree skeleton (no pickle), or the manifest tensor
    holding the bytes DCP pickled (``group``/``name``).

    Example:
        >>> StoredObject("epoch", {"int": "3"}, None, None).value
        {'int': '3'}
    """

    fqn: str
    value: Any
    group: str | None
    name: str | None


class DcpIndex(NamedTuple):
    """What ``parse`` returns.

    Example:
        >>> DcpIndex({}, {}, None, "1").version
        '1'
    """

    tensors: dict[str, GlobalTensor]
    objects: dict[str, StoredObject]
    planner_data: Any
    version: str | None


def chunk_name(fqn: str, offsets: tuple[int, ...] | list[int]) -> str:
    """The manifest name of a chunk: unique per (fqn, offsets), since the offsets
    follow the last ``@`` and are digits.

    Example:
        >>> chunk_name("layers.0.w", (4, 0))
        'layers.0.w@4,0'
    """
    return f"{fqn}@{','.join(str(int(o)) for o in offsets)}"


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError(f"{what} must be a list of non-negative ints")
    return tuple(value)


def _str(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value


def _shard(
    raw: Any, fqn: str, shape: tuple[int, ...], dtype: str, records: Mapping[tuple[str, str], Any]
) -> Shard:
    if not isinstance(raw, dict):
        raise ValueError("a chunk must be an object")
    offsets = _ints(raw.get("offsets"), "offsets")
    sizes = _ints(raw.get("sizes"), "sizes")
    if len(offsets) != len(shape) or len(sizes) != len(shape):
        raise ValueError(f"chunk at {list(offsets)} has another rank than the tensor's {list(shape)}")
    if any(o + s > d for o, s, d in zip(offsets, sizes, shape, strict=True)):
        raise ValueError(f"chunk at {list(offsets)} of size {list(sizes)} runs past the shape {list(shape)}")
    group, name = _str(raw, "group"), _str(raw, "name")
    info = records.get((group, name))
    if info is None:
        raise ValueError(f"chunk {name!r} of group {group!r} is not in the tensor index")
    if info.dtype != dtype or tuple(info.shape) != sizes:
        raise ValueError(
            f"chunk {name!r} is stored as {info.dtype} {list(info.shape)}, "
            f"the metadata says {dtype} {list(sizes)}"
        )
    return Shard(offsets, sizes, group, name, info.file)


def _tensor(raw: Any, records: Mapping[tuple[str, str], Any]) -> GlobalTensor:
    if not isinstance(raw, dict):
        raise ValueError("a tensor entry must be an object")
    fqn, dtype = _str(raw, "fqn"), _str(raw, "dtype")
    try:
        shape = _ints(raw.get("shape"), "shape")
        chunks = raw.get("chunks")
        if not isinstance(chunks, list):
            raise ValueError("chunks must be a list")
        shards = tuple(_shard(c, fqn, shape, dtype, records) for c in chunks)
        covered = sum(math.prod(s.sizes) for s in shards)
        if covered != math.prod(shape):
            raise ValueError(
                f"its chunks hold {covered} elements, the shape {list(shape)} has {math.prod(shape)}"
            )
    except ValueError as e:
        raise ValueError(f"tensor {fqn!r}: {e}") from None
    return GlobalTensor(
        fqn, dtype, shape, raw.get("requires_grad") is True, raw.get("pin_memory") is True, shards
    )


def _object(raw: Any, records: Mapping[tuple[str, str], Any]) -> StoredObject:
    if not isinstance(raw, dict):
        raise ValueError("an object entry must be an object")
    fqn = _str(raw, "fqn")
    if "value" in raw:
        return StoredObject(fqn, raw["value"], None, None)
    group, name = _str(raw, "group"), _str(raw, "name")
    info = records.get((group, name))
    if info is None or info.dtype != "U8" or len(info.shape) != 1:
        raise ValueError(f"object {fqn!r}: its bytes {name!r} are not a U8 vector in the tensor index")
    return StoredObject(fqn, None, group, name)


def parse(user: Mapping[str, Any], records: Mapping[tuple[str, str], Any], path: Any) -> DcpIndex:
    """The DCP index of a checkpoint, from its user section; ``records`` maps (group,
    name) to each stored tensor's info (dtype, shape, file). Overlapping chunks are
    left to DCP's planner, which reads what it asks for; every other inconsistency is
    a FormatError naming the path.

    Example:
        >>> parse({"dcp": {"tensors": [], "objects": []}}, {}, "ck").tensors
        {}
    """
    section = user.get(SECTION)
    try:
        if not isinstance(section, dict):
            raise ValueError("no dcp section")
        raw_tensors, raw_objects = section.get("tensors"), section.get("objects")
        if not isinstance(raw_tensors, list) or not isinstance(raw_objects, list):
            raise ValueError("tensors and objects must be lists")
        tensors: dict[str, GlobalTensor] = {}
        objects: dict[str, StoredObject] = {}
        for raw in raw_tensors:
            t = _tensor(raw, records)
            if t.fqn in tensors:
                raise ValueError(f"tensor {t.fqn!r} listed twice")
            tensors[t.fqn] = t
        for raw in raw_objects:
            o = _object(raw, records)
            if o.fqn in objects or o.fqn in tensors:
                raise ValueError(f"{o.fqn!r} listed twice")
            objects[o.fqn] = o
        version = section.get("version")
        if version is not None and not isinstance(version, str):
            raise ValueError("version must be a string")
    except ValueError as e:
        raise FormatError(f"{path}: invalid DCP metadata in the manifest: {e}", file=path) from None
    return DcpIndex(tensors, objects, section.get("planner_data"), version)
