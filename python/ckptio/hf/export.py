"""``ckptio.export``: a checkpoint's weights as a Hugging Face model directory or a PEFT
adapter, written through ckptio's own save (staging directory, atomic rename, a
manifest with checksums, so ``ckptio verify`` works on the export too)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._location import is_url
from .._plan import SavePlan, save_options
from .._tensors import storage_key
from ..checkpoint import Checkpoint
from . import peft as _peft
from ._common import HF_DTYPE_NAMES, Caster, PathLike, check_target, config_dict, json_bytes, parse_dtype
from .keymaps import KeyMap, rename

CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model"  # PEFT reads adapter_model.safetensors


def export(
    src: PathLike,
    dst: PathLike,
    *,
    to: str = "hf",
    config: Any = None,
    dtype: Any = None,
    max_shard_bytes: int | None = None,
    key_map: KeyMap = None,
    overwrite: bool = False,
    durable: bool = True,
) -> Path:
    """Writes the weights of checkpoint ``src`` where Hugging Face loaders read them.

    - ``to="hf"``: the model weights (never optimizer or RNG state) as
      ``model.safetensors``, or shards with ``model.safetensors.index.json`` when
      ``max_shard_bytes`` is given, plus ``config.json`` from ``config`` (a transformers
      config, a dict, or a path), else from the checkpoint's own ``config.json``.
      ``AutoModelForCausalLM.from_pretrained(dst)`` loads it. Tied weights (stored once
      by ckptio) are written under the name the model class loads, the other one is
      tied again on load, as ``save_pretrained`` does.
    - ``to="peft"``: the LoRA tensors as ``adapter_model.safetensors`` under PEFT's
      names (``base_model.model.<module>.lora_A.weight``) with ``adapter_config.json``
      from ``config`` (a ``peft.LoraConfig``, a dict or a path), else the checkpoint's
      own; ``r`` and ``target_modules`` are inferred from the tensors when missing.
      ``PeftModel.from_pretrained(base_model, dst)`` loads it.

    ``dtype`` (``"bf16"``, ``torch.float16`` ...) casts floating-point tensors (and the
    config's dtype). ``key_map`` renames tensors first: a mapping, a callable, a preset
    (``"tinker"``: ``unembed_tokens`` -> ``lm_head``, ``.attn`` -> ``.self_attn``) or a
    list of these. The other side files of ``src`` (tokenizer files ...) are carried
    over. ``dst`` appears atomically, as a ckptio checkpoint (``ckptio verify dst``).

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> _ = ckptio.save_weights_for_sampler(os.path.join(d, "ck"), {"w": np.ones(2, np.float32)})
        >>> out = ckptio.export(os.path.join(d, "ck"), os.path.join(d, "hf"), config={"model_type": "x"})
        >>> sorted(os.listdir(out)), ckptio.verify(out)
        (['ckptio.json', 'config.json', 'model.safetensors'], [])
    """
    if to not in ("hf", "peft"):
        raise ValueError(f"to must be 'hf' or 'peft', got {to!r}")
    st_dtype = parse_dtype(dtype)
    if is_url(dst):
        raise ValueError(f"{dst}: export writes a local directory (ckptio.copy can then upload it)")
    check_target(Path(dst), overwrite)
    ckpt = Checkpoint(src, allow_foreign=True)
    weights = ckpt.weights()  # numpy or torch, as saved
    renamed = rename(weights, key_map)
    weights = {new: weights[old] for old, new in renamed.items()}
    carried = _carried_side_files(ckpt)
    cast = Caster(st_dtype)
    if to == "peft":
        if max_shard_bytes is not None:
            raise ValueError(
                "to='peft': PEFT reads one adapter_model.safetensors; max_shard_bytes does not apply"
            )
        tensors, adapter_cfg = _peft_tensors(weights, config, ckpt, cast)
        carried[ADAPTER_CONFIG] = json_bytes(adapter_cfg)
        group = ADAPTER_WEIGHTS
    else:
        cfg = _hf_config(config, ckpt)
        tensors = _untie(weights, cfg, cast)
        if cfg is not None:
            if st_dtype is not None:
                _set_config_dtype(cfg, st_dtype)
            carried[CONFIG] = json_bytes(cfg)
        else:
            warnings.warn(
                f"export of {src}: no config given and none saved with the checkpoint; "
                "from_pretrained needs a config.json (pass config=)",
                UserWarning,
                stacklevel=2,
            )
        group = "model"
    metadata = {"exported_from": {"path": os.fspath(src), "to": to}}
    options = save_options(overwrite=overwrite, durable=durable, max_shard_bytes=max_shard_bytes)
    return SavePlan(
        dst, "sampler", tensors, metadata=metadata, options=options, extra_files=carried, weights_group=group,
    ).write()  # fmt: skip


def _carried_side_files(ckpt: Checkpoint) -> dict[str, Any]:
    """The checkpoint's side files but its configs, which the export writes itself."""
    if not ckpt.checksummed:
        return {}
    return {n: ckpt.read_side_file(n) for n in ckpt.side_files if n not in (CONFIG, ADAPTER_CONFIG)}


def _saved_json(ckpt: Checkpoint, name: str) -> dict[str, Any] | None:
    if not ckpt.checksummed or name not in ckpt.side_files:
        return None
    value = json.loads(ckpt.read_side_file(name))
    if not isinstance(value, dict):
        raise ValueError(f"{ckpt.path / name}: expected a JSON object")
    return value


def _hf_config(config: Any, ckpt: Checkpoint) -> dict[str, Any] | None:
    if config is not None:
        return config_dict(config, CONFIG, "config")
    return _saved_json(ckpt, CONFIG)


def _set_config_dtype(cfg: dict[str, Any], st_dtype: str) -> None:
    """from_pretrained loads in the config's dtype (transformers 5: ``dtype``; 4:
    ``torch_dtype``), so a cast export says what it holds."""
    name = HF_DTYPE_NAMES.get(st_dtype)
    if name is None:
        return
    cfg["dtype"] = name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name


def _untie(weights: Mapping[str, Any], cfg: dict[str, Any] | None, cast: Caster) -> dict[str, Any]:
    """One entry per name Hugging Face loads. Names sharing storage (tied weights) keep
    only those the model class does not tie itself; any left beyond the first become
    copies, so ckptio does not fold them into an alias the loader would not see."""
    groups: dict[Any, list[str]] = {}
    for name, value in weights.items():
        groups.setdefault(storage_key(value) or ("own", name), []).append(name)
    shared = [names for names in groups.values() if len(names) > 1]
    targets = _tied_targets(cfg) if shared else set()
    drop: set[str] = set()
    for names in shared:
        if targets is None:  # model class unknown: the usual output head is the tied one
            keep = [n for n in names if n != "lm_head.weight" and not n.endswith(".lm_head.weight")]
        else:
            keep = [n for n in names if n not in targets]
        drop.update(n for n in names if n not in (keep or names[:1]))
    out: dict[str, Any] = {}
    seen: set[Any] = set()
    for name, value in weights.items():
        if name in drop:
            continue
        value = cast(value)
        key = storage_key(value)
        if key is not None and key in seen:
            value = value.clone() if hasattr(value, "clone") else value.copy()
        seen.add(key)
        out[name] = value
    return out


def _tied_targets(cfg: dict[str, Any] | None) -> set[str] | None:
    """The names the config's model class ties to another weight on load (and
    ``save_pretrained`` leaves out), from a skeleton built on the meta device (no
    memory, no weights, built-in classes only); None when that cannot be known."""
    if cfg is None or "model_type" not in cfg:
        return None
    try:
        import torch
        import transformers
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_config = transformers.AutoConfig.for_model(**cfg)
            with torch.device("meta"):
                model = transformers.AutoModelForCausalLM.from_config(hf_config)
    except Exception:  # not a causal LM transformers knows: fall back to the usual names
        return None
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return set(tied)  # {target: source} (transformers 5) or [target] (4)


def _peft_tensors(
    weights: Mapping[str, Any], config: Any, ckpt: Checkpoint, cast: Caster
) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors: dict[str, Any] = {}
    skipped: list[str] = []
    for name, value in weights.items():
        key = _peft.peft_key(name)
        if key is None:
            skipped.append(name)
        elif key in tensors:
            raise ValueError(f"to='peft': two tensors map to the PEFT key {key!r} (e.g. {name!r})")
        else:
            tensors[key] = cast(value)
    if not tensors:
        raise ValueError(
            f"to='peft': {ckpt.path} holds no LoRA tensors (names with lora_A / lora_B); "
            "to='hf' exports full weights"
        )
    if skipped:
        warnings.warn(
            f"to='peft': {len(skipped)} tensors that are not LoRA weights were left out "
            f"(e.g. {skipped[0]!r})",
            UserWarning,
            stacklevel=3,
        )
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    cfg = _peft.adapter_config(config, shapes, _saved_json(ckpt, ADAPTER_CONFIG))
    return tensors, cfg
