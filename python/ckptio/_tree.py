"""The optimizer state as a tree: dicts, lists and tuples whose leaves are arrays or
the scalars int, float, bool, None and str.

``flatten`` splits a tree into a JSON skeleton (exact scalars, no code) and a list of
named arrays; ``unflatten`` rebuilds it. Nothing is pickled. Skeleton nodes:

    "text"                      str           null / true / false   None / bool
    {"int": "1200"}             int (any size, as decimal text)
    {"float": "0.004", "bits": "3f70624dd2f1a9fc"}   float, bit-exact (nan, -0.0 ...)
    {"dict": [[key, node], ...]}  keys: "text" or {"int": "3"}; {"odict": ...} OrderedDict
    {"list": [...]}  {"tuple": [...]}
    {"array": "name"}  {"torch": "name"}  {"scalar": "name"} (numpy scalar)
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ._tensors import is_torch_tensor, storage_key

# Each tree level is three JSON levels; the manifest parser stops at 128.
MAX_DEPTH = 32


def _float_node(x: float) -> dict[str, str]:
    bits = struct.unpack("<Q", struct.pack("<d", x))[0]
    return {"float": repr(x), "bits": f"{bits:016x}"}


def _path_str(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p!r}]" for p in path) or "<root>"


class _Flattener:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.arrays: list[tuple[str, Any]] = []
        self.names: set[str] = set()
        self.by_storage: dict[tuple[Any, ...], str] = {}

    def _name(self, path: tuple[Any, ...]) -> str:
        base = ".".join(map(str, path)) or self.prefix
        name, n = base, 1
        while name in self.names:
            n += 1
            name = f"{base}#{n}"
        self.names.add(name)
        return name

    def _key(self, key: Any, path: tuple[Any, ...]) -> Any:
        if type(key) is str:
            return key
        if type(key) is int:
            return {"int": str(key)}
        raise TypeError(
            f"optimizer state at {_path_str(path)}: dict keys must be str or int, "
            f"got {type(key).__name__} {key!r}"
        )

    def node(self, value: Any, path: tuple[Any, ...]) -> Any:
        if len(path) > MAX_DEPTH:
            raise ValueError(f"optimizer state at {_path_str(path)}: nested deeper than {MAX_DEPTH} levels")
        t = type(value)
        if value is None or t is bool or t is str:
            return value
        if t is int:
            return {"int": str(value)}
        if t is float:
            return _float_node(value)
        if t is dict or t is OrderedDict:
            items = [[self._key(k, path), self.node(v, (*path, k))] for k, v in value.items()]
            return {"odict" if t is OrderedDict else "dict": items}
        if t is list or t is tuple:
            items = [self.node(v, (*path, i)) for i, v in enumerate(value)]
            return {t.__name__: items}
        if is_torch_tensor(value):
            tag = "torch"
        elif isinstance(value, np.ndarray):
            tag = "array"
        elif isinstance(value, np.generic):
            tag = "scalar"
        else:
            raise TypeError(
                f"optimizer state at {_path_str(path)}: unsupported {t.__module__}.{t.__qualname__}; "
                "leaves must be arrays, tensors, int, float, bool, None or str"
            )
        key = storage_key(value)
        if key is not None and key in self.by_storage:  # the same memory again: store once
            return {tag: self.by_storage[key]}
        name = self._name(path)
        self.arrays.append((name, value))
        if key is not None:
            self.by_storage[key] = name
        return {tag: name}


def flatten(tree: Any, prefix: str = "state") -> tuple[Any, list[tuple[str, Any]]]:
    """Splits ``tree`` into (skeleton, [(tensor name, array), ...])."""
    f = _Flattener(prefix)
    skeleton = f.node(tree, ())
    return skeleton, f.arrays


def _float_from(node: dict[str, str]) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", int(node["bits"], 16)))[0])


def unflatten(skeleton: Any, tensor: Callable[[str, str], Any]) -> Any:
    """Rebuilds the tree; ``tensor(tag, name)`` returns the leaf for an array node."""

    def build(node: Any) -> Any:
        if node is None or isinstance(node, bool | str):
            return node
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise ValueError(f"invalid optimizer skeleton node {node!r:.80}")
        if "float" in node:
            return _float_from(node)
        ((tag, body),) = node.items()
        if tag == "int":
            return int(body)
        if tag in ("dict", "odict"):
            pairs = ((int(k["int"]) if isinstance(k, dict) else k, build(v)) for k, v in body)
            return OrderedDict(pairs) if tag == "odict" else dict(pairs)
        if tag == "list":
            return [build(v) for v in body]
        if tag == "tuple":
            return tuple(build(v) for v in body)
        if tag in ("array", "scalar", "torch"):
            return tensor(tag, body)
        raise ValueError(f"invalid optimizer skeleton tag {tag!r}")

    return build(skeleton)


def array_leaves(skeleton: Any) -> list[tuple[str, str]]:
    """(tag, tensor name) of every array leaf of a skeleton, without building the tree.

    Example:
        >>> array_leaves({"dict": [["m", {"array": "m"}], ["step", {"int": "3"}]]})
        [('array', 'm')]
    """
    found: list[tuple[str, str]] = []
    stack = [skeleton]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and len(node) == 1:
            ((tag, body),) = node.items()
            if tag in ("array", "scalar", "torch") and isinstance(body, str):
                found.append((tag, body))
            elif tag in ("list", "tuple") and isinstance(body, list):
                stack.extend(reversed(body))
            elif tag in ("dict", "odict") and isinstance(body, list):
                stack.extend(
                    reversed([pair[1] for pair in body if isinstance(pair, list) and len(pair) == 2])
                )
    return found
