"""Reads the chunks of a DCP checkpoint into torch tensors: each chunk wanted is read
once, whole, with its checksum checked on the way (parallel positional reads in the
core, GIL released); chunks nobody asked for are not touched.

A request that is the whole chunk and lands in a contiguous CPU destination of the same
dtype is read straight into it. Any other (part of a chunk, a strided or device
destination, another dtype) is read into a scratch tensor of the chunk's size, one
chunk at a time, and copied from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from .._dtypes import st_to_torch
from ..checkpoint import Checkpoint


class Request(NamedTuple):
    """Copy ``lengths`` elements at ``offsets`` of a stored chunk (``group``,
    ``name``) into ``dest``, a tensor of exactly that shape (often a view); ``done``
    runs after the copy.

    Example:
        >>> Request("rank_00000", "w@0", (0,), (2,), torch.empty(2), None).lengths
        (2,)
    """

    group: str
    name: str
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    dest: torch.Tensor
    done: Callable[[], None] | None


def _bytes_view(t: torch.Tensor) -> Any:
    """A writable numpy byte view of a contiguous CPU tensor (no copy)."""
    return t.detach().reshape(-1).view(torch.uint8).numpy()


def _direct(req: Request, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    d = req.dest
    return (
        req.lengths == shape
        and not any(req.offsets)
        and d.device.type == "cpu"
        and d.dtype == dtype
        and tuple(d.shape) == shape
        and d.is_contiguous()
        and d.numel() > 0
    )


def read(ckpt: Checkpoint, requests: Iterable[Request], threads: int = 0) -> None:
    """Fulfils every request. CorruptCheckpointError (naming file and chunk) if a
    chunk's bytes do not match its checksum.
    """
    by_chunk: dict[tuple[str, str], list[Request]] = {}
    for r in requests:
        by_chunk.setdefault((r.group, r.name), []).append(r)
    direct_jobs, direct_done, staged = [], [], []
    for key, reqs in by_chunk.items():
        info, _, _, _, index = ckpt._record(*key)
        dtype = st_to_torch(info.dtype)
        if len(reqs) == 1 and _direct(reqs[0], tuple(info.shape), dtype):
            direct_jobs.append((index, _bytes_view(reqs[0].dest)))
            direct_done.append(reqs[0])
        else:
            staged.append((index, info.nbytes, tuple(info.shape), dtype, reqs))
    if direct_jobs:
        ckpt._core.read_into(direct_jobs, True, threads)
    for r in direct_done:
        if r.done is not None:
            r.done()
    # One scratch buffer for every staged chunk, sized for the largest: fresh memory
    # per chunk would pay the first-touch page faults again for each.
    buffer = torch.empty(max((s[1] for s in staged), default=0), dtype=torch.uint8)
    for index, nbytes, shape, dtype, reqs in staged:
        scratch = buffer[:nbytes].view(dtype).view(shape)
        if nbytes:
            ckpt._core.read_into([(index, buffer[:nbytes].numpy())], True, threads)
        for r in reqs:
            src = scratch
            for dim, (o, n) in enumerate(zip(r.offsets, r.lengths, strict=True)):
                src = src.narrow(dim, o, n)
            r.dest.copy_(src)
            if r.done is not None:
                r.done()


def read_bytes(ckpt: Checkpoint, group: str, name: str, threads: int = 0) -> bytes:
    """A stored byte vector (a value DCP pickled), its checksum checked."""
    info, _, _, _, index = ckpt._record(group, name)
    out = torch.empty(info.nbytes, dtype=torch.uint8)
    if info.nbytes:
        ckpt._core.read_into([(index, out.numpy())], True, threads)
    return out.numpy().tobytes()


def assemble(ckpt: Checkpoint, fqn: str, device: Any = None) -> torch.Tensor:
    """One global tensor, assembled from its shards in this process."""
    t = ckpt._dcp_tensor(fqn)
    out = torch.empty(t.shape, dtype=st_to_torch(t.dtype))
    requests = []
    for s in t.shards:
        dest = out
        for dim, (o, n) in enumerate(zip(s.offsets, s.sizes, strict=True)):
            dest = dest.narrow(dim, o, n)
        requests.append(Request(s.group, s.name, (0,) * len(s.sizes), s.sizes, dest, None))
    read(ckpt, requests)
    return out if device is None else out.to(device)
