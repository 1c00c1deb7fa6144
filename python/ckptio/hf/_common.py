"""Helpers shared by export and import: dtypes, sizes, JSON configs."""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._dtypes import numpy_to_st, st_to_numpy, st_to_torch, torch_to_st
from .._side_files import MAX_SIDE_FILE_BYTES
from .._tensors import is_torch_tensor
from ..errors import CheckpointExistsError, CheckpointNotFoundError

PathLike = str | os.PathLike[str]

_DTYPE_NAMES = {
    "bf16": "BF16", "bfloat16": "BF16",
    "fp16": "F16", "f16": "F16", "float16": "F16", "half": "F16",
    "fp32": "F32", "f32": "F32", "float32": "F32", "float": "F32",
    "fp64": "F64", "f64": "F64", "float64": "F64", "double": "F64",
}  # fmt: skip
_FLOATING = {"BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
# What Hugging Face configs call each dtype (their "dtype" / "torch_dtype" field).
HF_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def parse_dtype(dtype: Any) -> str | None:
    """A floating-point target dtype as its safetensors name: ``"bf16"``,
    ``"bfloat16"``, ``torch.bfloat16``, a numpy dtype ...; None stays None.

    Example:
        >>> parse_dtype("bf16"), parse_dtype("float32"), parse_dtype(None)
        ('BF16', 'F32', None)
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.lower().removeprefix("torch."))
    elif type(dtype).__module__ == "torch":
        name = torch_to_st(dtype)
    else:
        try:
            name = numpy_to_st(np.dtype(dtype))
        except TypeError:
            name = None
    if name not in _FLOATING:
        choices = ", ".join(sorted(_DTYPE_NAMES))
        raise ValueError(f"dtype must be a floating-point type ({choices}), got {dtype!r}")
    return name


class Caster:
    """Casts floating-point tensors to one dtype, once per storage: tied weights (one
    object under several names) stay one object."""

    def __init__(self, st_name: str | None) -> None:
        self.st_name = st_name
        self._done: dict[int, Any] = {}
        self._keep: list[Any] = []  # keeps the ids above unique

    def __call__(self, value: Any) -> Any:
        if self.st_name is None:
            return value
        key = id(value)
        if key not in self._done:
            self._keep.append(value)
            self._done[key] = self._cast(value)
        return self._done[key]

    def _cast(self, value: Any) -> Any:
        if is_torch_tensor(value):
            if not value.is_floating_point():
                return value
            target = st_to_torch(self.st_name or "")
            return value if value.dtype == target else value.detach().to(target)
        arr = np.asarray(value)
        if numpy_to_st(arr.dtype) not in _FLOATING:
            return value
        return arr.astype(st_to_numpy(self.st_name or ""))


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"2GiB"`` -> 2 * 2**30, ``"1000"`` -> 1000 (Hugging
    Face's ``max_shard_size`` units: decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB).

    Example:
        >>> parse_size("5GB"), parse_size("1.5MiB"), parse_size(42)
        (5000000000, 1572864, 42)
    """
    if isinstance(text, int):
        n = text
    else:
        m = _SIZE.fullmatch(text)
        if m is None:
            raise ValueError(f"size {text!r}: expected a number of bytes or e.g. 500MB, 5GB, 2GiB")
        unit = (m.group(2) or "B").upper()
        scale = 1024 if "I" in unit else 1000
        n = int(float(m.group(1)) * scale ** "BKMGT".index(unit[0]))
    if n <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return n


def read_json_file(path: PathLike, what: str) -> dict[str, Any]:
    """A JSON object from a file (capped like every side file)."""
    with open(path, "rb") as f:
        data = f.read(MAX_SIDE_FILE_BYTES + 1)
    if len(data) > MAX_SIDE_FILE_BYTES:
        raise ValueError(f"{what} {os.fspath(path)}: over the {MAX_SIDE_FILE_BYTES}-byte cap")
    try:
        value = json.loads(data)
    except ValueError as e:
        raise ValueError(f"{what} {os.fspath(path)}: invalid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {os.fspath(path)}: expected a JSON object, got {type(value).__name__}")
    return value


def config_dict(config: Any, file_name: str, what: str) -> dict[str, Any]:
    """A config given as a dict, a path (a JSON file, or a directory holding
    ``file_name``), or an object with ``to_dict()`` (transformers and PEFT configs)."""
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, str | os.PathLike):
        path = os.fspath(config)
        return read_json_file(os.path.join(path, file_name) if os.path.isdir(path) else path, what)
    to_json = getattr(config, "to_json_string", None)
    if callable(to_json):  # transformers: JSON-safe (dtypes as names)
        return dict(json.loads(to_json(use_diff=False)))
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return json_safe(to_dict())
    raise TypeError(f"{what}: expected a config object, a dict or a path, got {type(config).__name__}")


def json_safe(value: Any) -> Any:
    """Sets as sorted lists and str enums as their values, recursively (what PEFT does
    when it writes ``adapter_config.json``)."""
    if isinstance(value, enum.Enum):
        return json_safe(value.value)  # PeftType.LORA -> "LORA"
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(json_safe(v) for v in value)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_bytes(value: Mapping[str, Any]) -> bytes:
    """A config as Hugging Face writes it: indented, sorted keys, newline-terminated."""
    return (json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def check_target(dst: Path, overwrite: bool) -> None:
    """Fails before any reading or unpacking where the save would fail at the end (the
    save checks again, atomically)."""
    if not dst.parent.is_dir():
        raise CheckpointNotFoundError(f"parent directory of {dst} does not exist")
    if os.path.lexists(dst) and not overwrite:
        raise CheckpointExistsError(f"{dst} already exists (pass overwrite=True to replace a checkpoint)")
