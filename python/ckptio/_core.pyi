"""Type stubs for the Rust extension ``ckptio._core`` (the binding layer)."""

from collections.abc import Sequence
from os import PathLike
from typing import Any, Protocol, final

from typing_extensions import Buffer

__all__ = [
    "CHECKSUM_ALGORITHM",
    "FORMAT_VERSION",
    "Checkpoint",
    "MappedFile",
    "cleanup",
    "copy_into",
    "open",
    "save",
]

class _TorchTensor(Protocol):
    def untyped_storage(self) -> Any: ...
    def data_ptr(self) -> int: ...

FORMAT_VERSION: int
CHECKSUM_ALGORITHM: str

# The bytes of a tensor to read: an object exporting a C-contiguous buffer, or a
# contiguous CPU torch.Tensor (the binding checks that its bytes lie in its CPU storage
# and holds the storage for the call). Never a raw address.
_Source = Buffer | _TorchTensor
# (name, safetensors dtype, shape, source of the tensor's bytes)
_Tensor = tuple[str, str, Sequence[int], _Source]
# (group name, tensors, safetensors __metadata__ entries)
_Group = tuple[str, Sequence[_Tensor], Sequence[tuple[str, str]]]

def save(
    path: str | PathLike[str],
    kind: str,
    groups: Sequence[_Group],
    user_json: str,
    *,
    overwrite: bool = False,
    durable: bool = True,
    threads: int = 0,
    max_shard_bytes: int | None = None,
) -> None:
    """Writes a checkpoint directory atomically; releases the GIL while writing."""

def open(path: str | PathLike[str]) -> Checkpoint:
    """Reads and checks the manifest and every header, maps the files privately."""

def copy_into(
    pairs: Sequence[tuple[_Source, Buffer]], threads: int = 0, *, names: Sequence[str] | None = None
) -> None:
    """Copies each source into its (writable, same-size) destination buffer, in
    parallel, with the GIL released. Destinations may not overlap each other or a
    source. ``names`` (one per pair) name the tensors in errors."""

def cleanup(directory: str | PathLike[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Removes leftovers of dead saves in ``directory``; returns their paths, and the
    entries named like leftovers that it left alone, each with the reason."""

@final
class Checkpoint:
    @property
    def kind(self) -> str: ...
    @property
    def checkpoint_id(self) -> str: ...
    @property
    def user_json(self) -> str: ...
    @property
    def file_names(self) -> list[str]: ...
    def tensors(self) -> list[tuple[str, str, str, list[int], int, int, int]]:
        """(group, name, dtype, shape, file index, begin, end), in save order."""
    def file(self, index: int) -> MappedFile: ...
    def verify(self, threads: int = 0) -> None: ...
    def read_into(self, jobs: Sequence[tuple[int, Buffer]], verify: bool = True, threads: int = 0) -> None:
        """Reads tensors (by index in ``tensors()``) into writable, non-overlapping
        buffers with parallel positional reads, checking each tensor's checksum when
        ``verify``."""
    def prefetch(self) -> None: ...

@final
class MappedFile:
    """A tensor file mapped copy-on-write; exports a writable byte buffer (the
    buffer protocol, so ``numpy.frombuffer(mapped_file, numpy.uint8)`` views it)."""

    @property
    def name(self) -> str: ...
    def __len__(self) -> int: ...
