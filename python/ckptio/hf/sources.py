"""What ``ckptio.import_checkpoint`` reads, all of it hostile input: Hugging Face model
directories (safetensors, one file or shards; ``pytorch_model*.bin``), PEFT adapter
directories, single ``.safetensors`` / ``.pt`` / ``.bin`` files, and Tinker checkpoint
archives (a directory or a tar).

- safetensors files go through the core's validation, as ckptio's own files do;
- pickles are read by ``torch.load(weights_only=True)`` only, which builds tensors and
  plain containers and refuses anything else; the result must be a flat name -> tensor
  mapping;
- symlinks are refused (they could point anywhere), side files are kept only when
  their name is plain and their type is a config or tokenizer file.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _core
from .._side_files import MAX_SIDE_FILE_BYTES, check_side_file_name
from ..checkpoint import Checkpoint
from ..errors import FormatError
from ._common import read_json_file

# Side files worth keeping: configs, tokenizers, chat templates, model cards.
SIDE_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".md")
WEIGHT_INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
TINKER_MARKER = "checkpoint_complete"


@dataclass
class Source:
    """Weights read from an import source, and what to keep with them."""

    format: str  # "hf-safetensors", "hf-bin", "peft", "tinker", "safetensors", "torch"
    weights: dict[str, Any]
    side_files: dict[str, bytes] = field(default_factory=dict)
    weights_group: str = "model"  # "adapter_model" keeps a PEFT adapter loadable by PEFT
    keep_alive: Any = None  # the open checkpoint that the weights view


def read_source(src: Path) -> Source:
    """Reads any supported source; archives are handled by the caller (extracted first)."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        raise FormatError(f"{src}: is a symbolic link; pass the file or directory it points to", file=src)
    if stat.S_ISDIR(st.st_mode):
        return read_directory(src)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{src}: not a regular file or directory", file=src)
    if src.name.endswith(".safetensors"):
        return _safetensors(src.parent, [src.name], "safetensors")
    if src.name.endswith(TORCH_SUFFIXES):
        return Source("torch", load_torch_file(src))
    raise ValueError(
        f"{src}: not an importable file (expected .safetensors, .bin, .pt, .pth, or a .tar archive)"
    )


def read_directory(d: Path) -> Source:
    if os.path.lexists(d / "ckptio.json"):
        raise ValueError(
            f"{d} is already a ckptio checkpoint; save it again or copy it instead of importing it"
        )
    names = sorted(e.name for e in os.scandir(d) if not e.name.startswith("."))
    tinker = TINKER_MARKER in names
    if "adapter_model.safetensors" in names:
        source = _safetensors(d, ["adapter_model.safetensors"], "tinker" if tinker else "peft")
    elif "adapter_model.bin" in names:
        source = Source("tinker" if tinker else "peft", load_torch_file(d / "adapter_model.bin"))
    elif any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        source = _safetensors(d, None, "hf-safetensors")
    elif "pytorch_model.bin.index.json" in names:
        source = Source("hf-bin", _torch_shards(d, "pytorch_model.bin.index.json"))
    elif "pytorch_model.bin" in names:  # beside e.g. the Trainer's training_args.bin
        source = Source("hf-bin", load_torch_file(d / "pytorch_model.bin"))
    else:
        torch_files = [n for n in names if n.endswith(TORCH_SUFFIXES)]
        if len(torch_files) != 1:
            found = ", ".join(torch_files) or "none"
            raise ValueError(
                f"{d}: no weights to import: expected *.safetensors (or an index), adapter_model.*, "
                f"pytorch_model.bin (or its index), or one .bin/.pt/.pth file (found: {found})"
            )
        source = Source("hf-bin", load_torch_file(d / torch_files[0]))
    if source.format in ("peft", "tinker"):
        source.weights_group = "adapter_model"
    source.side_files = _side_files(d, names)
    return source


def _safetensors(d: Path, names: list[str] | None, fmt: str) -> Source:
    # Opened here rather than by ckptio.open: an import reads files without checksums
    # on purpose (and checksums what it writes), so it does not warn.
    core = _core.open_safetensors(d, names) if names is not None else _core.open_safetensors(d)
    ckpt = Checkpoint._of(d, core)
    return Source(fmt, ckpt.weights(), keep_alive=ckpt)  # numpy or torch, as saved


def _side_files(d: Path, names: list[str]) -> dict[str, bytes]:
    """Config and tokenizer files to keep: regular, plain names, not weight indexes."""
    out: dict[str, bytes] = {}
    skipped: list[str] = []
    for name in names:
        path = d / name
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) or name == TINKER_MARKER:
            continue
        wanted = name.endswith(SIDE_SUFFIXES) and not name.endswith(WEIGHT_INDEX_SUFFIXES)
        if not wanted:
            if not name.endswith((".safetensors", *TORCH_SUFFIXES, *WEIGHT_INDEX_SUFFIXES)):
                skipped.append(name)
            continue
        try:
            check_side_file_name(name)
        except ValueError:
            skipped.append(name)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIDE_FILE_BYTES:
            skipped.append(name)  # symlinks could point anywhere; huge files are no config
            continue
        out[name] = _read_regular(path)
    if skipped:
        # stacklevel: the caller of import_checkpoint (via read_source, read_directory).
        warnings.warn(f"import of {d}: not kept: {', '.join(skipped)}", UserWarning, stacklevel=5)
    return out


def _read_regular(path: Path, limit: int = MAX_SIDE_FILE_BYTES) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FormatError(f"{path}: not a regular file", file=path)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FormatError(f"{path}: over the {limit}-byte cap", file=path)
    return data


_PLAIN = re.compile(r"[A-Za-z0-9._-]{1,255}")


def _torch_shards(d: Path, index_name: str) -> dict[str, Any]:
    """``pytorch_model-0000k-of-0000n.bin`` shards, as their index names them."""
    index = read_json_file(d / index_name, "shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(f"{d / index_name}: no weight_map of tensor name -> file name", file=d / index_name)
    weights: dict[str, Any] = {}
    for file in dict.fromkeys(weight_map.values()):
        if not _PLAIN.fullmatch(file) or file.startswith("."):
            raise FormatError(
                f"{d / index_name}: shard {file!r} is not a plain file name", file=d / index_name
            )
        shard = load_torch_file(d / file)
        for name, tensor in shard.items():
            if weight_map.get(name) != file:
                raise FormatError(
                    f"{d / file}: tensor {name!r} is not in the index under this file", file=d / file
                )
            weights[name] = tensor
    missing = [n for n in weight_map if n not in weights]
    if missing:
        raise FormatError(f"{d / index_name}: tensor {missing[0]!r} is in no shard", file=d / index_name)
    return weights


def load_torch_file(path: Path) -> dict[str, Any]:
    """A state dict from a torch pickle, with ``torch.load(weights_only=True)`` only: it
    builds tensors and plain containers and refuses every other object (no code runs)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading .bin/.pt files needs PyTorch (pip install torch)") from e
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FormatError(f"{path}: not a regular file", file=path)
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, EOFError ... all mean "refused"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FormatError(
                f"{path}: not a plain tensor file; torch.load(weights_only=True) refused it: {first}",
                file=path,
            ) from None
    if not isinstance(obj, Mapping):
        raise FormatError(
            f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}", file=path
        )
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            what = type(value).__name__
            raise FormatError(
                f"{path}: expected a flat state dict (name -> tensor); entry {name!r} is a {what}", file=path
            )
    return dict(obj)
