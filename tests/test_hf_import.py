"""``ckptio.import_checkpoint``: Hugging Face's own ``save_pretrained`` output (one file
and sharded, safetensors and ``.bin``), PEFT adapter directories, single files and
Tinker archives become verified ckptio checkpoints."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from _hf import load_clean, logits, tiny_gpt2, tiny_llama, torch

import ckptio


def _bin_dir(model: Any, d: Path, *, sharded: bool) -> None:
    """What transformers 4 wrote with safe_serialization=False (5 writes safetensors only)."""
    d.mkdir()
    model.config.save_pretrained(d)
    torch.save({"learning_rate": 1e-3}, d / "training_args.bin")  # what the Trainer leaves: not weights
    sd = model.state_dict()
    if not sharded:
        torch.save(sd, d / "pytorch_model.bin")
        return
    keys = list(sd)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    for file, names in halves.items():
        torch.save({k: sd[k] for k in names}, d / file)
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {k: f for f, names in halves.items() for k in names},
    }
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded"])
def test_save_pretrained_output_imports_equal_to_the_state_dict(tmp_path: Path, layout: str) -> None:
    model = tiny_gpt2()
    src = tmp_path / "hf"
    if layout.startswith("safetensors"):
        model.save_pretrained(src, max_shard_size="20KB" if layout.endswith("sharded") else "50GB")
        assert (src / "model.safetensors.index.json").exists() == layout.endswith("sharded")
    else:
        _bin_dir(model, src, sharded=layout.endswith("sharded"))
    out = ckptio.import_checkpoint(src, tmp_path / "ck")
    assert ckptio.verify(out) == []
    loaded = ckptio.load_state(out)
    sd = model.state_dict()
    expected = set(sd) - (
        {"lm_head.weight"} if layout.startswith("safetensors") else set()
    )  # HF drops the tied copy
    assert set(loaded) == expected
    for name in expected:
        assert torch.equal(loaded[name], sd[name]), name
    ckpt = ckptio.open(out)
    assert "config.json" in ckpt.side_files
    assert ckpt.metadata["imported_from"]["format"] == (
        "hf-safetensors" if layout.startswith("safetensors") else "hf-bin"
    )
    # The checkpoint is itself a Hugging Face model directory.
    assert torch.equal(logits(load_clean(out)), logits(model))


def test_peft_adapter_directory_stays_loadable_by_peft(tmp_path: Path) -> None:
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter")
    out = ckptio.import_checkpoint(tmp_path / "adapter", tmp_path / "ck")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "ckptio.json"]
    assert ckptio.verify(out) == [] and ckptio.open(out).metadata["imported_from"]["format"] == "peft"
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), out).eval()
    assert torch.equal(logits(loaded), logits(model.eval()))


def _tinker_dir(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    tensors = {
        "base_model.model.model.layers.0.attn.q_proj.lora_A.weight": torch.randn(4, 32),
        "base_model.model.model.layers.0.attn.q_proj.lora_B.weight": torch.randn(32, 4),
        "base_model.model.model.unembed_tokens.lora_A.weight": torch.randn(4, 32),
        "base_model.model.model.unembed_tokens.lora_B.weight": torch.randn(97, 4),
    }
    d = tmp_path / "tinker"
    d.mkdir()
    save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 32, "target_modules": "all-linear"})
    )
    (d / "checkpoint_complete").write_bytes(b"")
    return d, tensors


def _tar(src: Path, archive: Path, prefix: str = "", mode: str = "w") -> Path:
    with tarfile.open(archive, mode) as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=prefix + f.name)
    return archive


@pytest.mark.parametrize("form", ["directory", "tar", "tar.gz-with-top-directory"])
def test_tinker_archive(tmp_path: Path, form: str) -> None:
    d, tensors = _tinker_dir(tmp_path)
    src = {
        "directory": d,
        "tar": _tar(d, tmp_path / "ckpt.tar"),
        "tar.gz-with-top-directory": _tar(d, tmp_path / "ckpt.tar.gz", "sampler_weights-000100/", "w:gz"),
    }[form]
    before = set(tmp_path.iterdir())
    out = ckptio.import_checkpoint(src, tmp_path / "ck")
    assert set(tmp_path.iterdir()) == before | {out}  # the unpacked copy is gone
    ckpt = ckptio.open(out)
    assert ckpt.metadata["imported_from"]["format"] == "tinker" and ckpt.side_files == ["adapter_config.json"]
    assert ckpt.info(next(iter(tensors))).file == "adapter_model.safetensors"
    loaded = ckptio.load_state(out)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    # And on to PEFT, with Tinker's names mapped to Hugging Face's.
    adapter = ckptio.export(out, tmp_path / "peft", to="peft", key_map="tinker")
    keys = set(ckptio.load_state(adapter))
    assert "base_model.model.lm_head.lora_A.weight" in keys
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert json.loads((adapter / "adapter_config.json").read_text())["target_modules"] == "all-linear"


def test_single_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = {"a": torch.arange(4.0), "b": torch.ones(2, 2, dtype=torch.bfloat16)}
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save(weights, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        out = ckptio.import_checkpoint(tmp_path / name, tmp_path / f"ck-{name}", kind="state", dtype="fp32")
        ckpt = ckptio.open(out)
        assert ckpt.kind == "state" and ckpt.optimizer_state() is None
        loaded = ckptio.load_state(out, framework="torch")
        assert torch.equal(loaded["a"], weights["a"]) and loaded["b"].dtype == torch.float32


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickles_other_than_plain_tensors_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1), "evil": _Evil(marker)}, buf)
    (tmp_path / "evil.bin").write_bytes(buf.getvalue())
    with pytest.raises(ckptio.FormatError, match="weights_only"):
        ckptio.import_checkpoint(tmp_path / "evil.bin", tmp_path / "ck")
    assert not marker.exists()
    torch.save({"w": torch.ones(1), "epoch": 3}, tmp_path / "training.pt")
    with pytest.raises(ckptio.FormatError, match="flat state dict"):
        ckptio.import_checkpoint(tmp_path / "training.pt", tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_hostile_and_unsupported_directories(tmp_path: Path) -> None:
    model = tiny_gpt2()
    src = tmp_path / "hf"
    model.save_pretrained(src)
    outside = tmp_path / "secret.json"
    outside.write_text('{"token": "hunter2"}')
    (src / "tokenizer.json").symlink_to(outside)
    with pytest.warns(UserWarning, match=r"not kept: tokenizer\.json"):
        out = ckptio.import_checkpoint(src, tmp_path / "ck")
    assert "tokenizer.json" not in ckptio.open(out).side_files and not (out / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="already a ckptio checkpoint"):
        ckptio.import_checkpoint(out, tmp_path / "again")
    (out / "ckptio.json").unlink()  # damaged, not foreign: never imported unverified
    with pytest.raises(ckptio.CheckpointNotFoundError, match=r"manifest \(ckptio\.json\) is missing"):
        ckptio.import_checkpoint(out, tmp_path / "again")
    (src / "model.safetensors").rename(tmp_path / "moved.safetensors")
    (src / "model.safetensors").symlink_to(tmp_path / "moved.safetensors")
    with pytest.raises(ckptio.FormatError, match="symbolic link"):
        ckptio.import_checkpoint(src, tmp_path / "ck2")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no weights to import"):
        ckptio.import_checkpoint(empty, tmp_path / "ck3")
    with pytest.raises(ValueError, match="not an importable file"):
        ckptio.import_checkpoint(outside, tmp_path / "ck4")
    assert not any((tmp_path / n).exists() for n in ("ck2", "ck3", "ck4", "again"))


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def test_hostile_archives_are_refused_and_nothing_is_written_outside_dst(tmp_path: Path) -> None:
    d, _ = _tinker_dir(tmp_path)
    good = [(_member(p.name), p.read_bytes()) for p in sorted(d.iterdir())]
    work = tmp_path / "work"
    work.mkdir()
    absolute = str(tmp_path / "absolute-evil")
    cases: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes]], str]] = {
        "traversal": ([*good, (_member("../evil"), b"x")], "leaves the archive"),
        "deep-traversal": ([*good, (_member("a/../../evil"), b"x")], "leaves the archive"),
        "absolute": ([*good, (_member(absolute), b"x")], "absolute"),
        "symlink": ([*good, (_member("evil", tarfile.SYMTYPE, "/etc/passwd"), b"")], "symbolic link"),
        "symlink-over-weights": (
            [(_member("adapter_model.safetensors", tarfile.SYMTYPE, "../../secret"), b""), *good[1:]],
            "symbolic link",
        ),
        "hardlink": ([*good, (_member("evil", tarfile.LNKTYPE, "/etc/passwd"), b"")], "hard link"),
        "device": ([*good, (_member("evil", tarfile.CHRTYPE), b"")], "character device"),
        "fifo": ([*good, (_member("evil", tarfile.FIFOTYPE), b"")], "FIFO"),
        "nested": ([*good, (_member("sub/evil"), b"x")], "not a plain file"),
        "duplicate": ([*good, good[0]], "twice"),
        "hidden": ([*good, (_member(".evil"), b"x")], "not a plain file"),
        "too-big": ([*good, (_member("big.txt"), b"x" * 4096)], "max_archive_bytes"),
    }
    for name, (members, message) in cases.items():
        archive = _archive(work / f"{name}.tar", members)
        before = sorted(p.name for p in work.iterdir())
        limit = 4096 if name == "too-big" else 1 << 30
        with pytest.raises(ckptio.FormatError, match=message):
            ckptio.import_checkpoint(archive, work / "dst", max_archive_bytes=limit)
        assert sorted(p.name for p in work.iterdir()) == before, name  # no dst, no leftovers
        assert not (tmp_path / "evil").exists() and not (work.parent / "evil").exists()
        assert not Path(absolute).exists()
    assert ckptio.import_checkpoint(_archive(work / "good.tar", good), work / "dst").is_dir()


def test_cleanup_removes_what_a_dead_import_left(tmp_path: Path) -> None:
    """An import killed while unpacking leaves a staging-named directory beside dst."""
    import os

    from ckptio.hf.importer import _unpack_dir

    name = _unpack_dir(tmp_path / "ck").name.replace(f"-{os.getpid()}-", "-2147483646-")  # a dead pid
    leftover = tmp_path / name
    leftover.mkdir()
    (leftover / "adapter_model.safetensors").write_bytes(b"partial")
    assert ckptio.cleanup(tmp_path) == [leftover]
    assert list(tmp_path.iterdir()) == []
