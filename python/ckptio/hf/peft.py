"""PEFT adapters: LoRA tensors under PEFT's key names
(``base_model.model.<module>.lora_A.weight``), and the ``adapter_config.json`` that
``PeftModel.from_pretrained`` reads, with ``r`` and ``target_modules`` inferred from
the tensors when the config leaves them out."""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Mapping
from typing import Any

from ._common import config_dict

PREFIX = "base_model.model."
_PARTS = r"lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector"
_LORA = re.compile(rf"\.(?:{_PARTS})(?=\.|$)")
# PeftModel.state_dict() names carry the adapter: lora_A.default.weight.
_ADAPTER_NAME = re.compile(rf"\.({_PARTS})\.(?!weight$|bias$)[^.]+(?=\.|$)")
_DOWN = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?:lora_A|lora_embedding_A)(?:\.weight)?$")
PEFT_DEFAULT_ALPHA = 8  # peft.LoraConfig's default lora_alpha


def peft_key(name: str) -> str | None:
    """The PEFT file key of a LoRA tensor, or None for a tensor that is not LoRA.

    Example:
        >>> peft_key("model.layers.0.self_attn.q_proj.lora_A.default.weight")
        'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
        >>> peft_key("model.layers.0.self_attn.q_proj.weight") is None
        True
    """
    if not _LORA.search(name):
        return None
    name = _ADAPTER_NAME.sub(r".\1", name)
    return name if name.startswith(PREFIX) else PREFIX + name


def lora_ranks(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The rank of each adapted module (path below the base model), from its
    down-projection (``lora_A``: rank x in; 3-D expert stacks: experts x rank x in).

    Example:
        >>> lora_ranks({"base_model.model.m.q_proj.lora_A.weight": (4, 32)})
        {'m.q_proj': 4}
    """
    ranks = {}
    for key, shape in shapes.items():
        m = _DOWN.match(key)
        if m and shape:
            ranks[m.group("module")] = shape[-2] if len(shape) == 3 else shape[0]
    return ranks


def _rank_for(module: str, r: int, rank_pattern: Mapping[str, int]) -> int:
    # PEFT's rule: a pattern applies to a module whose path it matches at the end.
    for pattern, rank in rank_pattern.items():
        if re.match(rf"(.*\.)?(?:{pattern})$", module):
            return int(rank)
    return r


def _targets(module: str, target_modules: Any) -> bool:
    if isinstance(target_modules, list | tuple | set):
        return any(module == t or module.endswith(f".{t}") for t in target_modules)
    return True  # a regex or "all-linear": PEFT decides


def adapter_config(
    config: Any, shapes: Mapping[str, tuple[int, ...]], saved: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``adapter_config.json`` for these LoRA tensors: ``config`` (a
    ``peft.LoraConfig``, a dict or a path), else the one saved with the checkpoint,
    else PEFT's defaults; ``r``, ``target_modules`` (and ``rank_pattern`` for modules
    of another rank) inferred from the tensors when missing, and checked against them.

    Example:
        >>> shapes = {"base_model.model.m.q_proj.lora_A.weight": (4, 32),
        ...           "base_model.model.m.q_proj.lora_B.weight": (32, 4)}
        >>> cfg = adapter_config({"lora_alpha": 16}, shapes, None)
        >>> cfg["r"], cfg["target_modules"], cfg["peft_type"], cfg["lora_alpha"]
        (4, ['q_proj'], 'LORA', 16)
    """
    given = config is not None or saved is not None
    cfg = (
        config_dict(config, "adapter_config.json", "PEFT config") if config is not None else dict(saved or {})
    )
    ranks = lora_ranks(shapes)
    if not ranks:
        raise ValueError("no LoRA down-projection (lora_A) tensors: cannot build a PEFT adapter")
    counts = collections.Counter(ranks.values())
    common = max(counts, key=lambda r: (counts[r], r))
    if cfg.get("r") is None:
        cfg["r"] = common
        if cfg.get("rank_pattern") in (None, {}):
            cfg["rank_pattern"] = {m: r for m, r in ranks.items() if r != common}
    if cfg.get("target_modules") is None:
        cfg["target_modules"] = sorted({m.rsplit(".", 1)[-1] for m in ranks})
    cfg.setdefault("peft_type", "LORA")
    if not given:
        cfg.setdefault("task_type", "CAUSAL_LM")
    if cfg.get("lora_alpha") is None:
        warnings.warn(
            f"the PEFT config gives no lora_alpha: using PEFT's default {PEFT_DEFAULT_ALPHA}; the adapter's "
            "scale (lora_alpha / r) changes the model's outputs, so pass the value it was trained with",
            UserWarning,
            stacklevel=4,
        )
        cfg["lora_alpha"] = PEFT_DEFAULT_ALPHA
    cfg.setdefault("inference_mode", True)
    if str(cfg["peft_type"]).upper() != "LORA":
        raise ValueError(f"PEFT config: peft_type {cfg['peft_type']!r}; only LoRA adapters are exported")
    rank_pattern = cfg.get("rank_pattern") or {}
    for module, rank in ranks.items():
        want = _rank_for(module, int(cfg["r"]), rank_pattern)
        if want != rank:
            raise ValueError(
                f"PEFT config: module {module!r} has LoRA rank {rank} in the checkpoint but the config "
                f"says {want} (r={cfg['r']}); pass the r it was trained with, or omit r to infer it"
            )
        if not _targets(module, cfg["target_modules"]):
            raise ValueError(
                f"PEFT config: target_modules {cfg['target_modules']!r} do not cover module {module!r}, "
                "which has LoRA tensors; omit target_modules to infer them"
            )
    _check_with_peft(cfg)
    return cfg


def _check_with_peft(cfg: dict[str, Any]) -> None:
    """Lets PEFT itself refuse a config it could not load, when PEFT is installed."""
    try:
        import dataclasses

        from peft import LoraConfig
    except ImportError:
        return
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    try:
        LoraConfig(**{k: v for k, v in cfg.items() if k in known and k != "peft_type"})
    except (TypeError, ValueError) as e:
        raise ValueError(f"PEFT config: peft.LoraConfig refuses it: {e}") from None
