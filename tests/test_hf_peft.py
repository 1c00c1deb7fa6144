"""``ckptio.export(..., to="peft")``: a LoRA adapter saved from
``get_peft_model_state_dict`` loads with ``PeftModel.from_pretrained`` with identical
outputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
from _hf import logits, tiny_gpt2, tiny_llama, torch, transformers_log

import ckptio


def _trained_adapter(make: Any, targets: list[str], r: int = 4) -> tuple[Any, Any]:
    """A PEFT model whose LoRA weights are random (so they change the outputs)."""
    config = peft.LoraConfig(r=r, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
    model = peft.get_peft_model(make(), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    return model.eval(), config


def _load(make: Any, path: Path) -> Any:
    """PeftModel.from_pretrained on a fresh base, with no warning about keys."""
    with warnings.catch_warnings(record=True) as caught, transformers_log() as log:
        warnings.simplefilter("always")
        loaded = peft.PeftModel.from_pretrained(make(), path).eval()
    noisy = [str(w.message) for w in caught if "key" in str(w.message).lower()] + log
    assert not noisy, noisy
    return loaded


@pytest.mark.parametrize("how", ["LoraConfig", "dict-infers-r-and-targets", "saved-with-checkpoint"])
def test_peft_export_loads_with_identical_outputs(tmp_path: Path, how: str) -> None:
    model, config = _trained_adapter(tiny_llama, ["q_proj", "v_proj"])
    adapter = peft.get_peft_model_state_dict(model)
    assert all(k.startswith("base_model.model.") and ".lora_" in k for k in adapter)
    extra = {"adapter_config.json": {"lora_alpha": 16}} if how == "saved-with-checkpoint" else None
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "lora", adapter, extra_files=extra)
    cfg = {"LoraConfig": config, "dict-infers-r-and-targets": {"lora_alpha": 16}}.get(how)
    out = ckptio.export(ckpt, tmp_path / "adapter", to="peft", config=cfg)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "ckptio.json",
    ]
    written = json.loads((out / "adapter_config.json").read_text())
    assert (written["r"], sorted(written["target_modules"]), written["lora_alpha"]) == (
        4,
        ["q_proj", "v_proj"],
        16,
    )
    assert ckptio.verify(out) == []
    loaded = _load(tiny_llama, out)
    assert torch.equal(logits(loaded), logits(model))
    assert not torch.equal(logits(loaded), logits(tiny_llama()))  # the adapter does something


def test_peft_state_dict_names_and_tinker_names(tmp_path: Path) -> None:
    """PeftModel.state_dict() names (lora_A.default.weight, with the base weights) and
    Tinker's names (unembed_tokens, .attn.) both export to what PEFT loads."""
    model, _ = _trained_adapter(tiny_llama, ["q_proj", "v_proj", "lm_head"])
    full = model.state_dict()  # base weights too, adapter name in the LoRA keys
    assert any(".lora_A.default." in k for k in full)
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "full", full)
    with pytest.warns(UserWarning, match="not LoRA weights were left out"):
        out = ckptio.export(ckpt, tmp_path / "a", to="peft", config={"lora_alpha": 16})
    assert torch.equal(logits(_load(tiny_llama, out)), logits(model))

    tinker = {
        k.replace("base_model.model.lm_head", "base_model.model.model.unembed_tokens").replace(
            ".self_attn.", ".attn."
        ): v
        for k, v in peft.get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }
    assert any("unembed_tokens" in k for k in tinker)
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "tinker", tinker)
    out = ckptio.export(ckpt, tmp_path / "b", to="peft", config={"lora_alpha": 16}, key_map="tinker")
    assert sorted(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == [
        "lm_head",
        "q_proj",
        "v_proj",
    ]
    assert torch.equal(logits(_load(tiny_llama, out)), logits(model))


def test_gpt2_adapter_and_dtype(tmp_path: Path) -> None:
    model, config = _trained_adapter(tiny_gpt2, ["c_attn"], r=2)
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "lora", peft.get_peft_model_state_dict(model))
    out = ckptio.export(ckpt, tmp_path / "adapter", to="peft", config=config, dtype="bf16")
    loaded = ckptio.load_state(out)
    assert {t.dtype for t in loaded.values()} == {torch.bfloat16}
    assert all(
        torch.equal(loaded[k], v.to(torch.bfloat16)) for k, v in peft.get_peft_model_state_dict(model).items()
    )


def test_config_that_contradicts_the_tensors_is_refused(tmp_path: Path) -> None:
    model, _ = _trained_adapter(tiny_llama, ["q_proj", "v_proj"])
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "lora", peft.get_peft_model_state_dict(model))
    with pytest.raises(ValueError, match="rank 4"):  # LoraConfig's default r=8
        ckptio.export(ckpt, tmp_path / "x", to="peft", config=peft.LoraConfig(lora_alpha=16))
    with pytest.raises(ValueError, match="do not cover"):
        ckptio.export(
            ckpt, tmp_path / "x", to="peft", config={"lora_alpha": 16, "target_modules": ["q_proj"]}
        )
    with pytest.raises(ValueError, match="max_shard_bytes"):
        ckptio.export(ckpt, tmp_path / "x", to="peft", config={"lora_alpha": 16}, max_shard_bytes=100)
    with pytest.warns(UserWarning, match="lora_alpha"):
        ckptio.export(ckpt, tmp_path / "y", to="peft")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora", "y"]
