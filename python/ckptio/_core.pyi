"""Type stubs for the Rust extension ``ckptio._core`` (the binding layer)."""

from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, final

from typing_extensions import Buffer

__all__ = [
    "CHECKSUM_ALGORITHM",
    "FORMAT_VERSION",
    "Assembly",
    "Checkpoint",
    "MappedFile",
    "SaveOptions",
    "SaveTensors",
    "cleanup",
    "copy",
    "copy_into",
    "delete_checkpoint",
    "describe_checkpoint",
    "flatten_tree",
    "list_checkpoints",
    "open",
    "open_safetensors",
    "plan_save",
    "save",
    "update_user_section",
    "verify_with_progress",
    "write_part",
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

@final
class SaveOptions:
    """The options of one save, as one typed object from the Python API to the core."""

    def __new__(
        cls,
        *,
        overwrite: bool = False,
        durable: bool = True,
        threads: int = 0,
        max_shard_bytes: int | None = None,
        part_size: int = ...,
        parts_in_flight: int = ...,
        storage_options: Sequence[tuple[str, str]] | None = None,
    ) -> SaveOptions: ...
    @property
    def overwrite(self) -> bool: ...
    @property
    def durable(self) -> bool: ...
    @property
    def threads(self) -> int: ...
    @property
    def max_shard_bytes(self) -> int | None: ...
    @property
    def part_size(self) -> int: ...
    @property
    def parts_in_flight(self) -> int: ...
    @property
    def storage_options(self) -> list[tuple[str, str]]: ...

class _PlanHooks(Protocol):
    """The Python side of ``plan_save`` for the uncommon arrays (``_tensors.PLAN_HOOKS``)."""

    def as_saveable(self, name: Any, value: Any, /) -> tuple[str, tuple[int, ...], Any, int, Any, bool]: ...
    def address(self, value: Any, /) -> int | None: ...
    def storage_key(self, value: Any, /) -> Any: ...
    def torch_dtype(self, dtype: Any, /) -> str | None: ...

@final
class SaveTensors:
    """The tensors of one planned save, group by group (rows kept in Rust). Each row
    keeps the caller's object; its memory is checked and held when ``save`` or
    ``snapshot`` starts."""

    @property
    def nbytes(self) -> int:
        """Tensor bytes the save writes."""
    def staging_bytes(self) -> int:
        """Size of the buffer ``snapshot`` needs (rows still in the caller's memory,
        each rounded up to 64 bytes)."""
    def snapshot(self, staging: Buffer, threads: int = 0) -> None:
        """Copies every row still in the caller's memory into the writable buffer
        ``staging`` (parallel, GIL released); those rows then read the copy."""
    def hold_storages(self) -> None:
        """Replaces each borrowed torch tensor by ``tensor.detach()`` (same storage), for
        a write that runs later without a snapshot."""
    def rows_info(self) -> list[tuple[str, str, str, list[int], int, bool]]:
        """(group, name, dtype, shape, nbytes, borrowed) of every row, in write order."""
    def __len__(self) -> int: ...

def plan_save(
    weights: Any,
    optimizer_state: Any,
    *,
    weights_group: str,
    weights_metadata: Sequence[tuple[str, str]],
    optimizer_group: str | None = None,
    max_depth: int,
    hooks: _PlanHooks,
) -> tuple[SaveTensors, str | None, list[tuple[str, str]], list[str], bool]:
    """Plans a save's tensors with the GIL held once: walks the ``weights`` mapping
    (tied weights folded) and, with ``optimizer_group``, flattens ``optimizer_state``
    as ``_tree.flatten`` does. Returns (tensors, the optimizer skeleton as the JSON
    text ``json.dumps`` makes of ``_tree.flatten``'s skeleton or None, aliases
    [(alias, stored name)], the weights' names in order (only when there are aliases),
    whether every stored weight is a torch tensor). Uncommon arrays go through
    ``hooks``."""

def flatten_tree(
    tree: Any, prefix: str, *, max_depth: int, hooks: _PlanHooks
) -> tuple[str, list[tuple[str, Any]]]:
    """``_tree.flatten`` in Rust: (the skeleton as JSON text, [(tensor name, leaf), ...])."""

def save(
    location: str | PathLike[str],
    kind: str,
    groups: SaveTensors | Sequence[_Group],
    user_json: str,
    options: SaveOptions,
    side_files: Sequence[tuple[str, bytes]] = ...,
) -> None:
    """Writes a checkpoint atomically at a path or an ``s3://`` URL; releases the GIL
    while writing. ``groups`` come from ``plan_save`` or are listed. ``side_files``
    are (plain name, bytes) pairs saved whole, checksummed."""

@final
class Assembly:
    """A checkpoint being written in parts by several processes (the storage layer of
    ``torch.distributed.checkpoint``): a staging directory beside a local target, locked
    by this process, or the checkpoint id's data prefix under an ``s3://`` URL. Dropped
    or aborted before ``commit``, it is removed with every part."""

    def __new__(cls, location: str | PathLike[str], options: SaveOptions) -> Assembly: ...
    @property
    def place(self) -> str | Path:
        """Where ``write_part`` writes: the staging directory, or the checkpoint's URL."""
    @property
    def checkpoint_id(self) -> str:
        """The new checkpoint's id, stamped in every part's headers."""
    @property
    def open(self) -> bool:
        """True until ``commit`` or ``abort``."""
    def commit(self, parts: Sequence[str], user_json: str, *, durable: bool = True) -> None:
        """Writes one manifest (kind ``dcp``) over ``parts`` (``write_part``'s records),
        checks the result as a reader would, and moves it into place atomically."""
    def abort(self) -> None:
        """Removes the staging directory and every part in it."""

def write_part(place: str | PathLike[str], checkpoint_id: str, group: _Group, options: SaveOptions) -> str:
    """Writes one part (``GROUP.safetensors``, hashed and written from the caller's
    memory) to an assembly's ``place``; returns its record (JSON) for
    ``Assembly.commit``. Releases the GIL while writing."""

def open(
    location: str | PathLike[str], storage_options: Sequence[tuple[str, str]] | None = None
) -> Checkpoint:
    """Reads and checks the manifest and every header; maps local files privately."""

def open_safetensors(path: str | PathLike[str], names: Sequence[str] | None = None) -> Checkpoint:
    """Maps the safetensors files of a directory without a ckptio manifest (``names``,
    or the shards of its index, or every ``*.safetensors``), every header validated;
    the result has no checksums (``has_checksums`` is False, ``verify`` refuses)."""

def copy_into(
    pairs: Sequence[tuple[_Source, Buffer]], threads: int = 0, *, names: Sequence[str] | None = None
) -> None:
    """Copies each source into its (writable, same-size) destination buffer, in
    parallel, with the GIL released. Destinations may not overlap each other or a
    source. ``names`` (one per pair) name the tensors in errors."""

def copy(
    src: str | PathLike[str],
    dst: str | PathLike[str],
    options: SaveOptions,
    src_storage_options: Sequence[tuple[str, str]] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> None:
    """Copies the checkpoint at ``src`` to ``dst`` (paths or ``s3://`` URLs), streaming
    every file, checking every checksum, committing ``dst`` atomically."""

def cleanup(
    location: str | PathLike[str],
    storage_options: Sequence[tuple[str, str]] | None = None,
    older_than: float = 3600.0,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Removes leftovers of dead saves at ``location`` (a directory, or an ``s3://``
    prefix, where data older than ``older_than`` seconds that no manifest points to
    counts as dead); returns their paths, and the entries named like leftovers that it
    left alone, each with the reason."""

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

def verify_with_progress(
    path: str | PathLike[str], progress: Callable[[int, int], object], threads: int = 0
) -> list[str]:
    """``Checkpoint.verify``, calling ``progress(done_bytes, total_bytes)`` as it goes;
    returns the directory entries the manifest does not cover."""

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
    @property
    def mapped(self) -> bool: ...
    @property
    def has_checksums(self) -> bool: ...
    @property
    def side_file_names(self) -> list[str]: ...
    def read_side_file(self, name: str) -> bytes:
        """A side file's bytes, checked against its size and checksum."""
    def tensors(self) -> list[tuple[str, str, str, list[int], int, int, int]]:
        """(group, name, dtype, shape, file index, begin, end), in save order."""
    def lookup(self, group: str, name: str) -> tuple[int, str, tuple[int, ...], int, int, int] | None:
        """(index in ``tensors()``, dtype, shape, file index, begin, end) of one tensor,
        or None."""
    def rows(self, group: str) -> list[tuple[str, str, tuple[int, ...], int, int, int]]:
        """(name, dtype, shape, file index, begin, end) of every tensor of ``group``, in
        save order."""
    def names(self, group: str) -> list[str]:
        """The names of the tensors of ``group``, in save order."""
    def groups(self) -> list[str]:
        """The groups that hold tensors, in order of first appearance."""
    @property
    def tensor_count(self) -> int: ...
    def user_field(self, key: str) -> str | None:
        """The JSON text of a top-level key of the user section, or None; ValueError if
        the section is not a JSON object."""
    def file(self, index: int) -> MappedFile: ...
    def verify(self, threads: int = 0) -> list[str]:
        """Checks every byte; returns the directory entries the manifest does not list."""
    def read_into(self, jobs: Sequence[tuple[int, Buffer]], verify: bool = True, threads: int = 0) -> None:
        """Reads tensors (by index in ``tensors()``) into writable, non-overlapping
        buffers with parallel positional reads, checking each tensor's checksum when
        ``verify``."""
    def prefetch(self, skip_groups: Sequence[str] = ...) -> None:
        """Starts reading the tensor files (those holding a tensor of a group not in
        ``skip_groups``) into the page cache on a background thread; returns at once.
        Nothing for an object store."""

@final
class MappedFile:
    """A tensor file mapped copy-on-write; exports a writable byte buffer (the
    buffer protocol, so ``numpy.frombuffer(mapped_file, numpy.uint8)`` views it)."""

    @property
    def name(self) -> str: ...
    def __len__(self) -> int: ...
