"""Type stubs for the Rust extension ``ckptio._core`` (the binding layer)."""

from collections.abc import Callable, Sequence
from os import PathLike
from typing import final

from typing_extensions import Buffer

__all__ = [
    "CHECKSUM_ALGORITHM",
    "FORMAT_VERSION",
    "Checkpoint",
    "MappedFile",
    "cleanup",
    "cleanup_checkpoints",
    "copy_into",
    "delete_checkpoint",
    "describe_checkpoint",
    "list_checkpoints",
    "open",
    "save",
    "update_user_section",
    "verify_with_progress",
]

FORMAT_VERSION: int
CHECKSUM_ALGORITHM: str

# (name, safetensors dtype, shape, C-contiguous buffer of the tensor's bytes)
_Tensor = tuple[str, str, Sequence[int], Buffer]
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

def copy_into(pairs: Sequence[tuple[Buffer, Buffer]], threads: int = 0) -> None:
    """Copies each source buffer into its (writable, same-size) destination, in
    parallel, with the GIL released."""

def cleanup(directory: str | PathLike[str]) -> list[str]:
    """Removes leftovers of dead saves in ``directory``; returns their paths."""

# (kind, checkpoint_id, user_json, size_bytes: listed files + manifest, manifest mtime)
_Summary = tuple[str, str, str, int, float]

def describe_checkpoint(path: str | PathLike[str]) -> _Summary:
    """Reads and checks a checkpoint's manifest as ``open`` does; maps no tensor file."""

def list_checkpoints(
    directory: str | PathLike[str],
) -> tuple[list[tuple[str, _Summary]], list[tuple[str, str]]]:
    """The checkpoints among the visible subdirectories of ``directory`` (by name), and
    the (name, message) of those whose manifest is damaged. Directories without a
    manifest are left out."""

def update_user_section(
    path: str | PathLike[str],
    key: str,
    value_json: str,
    *,
    expect_id: str | None = None,
    durable: bool = True,
) -> _Summary:
    """Sets the top-level ``key`` of the manifest's user section, atomically; with
    ``expect_id``, only if the checkpoint is still that save (else
    CheckpointNotFoundError)."""

def delete_checkpoint(path: str | PathLike[str], *, durable: bool = True) -> None:
    """Deletes a checkpoint atomically (rename to a hidden name, then remove)."""

def cleanup_checkpoints(directory: str | PathLike[str]) -> list[str]:
    """``cleanup``, plus the manifest edits dead processes left in each checkpoint."""

def verify_with_progress(
    path: str | PathLike[str], progress: Callable[[int, int], object], threads: int = 0
) -> None:
    """``Checkpoint.verify``, calling ``progress(done_bytes, total_bytes)`` as it goes."""

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
        """Reads tensors (by index in ``tensors()``) into writable buffers with parallel
        positional reads, checking each tensor's checksum when ``verify``."""
    def prefetch(self) -> None: ...

@final
class MappedFile:
    """A tensor file mapped copy-on-write; exports a writable byte buffer (the
    buffer protocol, so ``numpy.frombuffer(mapped_file, numpy.uint8)`` views it)."""

    @property
    def name(self) -> str: ...
    def __len__(self) -> int: ...
