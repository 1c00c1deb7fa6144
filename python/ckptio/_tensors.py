"""Turning caller arrays into (dtype, shape, byte source) without copying.

numpy arrays are passed to the core as buffers of their own memory, CPU torch tensors
as the tensors themselves: the binding checks that their bytes lie in a CPU storage and
holds that storage while it reads. Only non-contiguous, big-endian, conj/neg-view or
device (CUDA) tensors are copied first.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from ._dtypes import numpy_to_st, supported_numpy_names, torch_to_st


class Saveable(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    data: Any  # an object exporting a C-contiguous buffer, or a contiguous CPU torch tensor
    nbytes: int
    owner: Any  # the caller's object (or the private copy) behind ``data``
    borrowed: bool  # True: ``data`` is the caller's memory; False: a private copy


_TORCH_TYPES: set[type] = set()  # tensor classes seen (Tensor, Parameter, subclasses)


def is_torch_tensor(value: Any) -> bool:
    """Is ``value`` a torch tensor? Decided by type (``torch.Tensor`` or a subclass),
    and only once the caller has imported torch: torch stays optional and is never
    imported here.

    Example:
        >>> is_torch_tensor(np.zeros(2))
        False
    """
    t = type(value)
    if t in _TORCH_TYPES:
        return True
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None)  # None while torch is still importing
    if isinstance(tensor, type) and issubclass(t, tensor):  # type(value): no __class__ spoofing
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
        # The common case: the binding checks the tensor's storage and reads it in place.
        return Saveable(st, tuple(t.shape), t, t.nbytes, t, True)
    if t.is_meta:
        raise ValueError(f"tensor {name!r}: a meta tensor has no data to save")
    try:
        t = t.detach()
        if not t.is_cpu:
            t = t.to("cpu")  # device tensors are copied to host (the only copy made)
        t = t.resolve_conj().resolve_neg().contiguous()
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(f"tensor {name!r}: cannot copy it to CPU memory: {e}") from e
    return Saveable(st, tuple(t.shape), t, t.nbytes, t, False)


def address(value: Any) -> int | None:
    """Where a tensor's data starts; None for empty tensors, whose pointer means nothing,
    and for anything that is not an array or tensor.

    Example:
        >>> a = np.arange(4.0)
        >>> address(a[1:]) - address(a), address(np.zeros(0)), address(3)
        (8, None, None)
    """
    if is_torch_tensor(value):
        return int(value.data_ptr()) if value.numel() else None
    if isinstance(value, np.ndarray) and value.size:
        return int(value.__array_interface__["data"][0])
    return None


def storage_key(value: Any) -> tuple[Any, ...] | None:
    """Identifies the exact view of memory a tensor is: equal keys mean the same values
    (tied weights), so one can be stored for both. A torch key covers everything that
    changes what the bytes mean: address, dtype, shape, strides, storage offset, the
    conj and neg bits (``c.imag`` and ``c.conj().imag`` share memory but differ in sign)
    and device. None for empty tensors, whose data pointer means nothing.

    Example:
        >>> a = np.zeros(3)
        >>> storage_key(a) == storage_key(a[:]), storage_key(a) == storage_key(a.copy())
        (True, False)
    """
    start = address(value)
    if start is None:
        return None
    if isinstance(value, np.ndarray):
        return ("numpy", start, value.dtype.str, value.shape, value.strides)
    return (
        "torch", start, value.dtype, tuple(value.shape), value.stride(), value.storage_offset(),
        value.is_conj(), value.is_neg(), value.device,
    )  # fmt: skip


class SameViews:
    """Finds, among the tensors added so far, one that is the exact same view as a new
    one (equal ``storage_key``). Cheap per tensor: only the address is read, and full
    keys are compared only between tensors that start at the same address.

    Example:
        >>> a = np.arange(4.0); views = SameViews()
        >>> views.find_or_add(a, "a"), views.find_or_add(a[:], "b"), views.find_or_add(a[::2], "c")
        (None, 'a', None)
    """

    def __init__(self) -> None:
        self._at: dict[int, list[tuple[Any, str]]] = {}

    def find_or_add(self, value: Any, name: str) -> str | None:
        """The name of an earlier tensor that is the same view as ``value``; else
        remembers ``value`` under ``name`` and returns None."""
        start = address(value)
        if start is None:
            return None
        seen = self._at.setdefault(start, [])
        if seen:
            key = storage_key(value)
            for other, other_name in seen:
                if storage_key(other) == key:
                    return other_name
        seen.append((value, name))
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


#: What the binding's save planner (``_core.plan_save``) calls for the arrays it does
#: not read itself, and to compare arrays that start at the same address.
PLAN_HOOKS = SimpleNamespace(
    as_saveable=as_saveable, address=address, storage_key=storage_key, torch_dtype=torch_to_st
)
