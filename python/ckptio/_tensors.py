"""Turning caller arrays into (dtype, shape, byte buffer) without copying.

numpy arrays and CPU torch tensors are passed to the core as byte views of their own
memory. Only non-contiguous, big-endian or device (CUDA) tensors are copied first.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np

from ._dtypes import numpy_to_st, supported_numpy_names, torch_to_st


class Saveable(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    data: Any  # an object exporting a C-contiguous buffer, or (address, nbytes) of owner's memory
    nbytes: int
    owner: Any  # keeps ``data``'s memory alive while the save runs
    borrowed: bool  # True: ``data`` is the caller's memory; False: a private copy


_TORCH_TYPES: set[type] = set()  # tensor classes seen (Tensor, Parameter, subclasses)


def is_torch_tensor(value: Any) -> bool:
    # No import: torch stays optional and is only touched when the caller uses it.
    t = type(value)
    if t in _TORCH_TYPES:
        return True
    if t.__module__.startswith("torch") and hasattr(value, "untyped_storage"):
        _TORCH_TYPES.add(t)
        return True
    return False


def is_array(value: Any) -> bool:
    """Is this a tensor leaf (numpy array or torch tensor)?

    Example:
        >>> is_array(np.zeros(2)), is_array([0, 0])
        (True, False)
    """
    return isinstance(value, np.ndarray) or is_torch_tensor(value)


# numpy dtypes whose arrays export a plain buffer (ml_dtypes' bf16/fp8 do not).
_BUFFER_CHARS = frozenset("?bBhHiIlLqQefd")


def _numpy(name: str, value: np.ndarray) -> Saveable:
    arr = value
    if arr.dtype.hasobject:
        raise TypeError(f"tensor {name!r}: object arrays cannot be saved (dtype {arr.dtype})")
    st = numpy_to_st(arr.dtype)
    if st is None:
        raise TypeError(
            f"tensor {name!r}: dtype {arr.dtype} is not supported; supported: {supported_numpy_names()}"
        )
    if arr.ndim and arr.flags.c_contiguous and arr.dtype.isnative and arr.dtype.char in _BUFFER_CHARS:
        return Saveable(st, arr.shape, arr, arr.nbytes, arr, True)  # the fast, common case
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return Saveable(st, tuple(arr.shape), flat, flat.nbytes, flat, bool(np.may_share_memory(flat, value)))


def _torch(name: str, t: Any) -> Saveable:
    torch = sys.modules["torch"]
    st = torch_to_st(t.dtype)
    if st is None:
        raise TypeError(f"tensor {name!r}: torch dtype {t.dtype} is not supported")
    if t.layout != torch.strided:
        raise TypeError(f"tensor {name!r}: only dense (strided) torch tensors can be saved, got {t.layout}")
    if t.is_cpu and t.is_contiguous() and not t.is_conj() and not t.is_neg():
        # The common case: the core reads the tensor's own memory, kept alive by ``t``.
        return Saveable(st, tuple(t.shape), (t.data_ptr(), t.nbytes), t.nbytes, t, True)
    t = t.detach()
    if not t.is_cpu:
        t = t.to("cpu")  # device tensors are copied to host (the only copy made)
    t = t.resolve_conj().resolve_neg().contiguous()
    return Saveable(st, tuple(t.shape), (t.data_ptr(), t.nbytes), t.nbytes, t, False)


def storage_key(value: Any) -> tuple[Any, ...] | None:
    """Identifies the memory a tensor views: equal keys mean the same bytes (tied
    weights). None for empty tensors, whose data pointer means nothing.

    Example:
        >>> a = np.zeros(3)
        >>> storage_key(a) == storage_key(a[:]), storage_key(a) == storage_key(a.copy())
        (True, False)
    """
    if is_torch_tensor(value):
        if not value.numel():
            return None
        return ("torch", value.data_ptr(), value.dtype, value.shape, value.stride(), value.get_device())
    if isinstance(value, np.ndarray) and value.size:
        return ("numpy", value.__array_interface__["data"][0], value.dtype.str, value.shape, value.strides)
    return None


def as_saveable(name: str, value: Any) -> Saveable:
    """Checks one tensor and returns its zero-copy byte view."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__} {name!r}")
    if isinstance(value, np.ndarray):
        return _numpy(name, value)
    if isinstance(value, np.generic):
        return _numpy(name, np.asarray(value))
    if is_torch_tensor(value):
        return _torch(name, value)
    raise TypeError(f"tensor {name!r}: expected a numpy array or torch tensor, got {type(value).__name__}")
