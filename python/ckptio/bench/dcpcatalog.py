"""What the DCP suite (``ckptio bench --workload dcp``) measures: its operations, the
three storage layers under ``torch.distributed.checkpoint`` (ckptio, DCP's FileSystem
and torch's HuggingFace safetensors layer), how a tensor is sharded over the ranks, and
the checksum that checks every load against the saved values."""

from __future__ import annotations

from typing import Any, ClassVar

from .library import Library

SAVE, STAGE, ASYNC_SAVE = "save", "stage", "async save"
LOAD_HOT, LOAD_COLD, LOAD_RESHARDED = "load hot", "load cold", "load resharded"
#: In the order a round runs them.
DCP_OPERATIONS = (SAVE, STAGE, ASYNC_SAVE, LOAD_HOT, LOAD_COLD, LOAD_RESHARDED)
DCP_LOADS = (LOAD_HOT, LOAD_COLD, LOAD_RESHARDED)
DCP_OPERATION_HELP = {
    SAVE: "dcp.save(state_dict, storage_writer=W) from every rank; each library fsyncs its files",
    STAGE: "the staging copy alone: W.stage(state_dict), what async_save copies before it returns",
    ASYNC_SAVE: "dcp.async_save(state_dict, storage_writer=W) (THREAD mode) until its future is done; "
    "stall: until async_save returned (and the staging future, if any, was done)",
    LOAD_HOT: "dcp.load into Shard(0) DTensors (the saved layout), files in the page cache",
    LOAD_COLD: "the same after fsync + posix_fadvise(DONTNEED) of every file",
    LOAD_RESHARDED: "dcp.load into Shard(1) DTensors (2-d tensors resharded), files in the page cache",
}


class DcpLibrary(Library):
    """A storage layer under ``torch.distributed.checkpoint``: its writer and reader.

    Example:
        >>> FileSystemDcp.name, SAVE in FileSystemDcp.operations
        ('DCP FileSystem', True)
    """

    family = "dcp"
    operations: ClassVar[tuple[str, ...]] = DCP_OPERATIONS

    def writer(self, path: str) -> Any:
        """A fresh ``StorageWriter`` saving to ``path`` (an ``AsyncStager`` too, for
        the libraries with ``stage`` and ``async save``)."""
        raise NotImplementedError

    def reader(self, path: str) -> Any:
        """A fresh ``StorageReader`` of the checkpoint at ``path``."""
        raise NotImplementedError

    def version(self) -> str:
        """torch's version (the storage layers are torch's), for the report."""
        import torch

        return torch.__version__


class CkptioDcp(DcpLibrary):
    """ckptio's storage layer, with its defaults (durable, every chunk checksummed).

    Example:
        >>> CkptioDcp.name, CkptioDcp.family
        ('ckptio', 'dcp')
    """

    name = "ckptio"
    note = "ckptio.torch.dcp.Writer(path) / Reader(path), defaults (checksums on)"

    def unavailable(self) -> str | None:
        try:
            import ckptio.torch.dcp  # noqa: F401
        except Exception as e:
            return f"ckptio.torch.dcp does not import: {type(e).__name__}: {e}"
        return None

    def version(self) -> str:
        import ckptio

        return getattr(ckptio, "__version__", "")

    def writer(self, path: str) -> Any:
        from ckptio.torch.dcp import Writer

        return Writer(path)

    def reader(self, path: str) -> Any:
        from ckptio.torch.dcp import Reader

        return Reader(path)


class FileSystemDcp(DcpLibrary):
    """DCP's own storage layer: the baseline of the ratios and targets.

    Example:
        >>> FileSystemDcp().unavailable() is None
        True
    """

    name = "DCP FileSystem"
    note = (
        "torch.distributed.checkpoint.FileSystemWriter(path, thread_count=2) / FileSystemReader(path); "
        "fsyncs (sync_files=True, its default); stage: BlockingAsyncStager, a fresh CPU copy"
    )

    def writer(self, path: str) -> Any:
        from torch.distributed.checkpoint import FileSystemWriter

        return FileSystemWriter(path, thread_count=2)

    def reader(self, path: str) -> Any:
        from torch.distributed.checkpoint import FileSystemReader

        return FileSystemReader(path)


