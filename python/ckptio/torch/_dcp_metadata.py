"""DCP's ``Metadata`` to the manifest's ``user.dcp`` section and back, without pickle.

The writer encodes what DCP's planner computed (global shapes, dtypes, chunk offsets,
``planner_data``) together with where each chunk is stored; the reader rebuilds a
``Metadata`` that DCP's own load planner reshards from. Non-tensor values are kept as
tree skeletons (``_tree``: exact floats, ints of any size, str, tuples, dicts); only
values that have no such form stay the bytes DCP pickled.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, NamedTuple

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from .._dcp_index import SECTION, DcpIndex
from .._dtypes import st_to_torch, torch_to_st
from .._tree import flatten, unflatten

VERSION = "1"


class Stored(NamedTuple):
    """Where a write item went (a ``WriteResult.storage_data``): the manifest tensor
    (``group``, ``name``) holding its bytes, or, for a value kept as JSON, its tree
    ``value``. The first result of a part carries the part's record (``part``).

    Example:
        >>> Stored("rank_00000", "w@0", None, None).name
        'w@0'
    """

    group: str | None
    name: str | None
    value: Any
    part: str | None


def encode_tree(value: Any) -> Any | None:
    """A value's tree skeleton, or None when it has none (it holds tensors, arrays or
    objects of other types), in which case DCP's pickled bytes are stored instead.

    Example:
        >>> encode_tree({"lr": 0.5, "betas": (0.9, 0.99)})["dict"][0]
        ['lr', {'float': '0.5', 'bits': '3fe0000000000000'}]
        >>> encode_tree(torch.zeros(1)) is None
        True
    """
    try:
        skeleton, arrays = flatten(value, "value")
    except (TypeError, ValueError):
        return None
    return None if arrays else skeleton


def _no_tensors(tag: str, name: str) -> Any:
    raise ValueError(f"a DCP value skeleton may not reference tensors ({tag} {name!r})")


def decode_tree(skeleton: Any) -> Any:
    """The value ``encode_tree`` encoded.

    Example:
        >>> decode_tree(encode_tree([1, "a", (2.5, None)]))
        [1, 'a', (2.5, None)]
    """
    return unflatten(skeleton, _no_tensors)


def _tensor_entry(
    fqn: str, md: TensorStorageMetadata, where: dict[tuple[str, tuple[int, ...]], Stored]
) -> Any:
    dtype = torch_to_st(md.properties.dtype)
    if dtype is None:
        raise TypeError(f"tensor {fqn!r}: torch dtype {md.properties.dtype} is not supported")
    chunks = []
    for c in md.chunks:
        offsets = tuple(int(o) for o in c.offsets)
        stored = where.get((fqn, offsets))
        if stored is None:
            raise ValueError(f"tensor {fqn!r}: no rank wrote the chunk at {list(offsets)}")
        chunks.append(
            {
                "offsets": list(offsets),
                "sizes": [int(s) for s in c.sizes],
                "group": stored.group,
                "name": stored.name,
            }
        )
    return {
        "fqn": fqn,
        "dtype": dtype,
        "shape": [int(s) for s in md.size],
        "requires_grad": bool(md.properties.requires_grad),
        "pin_memory": bool(md.properties.pin_memory),
        "chunks": chunks,
    }


def encode(metadata: Metadata, results: list[list[Any]]) -> dict[str, Any]:
    """The ``user`` section of the manifest: ``metadata`` plus where every rank's
    write results say each item went.

    Example:
        >>> encode(Metadata({}), [])["dcp"]["tensors"]
        []
    """
    where: dict[tuple[str, tuple[int, ...]], Stored] = {}
    for rank_results in results:
        for r in rank_results:
            offset = tuple(int(o) for o in r.index.offset) if r.index.offset is not None else ()
            where[(r.index.fqn, offset)] = r.storage_data
    tensors, objects = [], []
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            tensors.append(_tensor_entry(fqn, md, where))
            continue
        stored = where.get((fqn, ()))
        if stored is None:
            raise ValueError(f"value {fqn!r}: no rank wrote it")
        if stored.name is None:
            objects.append({"fqn": fqn, "value": stored.value})
        else:
            objects.append({"fqn": fqn, "group": stored.group, "name": stored.name})
    planner_data = None
    if metadata.planner_data is not None:
        planner_data = encode_tree(metadata.planner_data)
        if planner_data is None:
            raise TypeError(
                f"the save planner's planner_data ({type(metadata.planner_data).__name__}) has no JSON form; "
                "ckptio stores DCP metadata without pickle (use DefaultSavePlanner or plain values)"
            )
    section = {"version": VERSION, "planner_data": planner_data, "tensors": tensors, "objects": objects}
    return {SECTION: section}


def decode(index: DcpIndex) -> Metadata:
    """DCP's ``Metadata`` for a parsed index; ``storage_data`` maps each
    ``MetadataIndex`` to its ``Stored`` place.

    Example:
        >>> from ckptio._dcp_index import DcpIndex
        >>> decode(DcpIndex({}, {}, None, "1")).state_dict_metadata
        {}
    """
    state: dict[str, Any] = {}
    storage: dict[MetadataIndex, Stored] = {}
    for fqn, t in index.tensors.items():
        props = TensorProperties(
            dtype=st_to_torch(t.dtype), requires_grad=t.requires_grad, pin_memory=t.pin_memory
        )
        chunks = [
            ChunkStorageMetadata(offsets=torch.Size(s.offsets), sizes=torch.Size(s.sizes)) for s in t.shards
        ]
        state[fqn] = TensorStorageMetadata(properties=props, size=torch.Size(t.shape), chunks=chunks)
        for s in t.shards:
            storage[MetadataIndex(fqn, s.offsets)] = Stored(s.group, s.name, None, None)
    for fqn, o in index.objects.items():
        state[fqn] = BytesStorageMetadata()
        storage[MetadataIndex(fqn)] = Stored(o.group, o.name, o.value, None)
    planner_data = None if index.planner_data is None else decode_tree(index.planner_data)
    fields = {f.name for f in dataclasses.fields(Metadata)}
    extra = {"version": index.version} if "version" in fields else {}
    return Metadata(state_dict_metadata=state, planner_data=planner_data, storage_data=storage, **extra)


def value_bytes(value: Any) -> io.BytesIO:
    """A JSON-kept value as the bytes DCP's load planner expects (``torch.save``'s):
    made here from the decoded tree, never taken from the file.

    Example:
        >>> torch.load(value_bytes({"int": "3"}), weights_only=True)
        3
    """
    buf = io.BytesIO()
    torch.save(decode_tree(value), buf)
    buf.seek(0)
    return buf


def safe_pickled(data: bytes, fqn: str, allow_pickle: bool) -> io.BytesIO:
    """Bytes DCP pickled at save, made safe to hand to its load planner (which calls
    ``torch.load(weights_only=False)``): unless ``allow_pickle``, they are first
    unpickled with torch's restricted unpickler (``weights_only=True``: allow-listed
    types only, no code runs) and pickled again from the result.

    Example:
        >>> buf = io.BytesIO(); torch.save([1, 2], buf)
        >>> torch.load(safe_pickled(buf.getvalue(), "x", False), weights_only=True)
        [1, 2]
    """
    if allow_pickle:
        return io.BytesIO(data)
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:
        raise ValueError(
            f"value {fqn!r} is a pickled object that torch's safe unpickler refuses ({e}); ckptio does not "
            "run code on load. If you trust this checkpoint, pass Reader(path, allow_pickle=True)"
        ) from None
    buf = io.BytesIO()
    torch.save(value, buf)
    buf.seek(0)
    return buf
