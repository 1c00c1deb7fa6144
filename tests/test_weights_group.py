"""The weights may be stored under another file stem than ``model`` (a PEFT adapter's
``adapter_model.safetensors``); the manifest says which, and every reader still finds
them as the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _faults import read_manifest, write_manifest

import ckptio
from ckptio._plan import SavePlan, save_options


def _save(path: Path, kind: str = "sampler", *, extra_files: Any = None, **kw: Any) -> Path:
    weights = {
        "a.lora_A.weight": np.ones((2, 3), np.float32),
        "a.lora_B.weight": np.zeros((4, 2), np.float32),
    }
    weights["tied"] = weights["a.lora_A.weight"]
    opt = {"m": np.arange(3.0)} if kind == "state" else None
    plan = SavePlan(
        path,
        kind,
        weights,
        opt,
        options=save_options(**kw),
        extra_files=extra_files,
        weights_group="adapter_model",
    )
    return Path(plan.write())


@pytest.mark.parametrize("kind", ["sampler", "state"])
def test_other_stem_opens_as_the_weights(tmp_path: Path, kind: str) -> None:
    path = _save(tmp_path / "ck", kind, extra_files={"adapter_config.json": {"r": 2}})
    names = sorted(p.name for p in path.iterdir())
    expected = ["adapter_config.json", "adapter_model.safetensors", "ckptio.json"]
    assert names == sorted(expected + (["optimizer.safetensors"] if kind == "state" else []))
    ckpt = ckptio.open(path)
    assert ckpt.names == ["a.lora_A.weight", "a.lora_B.weight", "tied"]
    info = ckpt.info("a.lora_B.weight")
    assert (info.group, info.file) == ("model", "adapter_model.safetensors")
    assert ckpt.info("tied").file == "adapter_model.safetensors"
    loaded = ckptio.load_state(path, copy=True)
    assert loaded["tied"] is loaded["a.lora_A.weight"] and loaded["tied"].sum() == 6
    assert ckptio.verify(path) == []
    if kind == "state":
        assert ckptio.load_state_with_optimizer(path).optimizer_state["m"].tolist() == [0, 1, 2]


def test_sharded_other_stem(tmp_path: Path) -> None:
    path = _save(tmp_path / "ck", max_shard_bytes=16)
    assert (path / "adapter_model.safetensors.index.json").is_file()
    assert sorted(ckptio.load_state(path)) == ["a.lora_A.weight", "a.lora_B.weight", "tied"]


def test_weights_group_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="optimizer"):
        SavePlan(tmp_path / "x", "sampler", {"w": np.ones(1)}, weights_group="optimizer")
    with pytest.raises(ValueError, match="group"):
        SavePlan(tmp_path / "x", "sampler", {"w": np.ones(1)}, weights_group="Bad/Name").write()
    assert list(tmp_path.iterdir()) == []
    # A manifest naming no group, or one that is not the weights', is refused.
    path = _save(tmp_path / "ck")
    for bad in (3, "optimizer"):
        m = read_manifest(path)
        m["user"]["weights_group"] = bad
        write_manifest(path, m)
        with pytest.raises(ckptio.FormatError, match="weights_group"):
            ckptio.open(path)
    m = read_manifest(path)
    m["user"]["weights_group"] = "other"  # the adapter_model tensors are then a second group
    for t in m["tensors"]:
        t["group"] = "model" if t["name"] == "a.lora_B.weight" else t["group"]
    write_manifest(path, m)
    with pytest.raises(ckptio.FormatError):
        ckptio.open(path)
