"""Element types: numpy and torch dtypes <-> safetensors dtype names."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .errors import FormatError

try:  # bf16 and fp8 for numpy come from ml_dtypes, when it is installed.
    import ml_dtypes
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    ml_dtypes = None

_NUMPY_TO_ST: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint64): "U64",
    np.dtype(np.int64): "I64",
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
}
if ml_dtypes is not None:
    _NUMPY_TO_ST[np.dtype(ml_dtypes.bfloat16)] = "BF16"
    _NUMPY_TO_ST[np.dtype(ml_dtypes.float8_e4m3fn)] = "F8_E4M3"
    _NUMPY_TO_ST[np.dtype(ml_dtypes.float8_e5m2)] = "F8_E5M2"
_ST_TO_NUMPY = {name: dt for dt, name in _NUMPY_TO_ST.items()}
_NEEDS_ML_DTYPES = {"BF16", "F8_E4M3", "F8_E5M2"}

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


def numpy_to_st(dtype: np.dtype[Any]) -> str | None:
    """The safetensors name of a numpy dtype (byte order ignored), or None."""
    return _NUMPY_TO_ST.get(dtype.newbyteorder("="))


def st_to_numpy(name: str) -> np.dtype[Any]:
    """The numpy dtype for a safetensors name; bf16/fp8 need ``ml_dtypes``."""
    try:
        return _ST_TO_NUMPY[name]
    except KeyError:
        if name in _NEEDS_ML_DTYPES:
            raise ImportError(
                f"loading {name} tensors as numpy needs ml_dtypes: pip install ml_dtypes "
                "(or load with framework='torch')"
            ) from None
        raise FormatError(f"unsupported dtype {name!r}") from None


def supported_numpy_names() -> str:
    return ", ".join(str(d) for d in _NUMPY_TO_ST)


@functools.cache
def _torch_table() -> dict[Any, str]:
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
        torch.int32: "I32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.float32: "F32", torch.float64: "F64",
        torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    }  # fmt: skip
    for attr, name in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
        if hasattr(torch, attr):  # torch >= 2.3
            table[getattr(torch, attr)] = name
    return table


def torch_to_st(dtype: Any) -> str | None:
    """The safetensors name of a torch dtype, or None."""
    return _torch_table().get(dtype)


def st_to_torch(name: str) -> Any:
    """The torch dtype for a safetensors name."""
    for dt, n in _torch_table().items():
        if n == name:
            return dt
    raise FormatError(f"dtype {name!r} has no torch equivalent in this torch version")