class HuggingFaceDcp(DcpLibrary):
    """torch's safetensors storage layer, each rank writing its own shard file. Its
    staging is FileSystemWriter's (it subclasses it), so it has no stage or async rows.

    Example:
        >>> ASYNC_SAVE in HuggingFaceDcp.operations
        False
    """

    name = "DCP HuggingFace"
    operations = (SAVE, *DCP_LOADS)
    note = (
        "torch.distributed.checkpoint.HuggingFaceStorageWriter(path, save_distributed=True) / "
        "HuggingFaceStorageReader(path): a safetensors file per rank, no index; fsyncs (its default)"
    )

    def unavailable(self) -> str | None:
        try:
            import safetensors  # noqa: F401
            from torch.distributed.checkpoint import HuggingFaceStorageWriter  # noqa: F401
        except ImportError as e:
            return f"needs safetensors and torch >= 2.8: {e}"
        return None

    def writer(self, path: str) -> Any:
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        return HuggingFaceStorageWriter(path, save_distributed=True)

    def reader(self, path: str) -> Any:
        from torch.distributed.checkpoint import HuggingFaceStorageReader

        return HuggingFaceStorageReader(path)


#: Table order; the ratios divide by FileSystemDcp ("vs FileSystem").
DCP_LIBRARIES: tuple[type[DcpLibrary], ...] = (CkptioDcp, FileSystemDcp, HuggingFaceDcp)
DCP_REFERENCE = CkptioDcp.name
DCP_BASELINE = FileSystemDcp.name


def placement_for(shape: tuple[int, ...], world: int, dim: int = 0) -> Any:
    """``Shard(dim)`` when the tensor has that dim and it is at least ``world`` long, else
    ``Shard(0)`` when that fits, else ``Replicate()``.

    Example:
        >>> [str(placement_for(s, 4, 1)) for s in [(8, 8), (8,), (2,), ()]]
        ['S(1)', 'S(0)', 'R', 'R']
    """
    from torch.distributed.tensor import Replicate, Shard

    for d in dict.fromkeys((dim, 0)):
        if len(shape) > d and shape[d] >= world:
            return Shard(d)
    return Replicate()


def chunk_offset(size: int, world: int, rank: int) -> int:
    """Where ``rank``'s chunk of a dimension of ``size`` starts under ``Shard``
    (``torch.chunk``: chunks of ceil(size / world), the last ones short or empty).

    Example:
        >>> [chunk_offset(10, 4, r) for r in range(4)]
        [0, 3, 6, 9]
    """
    return min(rank * -(-size // world), size)


def fingerprint(tensor: Any, rank: int, world: int) -> int:
    """A position-dependent checksum of a DTensor's local part, summed over the ranks
    by the caller: equal sums mean the same values at the same global positions,
    whatever the sharding (replicated tensors count on rank 0 only).

    Example:
        >>> import torch
        >>> fingerprint(torch.tensor(7), 0, 1) == fingerprint(torch.tensor(7), 0, 1)
        True
    """
    import torch
    from torch.distributed.tensor import DTensor, Shard

    local, placement, shape = tensor, None, tuple(tensor.shape)
    if isinstance(tensor, DTensor):
        local, placement = tensor.to_local(), tensor.placements[0]
    if (placement is not None and not isinstance(placement, Shard) and rank != 0) or local.numel() == 0:
        return 0
    if local.dim() == 0 or local.element_size() != 4:
        return int.from_bytes(local.contiguous().numpy().tobytes()[:16].ljust(16, b"\0"), "little")
    index = torch.zeros((), dtype=torch.int64)
    stride = 1
    for d in reversed(range(local.dim())):
        start = chunk_offset(shape[d], world, rank) if placement == Shard(d) else 0
        axis = torch.arange(start, start + local.shape[d], dtype=torch.int64) * stride
        index = index + axis.view([-1 if i == d else 1 for i in range(local.dim())])
        stride *= shape[d]
    bits = local.contiguous().view(torch.int32).to(torch.int64)
    low = int(((bits & 0xFFFF) * (index % 65521 + 1)).sum())
    high = int((((bits >> 16) & 0xFFFF) * (index % 65519 + 1)).sum())
    return low + (high << 64)
