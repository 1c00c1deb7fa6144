"""``ckptio.open``: a lazy, zero-copy view of a checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import _core
from ._dcp_index import SECTION, DcpIndex, GlobalTensor, Shard
from ._dcp_index import parse as parse_dcp
from ._dtypes import ITEMSIZE, st_to_numpy, st_to_torch
from ._gc import gc_paused
from ._location import Location, as_location, storage_items
from ._tree import array_leaves, int_from_json, unflatten
from .errors import CheckpointKindError, CheckpointNotFoundError, FormatError, UnverifiedCheckpointWarning

WEIGHTS = "model"
OPTIMIZER = "optimizer"
#: One mapped tensor, as ``_core.Checkpoint.rows`` gives it: (name, dtype, shape, file
#: index, begin, end).
_Row = tuple[str, str, tuple[int, ...], int, int, int]


class TensorInfo(NamedTuple):
    """What the index says of one tensor.

    Example:
        >>> TensorInfo("w", "model", "F32", (2, 3), 24, "model.safetensors").nbytes
        24
    """

    name: str
    group: str  # "model" (weights) or "optimizer"
    dtype: str  # safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    nbytes: int
    file: str


class Checkpoint(Mapping[str, Any]):
    """An open checkpoint: the manifest is read and every header validated; no tensor
    byte is read until you index it. Indexing returns a zero-copy numpy view of the
    mapped file (copy-on-write: writable, and writes never reach the file).

    Mapping access covers the weights; ``optimizer_state()`` rebuilds the optimizer tree.

    ``allow_foreign=True`` (what ``ckptio.open`` and ``load_state`` pass) also opens
    plain safetensors files that have no ckptio manifest (a Hugging Face
    ``save_pretrained`` directory, or one ``.safetensors`` file): read-only, every
    header validated, but without checksums (``checksummed`` is False, ``verify``
    refuses), with one ``UnverifiedCheckpointWarning``.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> _ = ckptio.save_weights_for_sampler(os.path.join(d, "s"), {"w": np.ones(3, np.float32)})
        >>> with ckptio.open(os.path.join(d, "s")) as ckpt:
        ...     print(ckpt.kind, list(ckpt), ckpt.info("w").shape, ckpt["w"].sum())
        sampler ['w'] (3,) 3.0
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allow_foreign: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        place = as_location(path)
        if isinstance(place, str):  # an object store: manifest and headers fetched
            core = _core.open(place, storage_items(storage_options))
        else:
            core = _open_core(place, allow_foreign)
        self._attach(place, core)

    @classmethod
    def _for_load(
        cls,
        path: str | os.PathLike[str],
        *,
        allow_foreign: bool,
        weights_only: bool,
        storage_options: Mapping[str, Any] | None,
    ) -> Checkpoint:
        """Opens a checkpoint to load it whole: the warm-up of ``prefetch`` starts right
        after the core open, so its reads overlap building the index (docs/ENGINE.md)."""
        place = as_location(path)
        if isinstance(place, str):  # an object store: nothing is mapped, nothing to warm
            return cls(place, storage_options=storage_options)
        core = _open_core(place, allow_foreign)
        core.prefetch([OPTIMIZER] if weights_only else [])
        return cls._of(place, core)

    @classmethod
    def _of(cls, path: Location, core: _core.Checkpoint) -> Checkpoint:
        """A Checkpoint over a core view opened by the caller (import opens plain
        safetensors files itself, and says so itself)."""
        self = cls.__new__(cls)
        self._attach(path, core)
        return self

    def _attach(self, path: Location, core: _core.Checkpoint) -> None:
        # The index stays in the core (``lookup``): nothing here is per tensor except
        # the weight names, so opening costs the same whatever the optimizer holds.
        self.path = path
        self._core = core
        self._user: dict[str, Any] = {}  # top-level user fields parsed so far
        self._files = core.file_names
        self._stored_as = self._weights_group()
        if self._stored_as != WEIGHTS and WEIGHTS in core.groups():
            raise FormatError(f"{self.path}: two groups of weights in the manifest", file=self.path)
        self._dcp: DcpIndex | None = None
        if core.kind == "dcp":  # torch.distributed.checkpoint: global tensors from shards
            records = {(i.group, i.name): i for i in self.tensors}
            self._dcp = parse_dcp({SECTION: self._user_field(SECTION)}, records, self.path)
            self._aliases, self._weight_names = {}, list(self._dcp.tensors)
        else:
            self._aliases, self._weight_names = self._read_aliases()
        self._bytes: dict[int, np.ndarray] = {}

    def _user_field(self, key: str) -> Any:
        """A top-level value of the manifest's user section (None if absent), parsed on
        first use: the optimizer skeleton, most of the section, only when loaded."""
        try:
            return self._user[key]
        except KeyError:
            pass
        try:
            text = self._core.user_field(key)
            value = self._user[key] = None if text is None else json.loads(text)
        except ValueError as e:
            raise FormatError(f"{self.path}: invalid user section in manifest: {e}", file=self.path) from None
        return value

    def _weights_group(self) -> str:
        """The group (file stem) holding the weights: ``model`` unless the save chose
        another (``adapter_model`` for a PEFT adapter)."""
        group = self._user_field("weights_group")
        group = WEIGHTS if group is None else group
        if not isinstance(group, str) or group == OPTIMIZER:
            raise FormatError(f"{self.path}: invalid weights_group in manifest", file=self.path)
        return group

    def _stored_group(self, group: str) -> str | None:
        """The group a tensor of ``group`` is stored under (None: no such group)."""
        if group == WEIGHTS:
            return self._stored_as
        return None if group == self._stored_as else group

    def _record(self, group: str, name: str) -> tuple[TensorInfo, int, int, int, int]:
        """(info, file index, begin, end, index in ``tensors()``) of one stored tensor;
        KeyError if there is none."""
        stored = self._stored_group(group)
        hit = None if stored is None or not isinstance(name, str) else self._core.lookup(stored, name)
        if hit is None:
            raise KeyError(f"no tensor {name!r} in {group!r} of {self.path}")
        index, dtype, shape, fi, begin, end = hit
        return TensorInfo(name, group, dtype, shape, end - begin, self._files[fi]), fi, begin, end, index

    def _has(self, group: str, name: object) -> bool:
        stored = self._stored_group(group)
        return stored is not None and isinstance(name, str) and self._core.lookup(stored, name) is not None

    def _read_aliases(self) -> tuple[dict[str, str], list[str]]:
        """Tied weights: names saved as another entry's storage, and the full order."""
        stored = self._core.names(self._stored_as)
        raw_aliases = self._user_field("aliases") or []
        raw_order = self._user_field("order")
        if not raw_aliases and not raw_order:
            return {}, stored
        try:
            aliases = {str(a): str(t) for a, t in raw_aliases}
            order = [str(n) for n in raw_order or stored]
        except (TypeError, ValueError):
            raise FormatError(f"{self.path}: invalid aliases in manifest", file=self.path) from None
        if any(not self._has(WEIGHTS, t) or self._has(WEIGHTS, a) for a, t in aliases.items()) or sorted(
            order
        ) != sorted([*stored, *aliases]):
            raise FormatError(f"{self.path}: aliases/order disagree with the tensor index", file=self.path)
        return aliases, order

    # -- description -------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"sampler"`` (weights only), ``"state"`` (weights + optimizer state) or
        ``"dcp"`` (a ``torch.distributed.checkpoint`` save: global tensors in shards)."""
        return str(self._core.kind)

    @property
    def checkpoint_id(self) -> str:
        """The random id of the save that wrote this checkpoint (a later save to the
        same path has another).

        Example:
            >>> len(_example().checkpoint_id)
            16
        """
        return str(self._core.checkpoint_id)

    @property
    def metadata(self) -> Any:
        """The user metadata saved with the checkpoint (any JSON), or None."""
        return self._user_field("metadata")

    @property
    def step(self) -> int | None:
        """The training step given to ``save_state``, or None."""
        step = self._user_field("step")
        try:
            return None if step is None else int_from_json(step)
        except ValueError:
            raise FormatError(f"{self.path}: invalid step {step!r:.80} in manifest", file=self.path) from None

    @property
    def framework(self) -> str:
        """``"torch"`` if the weights were saved as torch tensors, else ``"numpy"``:
        what loads return unless told otherwise. (Safetensors files read without a
        manifest: ``"torch"`` if their metadata says ``format: pt`` and torch is
        installed.)"""
        if self._user_field("framework") == "torch":
            return "torch"
        if not self.checksummed and isinstance(self.metadata, dict) and self.metadata.get("format") == "pt":
            return "torch" if importlib.util.find_spec("torch") is not None else "numpy"
        return "numpy"

    @property
    def checksummed(self) -> bool:
        """False for safetensors files read without a ckptio manifest: nothing covers
        their bytes, and ``verify`` refuses them."""
        return bool(self._core.has_checksums)

    @property
    def files(self) -> list[str]:
        """The tensor files of the checkpoint (safetensors), in manifest order.

        Example:
            >>> _example().files
            ['model.safetensors', 'optimizer.safetensors']
        """
        return list(self._core.file_names)

    @property
    def side_files(self) -> list[str]:
        """The side files saved with the checkpoint (``config.json`` ...): checksummed,
        read with ``read_side_file``.

        Example:
            >>> import numpy as np, ckptio, tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "ck")
            >>> _ = ckptio.save_weights_for_sampler(path, {"w": np.ones(1)}, extra_files={"notes.txt": "hi"})
            >>> ckptio.open(path).side_files
            ['notes.txt']
        """
        return list(self._core.side_file_names)

    def read_side_file(self, name: str) -> bytes:
        """The bytes of a side file, checked against its size and checksum
        (CorruptCheckpointError if they differ).

        Example:
            >>> import numpy as np, ckptio, tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "ck")
            >>> _ = ckptio.save_weights_for_sampler(path, {"w": np.ones(1)}, extra_files={"notes.txt": "hi"})
            >>> ckptio.open(path).read_side_file("notes.txt")
            b'hi'
        """
        if name not in self._core.side_file_names:
            raise KeyError(f"no side file {name!r} in {self.path} (side files: {self.side_files})")
        return bytes(self._core.read_side_file(name))

    @property
    def names(self) -> list[str]:
        """Weight names, in the order they were saved (for a DCP checkpoint: the
        global tensors' names)."""
        return list(self._weight_names)

    @property
    def tensors(self) -> list[TensorInfo]:
        """Every stored tensor (weights, then optimizer), in save order."""
        files, weights = self._files, self._stored_as
        return [
            TensorInfo(name, WEIGHTS if stored == weights else stored, dtype, shape, end - begin, files[fi])
            for stored, name, dtype, shape, fi, begin, end in self._core.tensors()
        ]

    def shards(self, name: str) -> list[Shard]:
        """The stored chunks of a global tensor of a DCP checkpoint: offsets and sizes
        in the tensor, and the file holding each.

        Example:
            >>> import tempfile, os, torch, torch.distributed.checkpoint as dcp, ckptio.torch.dcp
            >>> path = os.path.join(tempfile.mkdtemp(), "ck")
            >>> writer = ckptio.torch.dcp.Writer(path)
            >>> _ = dcp.save({"w": torch.ones(2, 3)}, storage_writer=writer, no_dist=True)
            >>> [(s.offsets, s.sizes, s.file) for s in ckptio.open(path).shards("w")]
            [((0, 0), (2, 3), 'rank_00000.safetensors')]
        """
        return list(self._dcp_tensor(name).shards)

    def _dcp_index(self) -> DcpIndex:
        if self._dcp is None:
            raise CheckpointKindError(f"{self.path} is a {self.kind!r} checkpoint, not a DCP one")
        return self._dcp

    def _dcp_tensor(self, name: str) -> GlobalTensor:
        try:
            return self._dcp_index().tensors[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {self.path}") from None

    def info(self, name: str, group: str = WEIGHTS) -> TensorInfo:
        """dtype, shape, nbytes and file of one tensor (a tied weight reports the
        entry it shares storage with, under its own name).

        Example:
            >>> info = _example().info("m", "optimizer")
            >>> info.dtype, info.shape, info.nbytes, info.file
            ('F64', (2,), 16, 'optimizer.safetensors')
        """
        if self._dcp is not None and group == WEIGHTS:  # a global tensor: its first shard's file
            t = self._dcp_tensor(name)
            nbytes = int(np.prod(t.shape)) * ITEMSIZE[t.dtype]
            return TensorInfo(name, WEIGHTS, t.dtype, t.shape, nbytes, t.shards[0].file if t.shards else "")
        if group == WEIGHTS and name in self._aliases:
            return self.info(self._aliases[name])._replace(name=name)
        return self._record(group, name)[0]

    # -- data --------------------------------------------------------------------
    def _file_bytes(self, fi: int) -> np.ndarray:
        arr = self._bytes.get(fi)
        if arr is None:
            arr = self._bytes[fi] = np.frombuffer(self._core.file(fi), dtype=np.uint8)
        return arr

    def tensor(
        self, name: str, group: str = WEIGHTS, *, framework: str | None = None, device: Any = None
    ) -> Any:
        """One tensor as a zero-copy view: a numpy array or a torch tensor, as the
        weights were saved unless ``framework`` says; ``device`` moves it (a copy).

        Example:
            >>> _example().tensor("w")
            array([1., 1., 1.], dtype=float32)
        """
        if self._dcp is not None and group == WEIGHTS:
            from .torch._dcp_read import assemble  # DCP checkpoints come from torch

            t = assemble(self, name, device)
            return t.numpy() if framework == "numpy" else t
        if group == WEIGHTS:
            name = self._aliases.get(name, name)
        info, fi, begin, end, _ = self._record(group, name)
        framework = framework or self.framework
        if not self._core.mapped:  # an object store: one checksummed ranged read
            return self._read_copies(group, [(name, framework)], device)[name]
        return self._view((name, info.dtype, info.shape, fi, begin, end), framework, device)

    def _rows(self, group: str) -> dict[str, _Row]:
        """name -> row (as ``_core.Checkpoint.rows`` gives it) of every tensor stored in
        ``group``: one core call for a whole-group load instead of a lookup per tensor."""
        stored = self._stored_group(group)
        return {} if stored is None else {row[0]: row for row in self._core.rows(stored)}

    def _view(self, row: _Row, framework: str, device: Any) -> Any:
        """The zero-copy view of one mapped tensor's row, as a numpy array or a torch
        tensor."""
        name, dtype, shape, fi, begin, end = row
        if framework == "numpy":
            if device is not None:
                raise ValueError("device= needs framework='torch'")
            # One constructor call: a third of the cost of slice, view and reshape.
            return np.ndarray(shape, st_to_numpy(dtype), self._file_bytes(fi), begin)
        if framework == "torch":
            info = TensorInfo(name, "", dtype, shape, end - begin, "")
            return _torch_view(self._file_bytes(fi)[begin:end], info, device)
        raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")

    def __getitem__(self, name: str) -> Any:
        return self.tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._weight_names)

    def __len__(self) -> int:
        return len(self._weight_names)

    def __contains__(self, name: object) -> bool:
        if self._dcp is not None:
            return name in self._dcp.tensors
        return self._has(WEIGHTS, name) or name in self._aliases

    def weights(
        self, *, framework: str | None = None, device: Any = None, copy: bool = False
    ) -> dict[str, Any]:
        """All weights, in save order, as numpy arrays or torch tensors (as saved, unless
        ``framework`` says). Zero-copy views by default; ``copy=True`` reads
        them into fresh memory with parallel positional reads, checking every
        tensor's checksum on the way. Tied weights come back as one object under each
        of their names.

        Example:
            >>> _example().weights(copy=True)
            {'w': array([1., 1., 1.], dtype=float32)}
        """
        if self._dcp is not None:
            return {n: self.tensor(n, framework=framework, device=device) for n in self._weight_names}
        stored = [n for n in self._weight_names if n not in self._aliases]
        framework = framework or self.framework
        copy = copy or not self._core.mapped
        with gc_paused():
            if copy:
                out = self._read_copies(WEIGHTS, [(n, framework) for n in stored], device)
            else:
                rows = self._rows(WEIGHTS)
                out = {n: self._view(rows[n], framework, device) for n in stored}
        for alias, target in self._aliases.items():
            out[alias] = out[target]
        return {n: out[n] for n in self._weight_names}

    def _read_copies(self, group: str, wanted: list[tuple[str, str]], device: Any) -> dict[str, Any]:
        """Reads (name, framework) tensors of ``group`` into fresh memory: parallel
        positional reads, each tensor's checksum checked."""
        out: dict[str, Any] = {}
        jobs = []
        for name, framework in wanted:
            info, _, _, _, index = self._record(group, name)
            if framework == "numpy":
                if device is not None and group == WEIGHTS:
                    raise ValueError("device= needs framework='torch'")
                arr = np.empty(info.shape, st_to_numpy(info.dtype))
                dest = arr.reshape(-1).view(np.uint8)
            elif framework == "torch":
                import torch

                arr = torch.empty(info.shape, dtype=st_to_torch(info.dtype))
                dest = arr.reshape(-1).view(torch.uint8).numpy()
            else:
                raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
            out[name] = arr
            jobs.append((index, dest))
        self._core.read_into(jobs, self.checksummed, 0)
        if device is not None:
            out = {n: t.to(device) if not isinstance(t, np.ndarray) else t for n, t in out.items()}
        return out

    def optimizer_state(self, *, framework: str | None = None, device: Any = None, copy: bool = False) -> Any:
        """The optimizer tree exactly as saved. Array leaves come back as the type they
        were saved as (numpy, numpy scalar, torch), unless ``framework`` forces one.
        ``copy=True`` reads them into fresh memory, checking their checksums.

        Example:
            >>> _example().optimizer_state()
            {'m': array([0., 0.]), 'step': 7}
        """
        if self.kind == "dcp":
            raise CheckpointKindError(
                f"{self.path} is a DCP checkpoint: load its optimizer state with dcp.load(..., "
                "storage_reader=ckptio.torch.dcp.Reader(path)), or read tensors with .tensor(name)"
            )
        if self.kind != "state":
            raise CheckpointKindError(
                f"{self.path} is a {self.kind!r} checkpoint (weights only); it has no optimizer state. "
                "Save it with save_state() to resume training."
            )

        skeleton = self._user_field("optimizer")

        def framework_of(tag: str) -> str:
            return framework or ("torch" if tag == "torch" else "numpy")

        copies: dict[str, Any] = {}
        rows: dict[str, _Row] = {}
        if copy or not self._core.mapped:  # one parallel, checksummed read of every optimizer tensor
            wanted = {name: framework_of(tag) for tag, name in array_leaves(skeleton)}
            copies = self._read_copies(OPTIMIZER, list(wanted.items()), device)
        else:
            rows = self._rows(OPTIMIZER)

        def leaf(tag: str, name: str) -> Any:
            fw = framework_of(tag)
            if name in copies:
                value = copies[name]
            elif name in rows:
                value = self._view(rows[name], fw, device if fw == "torch" else None)
            else:
                raise KeyError(f"no tensor {name!r} in {OPTIMIZER!r} of {self.path}")
            return value[()] if tag == "scalar" and fw == "numpy" else value

        try:
            with gc_paused():
                return unflatten(skeleton, leaf)
        except (KeyError, ValueError, TypeError) as e:
            if isinstance(e, FormatError | ImportError):
                raise
            raise FormatError(f"{self.path}: invalid optimizer skeleton: {e}", file=self.path) from None

    def prefetch(self, *, weights_only: bool = False) -> None:
        """Starts reading the tensor files into the page cache on a background thread
        (the files of the weights only, with ``weights_only``) and returns at once, so
        that a cold load's first touches find their bytes there instead of each page
        fault waiting for the disk. Parts already cached are skipped; nothing happens
        for an object store (nothing is mapped). ``load_state`` calls it.

        Example:
            >>> _example().prefetch()
        """
        self._core.prefetch([OPTIMIZER] if weights_only else [])

    def verify(self, *, threads: int | None = None) -> list[str]:
        """Hashes every tensor, header and side file; raises CorruptCheckpointError
        naming the first bad tensor and listing all of them. Returns the names of the
        files in the directory that the manifest does not list (not covered by any
        checksum, and not an error).

        Example:
            >>> _example().verify()  # intact, nothing uncovered
            []
        """
        return list(self._core.verify(threads or 0))

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Drops this object's references; arrays already handed out stay valid.

        Example:
            >>> ckpt = _example(); w = ckpt["w"]; ckpt.close(); float(w.sum())
            3.0
        """
        self._bytes.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ckptio.Checkpoint {self.kind} {str(self.path)!r}: {self._core.tensor_count} tensors>"


def _open_core(path: Path, allow_foreign: bool) -> _core.Checkpoint:
    """The core's view of a ckptio checkpoint or, with ``allow_foreign``, of plain
    safetensors files (one warning: they carry no checksums)."""
    try:
        return _core.open(path)
    except (CheckpointNotFoundError, FormatError):
        if not allow_foreign or not _is_plain_safetensors(path):
            raise
    # A directory: its shard set or files. One file: that file alone.
    core = _core.open_safetensors(path) if path.is_dir() else _core.open_safetensors(path.parent, [path.name])
    warnings.warn(
        f"{path} is not a ckptio checkpoint (no ckptio.json): reading its safetensors files "
        "read-only and without checksums; `ckptio import` makes a verified copy",
        UnverifiedCheckpointWarning,
        stacklevel=4,
    )
    return core


def _is_plain_safetensors(path: Path) -> bool:
    """A ``.safetensors`` file, or a directory with one (or a shard index) and no
    manifest."""
    if path.is_file():
        return path.name.endswith(".safetensors")
    if not path.is_dir() or os.path.lexists(path / "ckptio.json"):
        return False
    with os.scandir(path) as entries:
        return any(
            e.name.endswith((".safetensors", ".safetensors.index.json")) and not e.name.startswith(".")
            for e in entries
        )


def _torch_view(raw: np.ndarray, info: TensorInfo, device: Any) -> Any:
    import torch

    dtype = st_to_torch(info.dtype)
    u8 = torch.from_numpy(raw)
    if (raw.ctypes.data % ITEMSIZE[info.dtype]) == 0:
        t = u8.view(dtype).reshape(info.shape)
    else:  # a foreign file with unaligned data: torch cannot view it, so copy
        t = u8.clone().view(dtype).reshape(info.shape)
    return t if device is None else t.to(device)


def _example() -> Checkpoint:
    """A small ``state`` checkpoint in a temporary directory, for the examples above."""
    import tempfile

    from .api import save_state

    path = os.path.join(tempfile.mkdtemp(prefix="ckptio-example-"), "step-7")
    save_state(path, {"w": np.ones(3, np.float32)}, {"m": np.zeros(2), "step": 7}, step=7)
    return Checkpoint(path)
