"""The optimizer state as a tree: dicts, lists and tuples whose leaves are arrays or
the scalars int, float, bool, None and str.

``flatten`` splits a tree into a JSON skeleton (exact scalars, no code) and a list of
named arrays; ``unflatten`` rebuilds it. Nothing is pickled. Skeleton nodes:

    "text"                      str           null / true / false   None / bool
    {"int": "1200"}             int, as decimal text up to 2,000 bits;
    {"int": "-0x1f3a..."}       larger ints as hex text ("0x" after an optional "-"),
                                which Python parses at any size
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

from ._tensors import SameViews, is_torch_tensor

# Each tree level is three JSON levels; the manifest parser stops at 128.
MAX_DEPTH = 32


# Decimal text for ints of at most this many bits (at most 603 digits), so str() and
# int() never meet Python's int_max_str_digits, whose smallest setting is 640 digits;
# larger ints are written in hex, which that limit does not cover.
_DECIMAL_BITS = 2000


def int_text(value: int) -> str:
    """An int as skeleton text: decimal, or hex for ints over 2,000 bits.

    Example:
        >>> int_text(1200), int_text(-(2**2001))[:6]
        ('1200', '-0x200')
    """
    return str(value) if value.bit_length() <= _DECIMAL_BITS else hex(value)


def int_from_text(text: str) -> int:
    """Parses ``int_text``'s output (and the decimal text of any older checkpoint).

    Example:
        >>> int_from_text("1200"), int_from_text(int_text(-(10**5000))) == -(10**5000)
        (1200, True)
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid int text {text!r:.80}")
    if text.startswith(("0x", "-0x")):
        return int(text, 16)
    return int(text)


def int_json(value: int) -> int | dict[str, str]:
    """An int as a JSON value outside the tree (the checkpoint's ``step``): a number,
    or an ``{"int": hex}`` node when it is too big for decimal text.

    Example:
        >>> int_json(1200), list(int_json(2**3000))
        (1200, ['int'])
    """
    return value if value.bit_length() <= _DECIMAL_BITS else {"int": int_text(value)}


def int_from_json(value: Any) -> int:
    """Reads ``int_json``'s output.

    Example:
        >>> int_from_json(1200), int_from_json(int_json(-(2**3000))) == -(2**3000)
        (1200, True)
    """
    if type(value) is int:
        return value
    if isinstance(value, dict) and list(value) == ["int"]:
        return int_from_text(value["int"])
    raise ValueError(f"invalid int {value!r:.80}")


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
        self.views = SameViews()

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
            return {"int": int_text(key)}
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
            return {"int": int_text(value)}
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
        name = self._name(path)
        same = self.views.find_or_add(value, name)
        if same is not None:  # the same view of the same memory again: store once
            self.names.discard(name)
            return {tag: same}
        self.arrays.append((name, value))
        return {tag: name}


def flatten(tree: Any, prefix: str = "state") -> tuple[Any, list[tuple[str, Any]]]:
    """Splits ``tree`` into (skeleton, [(tensor name, array), ...])."""
    f = _Flattener(prefix)
    skeleton = f.node(tree, ())
    return skeleton, f.arrays


def _float_from(node: dict[str, str]) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", int(node["bits"], 16)))[0])


#: Skeleton tags of array leaves.
_ARRAY_TAGS = frozenset(("array", "scalar", "torch"))


def unflatten(skeleton: Any, tensor: Callable[[str, str], Any]) -> Any:
    """Rebuilds the tree; ``tensor(tag, name)`` returns the leaf for an array node."""

    def build(node: Any) -> Any:
        # The nodes of nearly every tree first (array leaves, dicts), in fewer checks;
        # anything else takes the general order below.
        if type(node) is dict and len(node) == 1:
            ((tag, body),) = node.items()
            if tag in _ARRAY_TAGS:
                return tensor(tag, body)
            if tag == "dict":
                return {int_from_text(k["int"]) if isinstance(k, dict) else k: build(v) for k, v in body}
        if node is None or isinstance(node, bool | str):
            return node
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise ValueError(f"invalid optimizer skeleton node {node!r:.80}")
        if "float" in node:
            return _float_from(node)
        ((tag, body),) = node.items()
        if tag == "int":
            return int_from_text(body)
        if tag in ("dict", "odict"):
            pairs = ((int_from_text(k["int"]) if isinstance(k, dict) else k, build(v)) for k, v in body)
            return OrderedDict(pairs) if tag == "odict" else dict(pairs)
        if tag == "list":
            return [build(v) for v in body]
        if tag == "tuple":
            return tuple(build(v) for v in body)
        if tag in _ARRAY_TAGS:
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
