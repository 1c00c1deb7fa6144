"""Side files (``extra_files=``): saved whole with the tensors, checksummed, committed
atomically; a file the manifest names is checked, a file dropped in later is reported
as not covered, never as corruption."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.cli import main

CONFIG = {"model_type": "gpt2", "n_embd": 8, "vocab_size": 11}


def _weights() -> dict[str, np.ndarray]:
    return {"wte.weight": np.arange(88, dtype=np.float32).reshape(11, 8)}


def test_every_value_type_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "merges.txt"
    src.write_bytes(b"#version: 0.2\na b\n")
    path = ckptio.save_weights_for_sampler(
        tmp_path / "ck",
        _weights(),
        extra_files={
            "config.json": CONFIG,
            "tokenizer.json": b'{"version": "1.0"}',
            "README.md": "# tiny model\n",
            "merges.txt": src,
        },
    )
    ckpt = ckptio.open(path)
    assert ckpt.side_files == ["config.json", "tokenizer.json", "README.md", "merges.txt"]
    assert json.loads(ckpt.read_side_file("config.json")) == CONFIG
    assert ckpt.read_side_file("tokenizer.json") == b'{"version": "1.0"}'
    assert ckpt.read_side_file("README.md") == b"# tiny model\n"
    assert ckpt.read_side_file("merges.txt") == src.read_bytes()
    assert (path / "config.json").read_bytes() == ckpt.read_side_file("config.json")  # plain files
    assert ckptio.verify(path) == []
    manifest = json.loads((path / "ckptio.json").read_text())["manifest"]
    roles = {f["name"]: f["role"] for f in manifest["files"]}
    assert roles["config.json"] == "side" and roles["model.safetensors"] == "tensors"
    with pytest.raises(KeyError, match="no side file"):
        ckpt.read_side_file("vocab.json")


def test_state_async_and_torch_helpers_take_extra_files(tmp_path: Path) -> None:
    import torch

    import ckptio.torch

    extra = {"config.json": CONFIG}
    paths = [
        ckptio.save_state(tmp_path / "a", _weights(), {"step": 1}, extra_files=extra),
        ckptio.save_state_async(tmp_path / "b", _weights(), {"step": 1}, extra_files=extra).result(),
        ckptio.save_weights_for_sampler_async(tmp_path / "c", _weights(), extra_files=extra).result(),
    ]
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    paths += [
        ckptio.torch.save_state(tmp_path / "d", model, opt, extra_files=extra),
        ckptio.torch.save_state_async(tmp_path / "e", model, opt, extra_files=extra).result(),
        ckptio.torch.save_weights_for_sampler(tmp_path / "f", model, extra_files=extra),
    ]
    for p in paths:
        assert ckptio.open(p).side_files == ["config.json"], p
        assert ckptio.verify(p) == []


def test_damaged_swapped_or_missing_side_file_is_corruption(tmp_path: Path) -> None:
    path = ckptio.save_weights_for_sampler(tmp_path / "ck", _weights(), extra_files={"config.json": CONFIG})
    config = path / "config.json"
    pristine = config.read_bytes()
    same_size = b"x" * len(pristine)
    twin = ckptio.save_weights_for_sampler(
        tmp_path / "twin", _weights(), extra_files={"config.json": same_size}
    )
    # Every byte flipped, one at a time.
    for i in range(len(pristine)):
        damaged = bytearray(pristine)
        damaged[i] ^= 0x01
        config.write_bytes(bytes(damaged))
        with pytest.raises(ckptio.CorruptCheckpointError) as info:
            ckptio.verify(path)
        assert Path(info.value.file).name == "config.json", i
    # Truncated, grown, swapped in from another checkpoint, missing.
    for bad in (pristine[:-1], pristine + b" ", (twin / "config.json").read_bytes()):
        config.write_bytes(bad)
        with pytest.raises(ckptio.CorruptCheckpointError, match=r"config\.json"):
            ckptio.verify(path)
    config.unlink()
    with pytest.raises(ckptio.CorruptCheckpointError, match="missing"):
        ckptio.verify(path)
    with pytest.raises(ckptio.CorruptCheckpointError):
        ckptio.open(path).read_side_file("config.json")
    config.write_bytes(pristine)
    assert ckptio.verify(path) == []


def test_side_file_replaced_by_symlink_or_directory_is_refused(tmp_path: Path) -> None:
    path = ckptio.save_weights_for_sampler(tmp_path / "ck", _weights(), extra_files={"config.json": CONFIG})
    outside = tmp_path / "outside.json"
    shutil.copyfile(path / "config.json", outside)
    (path / "config.json").unlink()
    os.symlink(outside, path / "config.json")
    with pytest.raises(ckptio.FormatError, match="symbolic link"):
        ckptio.verify(path)
    (path / "config.json").unlink()
    (path / "config.json").mkdir()
    with pytest.raises(ckptio.FormatError, match="not a regular file"):
        ckptio.verify(path)


def test_dropped_in_config_does_not_fail_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ckptio.save_weights_for_sampler(tmp_path / "ck", _weights())
    (path / "config.json").write_text(json.dumps(CONFIG))
    assert ckptio.verify(path) == ["config.json"]
    assert ckptio.open(path).side_files == []
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "config.json: not covered by checksums" in out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../config.json", "plain file name"),
        ("/etc/passwd", "plain file name"),
        ("sub/config.json", "plain file name"),
        (".env", "plain file name"),
        ("", "plain file name"),
        ("ckptio.json", "reserved"),
        ("model.safetensors", "reserved"),
        ("adapter_model.safetensors", "reserved"),
        ("model.safetensors.index.json", "reserved"),
    ],
)
def test_bad_names_are_refused_before_anything_is_written(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ckptio.save_weights_for_sampler(tmp_path / "ck", _weights(), extra_files={name: b"{}"})
    assert list(tmp_path.iterdir()) == []


def test_bad_values_are_refused_naming_the_file(tmp_path: Path) -> None:
    cases = [
        ({"config.json": 3}, TypeError, "config.json"),
        ({"config.json": {"x": float("nan")}}, ValueError, "config.json"),
        ({"config.json": {"x": object()}}, TypeError, "config.json"),
        ({"config.json": tmp_path / "missing.json"}, FileNotFoundError, "missing.json"),
        ({"config.json": tmp_path}, (IsADirectoryError, ValueError), None),
        (["config.json"], TypeError, "mapping"),
    ]
    for extra, error, message in cases:
        with pytest.raises(error, match=message):
            ckptio.save_weights_for_sampler(tmp_path / "ck", _weights(), extra_files=extra)  # type: ignore[arg-type]
    # The core checks names too, whatever the Python layer let through.
    from ckptio import _core

    with pytest.raises(ValueError, match="not allowed"):
        _core.save(str(tmp_path / "ck"), "sampler", [], "{}", _core.SaveOptions(), side_files=[("../x", b"")])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_async_save_reads_extra_files_at_the_call(tmp_path: Path) -> None:
    src = tmp_path / "config.json"
    src.write_text('{"v": 1}')
    fut = ckptio.save_weights_for_sampler_async(tmp_path / "ck", _weights(), extra_files={"config.json": src})
    src.write_text('{"v": 2}')
    assert ckptio.open(fut.result()).read_side_file("config.json") == b'{"v": 1}'
