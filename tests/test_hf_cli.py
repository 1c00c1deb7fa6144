"""``ckptio export`` and ``ckptio import``: help, the round trip, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from _hf import hf_reference, load_clean, logits, tiny_gpt2, tiny_llama, torch

import ckptio
import ckptio.torch
from ckptio.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckptio.cli", *args], capture_output=True, text=True)


def test_help() -> None:
    top = _run("--help")
    assert top.returncode == 0 and "export" in top.stdout and "import" in top.stdout
    export = _run("export", "--help")
    assert export.returncode == 0
    for flag in ("--to", "{hf,peft}", "--config", "--dtype", "--max-shard-size", "--key-map", "examples"):
        assert flag in export.stdout, flag
    imp = _run("import", "--help")
    assert imp.returncode == 0 and "weights_only=True" in imp.stdout and "--kind" in imp.stdout


def test_export_and_import_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_gpt2()
    ckpt = ckptio.torch.save_weights_for_sampler(tmp_path / "ck", model)
    config = tmp_path / "config.json"
    config.write_text(model.config.to_json_string())
    hf = tmp_path / "hf"
    args = ["export", str(ckpt), "--to", "hf", str(hf), "--config", str(config), "--dtype", "bf16"]
    assert main([*args, "--max-shard-size", "20KB"]) == 0
    assert "exported" in capsys.readouterr().out
    assert len(list(hf.glob("model-*.safetensors"))) > 1
    loaded = load_clean(hf)
    assert torch.equal(logits(loaded), logits(hf_reference(model, torch.bfloat16, tmp_path / "ref")))

    loaded.save_pretrained(tmp_path / "saved")  # Hugging Face's own layout
    assert main(["import", str(tmp_path / "saved"), str(tmp_path / "back")]) == 0
    assert "imported" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "back")]) == 0
    assert "ok" in capsys.readouterr().out


def test_peft_export_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"]))
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "lora", peft.get_peft_model_state_dict(model))
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps({"lora_alpha": 8}))
    assert main(["export", str(ckpt), "--to", "peft", str(tmp_path / "adapter"), "--config", str(cfg)]) == 0
    assert "adapter_model.safetensors" in capsys.readouterr().out
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 2


def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = ckptio.save_weights_for_sampler(tmp_path / "ck", {"w": torch.ones(2)})
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info)
    cases = [
        (["export", str(tmp_path / "missing"), "--to", "hf", str(tmp_path / "x")], "no checkpoint"),
        (["export", str(ckpt), "--to", "peft", str(tmp_path / "x")], "no LoRA tensors"),
        (["export", str(ckpt), "--to", "hf", str(ckpt)], "already exists"),
        (["export", str(ckpt), "--to", "hf", str(tmp_path / "x"), "--dtype", "int4"], "dtype"),
        (["import", str(evil), str(tmp_path / "x")], "archive refused"),
        (["import", str(ckpt), str(tmp_path / "x")], "already a ckptio checkpoint"),
        (["import", str(evil), str(tmp_path / "no" / "x")], "parent directory"),
        (["import", str(evil), str(ckpt)], "already exists"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"ckptio {argv[0]}: ") and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "evil.tar"]
    for argv, message in [
        (["export", str(ckpt), "--to", "onnx", "x"], "invalid choice"),
        (["export", str(ckpt), "x"], "--to"),
        (["export", str(ckpt), "--to", "hf", "x", "--max-shard-size", "lots"], "size"),
        (["import", str(ckpt)], "DST"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
    out = _run("export", str(tmp_path / "missing"), "--to", "hf", str(tmp_path / "x"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "no checkpoint" in out.stderr


def test_readme_section_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Hugging Face and PEFT example, with tiny models in place of yours."""
    import re

    import peft

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Hugging Face and PEFT") : readme.index("## Distributed checkpoints")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpts").mkdir()
    tiny_llama(seed=5).save_pretrained(tmp_path / "downloaded-model")
    peft_model = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    scope = {"model": tiny_gpt2(), "peft_model": peft_model.eval(), "base_model": tiny_llama()}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.equal(
        logits(scope["hf_model"]), logits(hf_reference(scope["model"], torch.bfloat16, tmp_path / "r"))
    )
    assert torch.equal(logits(scope["adapted"].eval()), logits(peft_model))
    assert set(scope["weights"]) == set(tiny_llama().state_dict())
