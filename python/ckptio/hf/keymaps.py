"""Key maps: renaming tensors on the way in or out of ckptio.

A key map is a mapping (old name -> new name; names it lacks are kept), a callable
(name -> new name, or None to drop the tensor), the name of a preset, or a list of
these applied in order.

Presets:

- ``"tinker"``: Tinker's module names -> Hugging Face's, as the Tinker cookbook's
  merge does: ``model.unembed_tokens`` -> ``lm_head`` and ``.attn.`` -> ``.self_attn.``
  (Llama/Qwen-style models; GPT-2's own ``.attn.`` would be renamed too, so use it for
  Tinker checkpoints only).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

KeyMap = Mapping[str, str] | Callable[[str], str | None] | str | Sequence[Any] | None

_UNEMBED = re.compile(r"(^|\.)(?:model\.)?unembed_tokens(?=\.|$)")
_ATTN = re.compile(r"\.attn(?=\.)")


def tinker_to_hf(name: str) -> str:
    """Tinker's names -> Hugging Face's.

    Example:
        >>> tinker_to_hf("base_model.model.model.unembed_tokens.lora_A.weight")
        'base_model.model.lm_head.lora_A.weight'
        >>> tinker_to_hf("model.layers.0.attn.q_proj.weight")
        'model.layers.0.self_attn.q_proj.weight'
    """
    return _ATTN.sub(".self_attn", _UNEMBED.sub(r"\1lm_head", name))


PRESETS: dict[str, Callable[[str], str]] = {"tinker": tinker_to_hf}


def resolve_key_map(key_map: KeyMap) -> Callable[[str], str | None]:
    """The key map as one function (name -> new name, or None: dropped).

    Example:
        >>> f = resolve_key_map(["tinker", {"lm_head.weight": "output.weight"}])
        >>> f("model.unembed_tokens.weight")
        'output.weight'
    """
    if key_map is None:
        return lambda name: name
    if isinstance(key_map, str):
        try:
            return PRESETS[key_map]
        except KeyError:
            raise ValueError(
                f"unknown key map preset {key_map!r}; presets: {', '.join(sorted(PRESETS))}"
            ) from None
    if isinstance(key_map, Mapping):
        table = dict(key_map)
        return lambda name: table.get(name, name)
    if callable(key_map):
        return key_map
    if isinstance(key_map, Sequence):
        steps = [resolve_key_map(k) for k in key_map]

        def chained(name: str) -> str | None:
            out: str | None = name
            for step in steps:
                if out is None:
                    return None
                out = step(out)
            return out

        return chained
    raise TypeError(
        f"key_map: expected a mapping, a callable, a preset name or a list, got {type(key_map).__name__}"
    )


def rename(names: Iterable[str], key_map: KeyMap) -> dict[str, str]:
    """``{old: new}`` for every name the key map keeps; two names mapped to one is an
    error naming both.

    Example:
        >>> rename(["a", "b", "c"], lambda n: None if n == "b" else n.upper())
        {'a': 'A', 'c': 'C'}
        >>> rename(["a", "b"], lambda n: "same")
        Traceback (most recent call last):
        ...
        ValueError: key_map maps both 'a' and 'b' to 'same'
    """
    fn = resolve_key_map(key_map)
    out: dict[str, str] = {}
    taken: dict[str, str] = {}
    for old in names:
        new = fn(old)
        if new is None:
            continue
        if not isinstance(new, str) or not new:
            raise TypeError(f"key_map: {old!r} maps to {new!r}, not a non-empty str (or None to drop it)")
        if new in taken:
            raise ValueError(f"key_map maps both {taken[new]!r} and {old!r} to {new!r}")
        taken[new] = old
        out[old] = new
    return out
