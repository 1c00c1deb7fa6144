"""``ckptio.export(..., to="hf")``: the model weights of a sampler or state checkpoint
load with ``from_pretrained``, with no key warnings and bitwise-equal logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _hf import (
    MODELS,
    hf_reference,
    load_clean,
    logits,
    tiny_gpt2,
    tiny_llama,
    torch,
    train_steps,
    transformers,
    transformers_log,
)
from safetensors import safe_open

import ckptio
import ckptio.torch


def _keys(path: Path) -> set[str]:
    keys: set[str] = set()
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            keys.update(st.keys())
    return keys


@pytest.mark.parametrize("dtype", [None, "bf16"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sampler_export_loads_clean_with_equal_logits(tmp_path: Path, arch: str, dtype: str | None) -> None:
    model = MODELS[arch]()
    ckpt = ckptio.torch.save_weights_for_sampler(tmp_path / "sampler", model)
    out = ckptio.export(ckpt, tmp_path / "hf", to="hf", config=model.config, dtype=dtype)
    assert ckptio.verify(out) == []
    reference = hf_reference(model, dtype and torch.bfloat16, tmp_path / "reference")
    loaded = load_clean(out)
    assert loaded.dtype == reference.dtype
    assert torch.equal(logits(loaded), logits(reference))
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype") == (model.config.dtype if dtype is None else "bfloat16")
    if arch == "gpt2":  # tied: stored once, under the name the model class loads
        assert "transformer.wte.weight" in _keys(out) and "lm_head.weight" not in _keys(out)
        assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    else:
        assert {"lm_head.weight", "model.embed_tokens.weight"} <= _keys(out)


def test_sharded_state_checkpoint_trained_with_adamw(tmp_path: Path) -> None:
    for make in (tiny_gpt2, tiny_llama):
        model = make()
        opt = train_steps(model)
        state = ckptio.torch.save_state(tmp_path / make.__name__, model, opt, step=2, max_shard_bytes=16_000)
        assert len(list(state.glob("optimizer-*.safetensors"))) > 1
        expected = {k for k in model.state_dict() if k not in model.all_tied_weights_keys}
        for shard, dtype in ((None, None), (20_000, "bf16")):
            out = ckptio.export(
                state,
                tmp_path / f"{make.__name__}-{dtype}",
                config=model.config,
                max_shard_bytes=shard,
                dtype=dtype,
            )
            assert _keys(out) == expected  # the weights only: no optimizer or RNG tensors
            assert (out / "model.safetensors.index.json").is_file() == (shard is not None)
            assert "optimizer.safetensors" not in {p.name for p in out.iterdir()}
            reference = hf_reference(model, dtype and torch.bfloat16, tmp_path / f"{make.__name__}-ref")
            assert torch.equal(logits(load_clean(out)), logits(reference))
            assert ckptio.verify(out) == []


def test_tinker_names_export_with_the_preset(tmp_path: Path) -> None:
    model = tiny_llama()
    tinker = {
        k.replace("lm_head", "model.unembed_tokens").replace(".self_attn.", ".attn."): v
        for k, v in model.state_dict().items()
    }
    assert "model.unembed_tokens.weight" in tinker and any(".attn." in k for k in tinker)
    ckpt = ckptio.save_weights_for_sampler(
        tmp_path / "tinker", tinker, extra_files={"config.json": model.config.to_dict()}
    )
    out = ckptio.export(ckpt, tmp_path / "hf", to="hf", key_map="tinker")  # config.json from the checkpoint
    assert torch.equal(logits(load_clean(out)), logits(model))
    with pytest.raises(AssertionError):  # without the preset the names do not fit, and the check sees it
        load_clean(ckptio.export(ckpt, tmp_path / "raw", to="hf"))


def test_side_files_are_carried_and_config_replaced(tmp_path: Path) -> None:
    model = tiny_gpt2()
    extra = {"config.json": {"model_type": "gpt2"}, "tokenizer_config.json": {"model_max_length": 32}}
    ckpt = ckptio.torch.save_weights_for_sampler(tmp_path / "ck", model, extra_files=extra)
    out = ckptio.export(ckpt, tmp_path / "hf", to="hf", config=model.config)
    assert ckptio.open(out).side_files == ["tokenizer_config.json", "config.json"]
    assert json.loads((out / "config.json").read_text())["n_embd"] == 32
    with pytest.warns(UserWarning, match="no config"):
        bare = ckptio.export(ckptio.torch.save_weights_for_sampler(tmp_path / "b", model), tmp_path / "bare")
    assert not (bare / "config.json").exists()


def test_export_is_atomic_and_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    model = tiny_gpt2()
    ckpt = ckptio.torch.save_weights_for_sampler(tmp_path / "ck", model)
    out = ckptio.export(ckpt, tmp_path / "hf", config=model.config)
    before = (out / "ckptio.json").read_bytes()
    with pytest.raises(ckptio.CheckpointExistsError):
        ckptio.export(ckpt, out, config=model.config)
    assert (out / "ckptio.json").read_bytes() == before
    for bad, error in [
        ({"to": "onnx"}, ValueError),
        ({"dtype": "int8"}, ValueError),
        ({"key_map": "nope"}, ValueError),
        ({"key_map": lambda n: "same"}, ValueError),
        ({"to": "peft"}, ValueError),  # no LoRA tensors
        ({"config": tmp_path / "missing.json"}, FileNotFoundError),
    ]:
        with pytest.raises(error):
            ckptio.export(ckpt, tmp_path / "bad", **bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "hf"]
    out2 = ckptio.export(ckpt, out, config=model.config, dtype="fp16", overwrite=True)
    assert torch.equal(logits(load_clean(out2)), logits(model.half()))


def test_log_capture_sees_a_missing_key(tmp_path: Path) -> None:
    """The clean-load check can fail: a checkpoint missing one weight is reported."""
    model = tiny_llama()
    weights = {k: v for k, v in model.state_dict().items() if k != "model.norm.weight"}
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "ck", weights)
    out = ckptio.export(ckpt, tmp_path / "hf", config=model.config)
    with transformers_log() as log:
        transformers.AutoModelForCausalLM.from_pretrained(out)
    assert any("MISSING" in m for m in log), log
    with pytest.raises(AssertionError):
        load_clean(out)
