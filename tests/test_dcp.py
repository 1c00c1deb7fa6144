"""``ckptio.torch.dcp`` in one process (``dcp.save``/``dcp.load`` with ``no_dist=True``):
quick checks of the round trip, the layout, overwrites, ``ckptio.open`` and pickling.
The distributed battery is tests/test_dcp_dist.py."""

from __future__ import annotations

import copy
import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _dcp import RANK_FILE, assert_same, expect_failure, raw, sentinel_tensor, unloaded_leaves

import ckptio
from ckptio.torch.dcp import Reader, Writer

RANK0 = RANK_FILE.format(0)  # the one rank's file

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def nested_state(version: int) -> dict[str, Any]:
    """Nested dicts of tensors of many dtypes (0-d, empty, special floats) and values."""
    g = torch.Generator().manual_seed(version)
    w = torch.randn(3, 4, generator=g)
    w.view(torch.int32)[0, :3] = torch.tensor([0x7FC00123, -0x80000000, 0x7F800000], dtype=torch.int32)
    return {
        "model": {
            "layers": {
                "0": {"w": w, "b": torch.randn(4, generator=g).to(torch.bfloat16)},
                "1": {
                    "w": torch.randn(2, 3, 2, generator=g).double(),
                    "b": torch.randn(3, generator=g).half(),
                },
            },
            "mask": torch.tensor([True, False, True]),
            "ids": torch.randint(-(1 << 40), 1 << 40, (5,), generator=g),
            "small": {
                "u8": torch.arange(7, dtype=torch.uint8),
                "i16": torch.arange(-3, 3, dtype=torch.int16),
            },
            "i32": torch.tensor([-(1 << 31), (1 << 31) - 1], dtype=torch.int32),
            "empty": torch.zeros(0, 3),
        },
        "optim": {
            "state": {"0": {"exp_avg": torch.randn(3, 4, generator=g), "step": torch.tensor(float(version))}},
            "param_groups": [
                {"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "name": "all", "amsgrad": False}
            ],
        },
        "extra": {
            "epoch": 7 + version,
            "big": 1 << 70,
            "neg_zero": -0.0,
            "nan": struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000123))[0],
            "tags": ["a", "b"],
            "none": None,
            "size": torch.Size([2, 5]),
        },
    }


def sentinel_like(state: dict[str, Any]) -> dict[str, Any]:
    """A load target shaped like ``state``: tensors of 0xAB bytes, values "UNLOADED"."""
    target = copy.deepcopy(state)

    def fill(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            return sentinel_tensor(node)
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        return node

    return unloaded_leaves(fill(target))


def save(state: dict[str, Any], path: Path, **kw: Any) -> None:
    dcp.save(state, storage_writer=Writer(path, **kw), no_dist=True)


def load(path: Path, like: dict[str, Any]) -> dict[str, Any]:
    target = sentinel_like(like)
    dcp.load(target, storage_reader=Reader(path), no_dist=True)
    return target


def test_round_trip_nested(ckpt_path):
    state = nested_state(1)
    save(state, ckpt_path)
    assert_same(load(ckpt_path, state), state, "state")


def test_layout(ckpt_path):
    """One process: ``ckptio.json`` and one rank file, kind "dcp"; nothing hidden left
    beside it; ``verify`` passes and lists no stray file."""
    save(nested_state(1), ckpt_path)
    assert sorted(p.name for p in ckpt_path.iterdir()) == ["ckptio.json", RANK0]
    manifest = json.loads((ckpt_path / "ckptio.json").read_text())["manifest"]
    assert manifest["kind"] == "dcp"
    assert [p.name for p in ckpt_path.parent.iterdir()] == [ckpt_path.name]
    assert ckptio.verify(ckpt_path) == []


def test_open_gives_tensors_and_shards(ckpt_path):
    state = nested_state(2)
    save(state, ckpt_path)
    ck = ckptio.open(ckpt_path)
    assert ck.kind == "dcp"
    assert "model.layers.0.w" in ck.names and "optim.state.0.step" in ck.names
    for name, want in [
        ("model.layers.0.w", state["model"]["layers"]["0"]["w"]),
        ("model.layers.0.b", state["model"]["layers"]["0"]["b"]),
        ("model.ids", state["model"]["ids"]),
        ("optim.state.0.step", state["optim"]["state"]["0"]["step"]),
    ]:
        assert tuple(ck.info(name).shape) == tuple(want.shape), name
        (shard,) = ck.shards(name)
        assert tuple(shard.offsets) == (0,) * want.dim() and tuple(shard.sizes) == tuple(want.shape), name
        assert shard.file == RANK0
        got = ck.tensor(name)
        assert got.dtype == want.dtype and raw(got) == raw(want), name
    with pytest.raises(KeyError):
        ck.tensor("model.nope")


def test_overwrite_needs_permission(ckpt_path):
    old, new = nested_state(1), nested_state(2)
    save(old, ckpt_path)
    with expect_failure(FileExistsError):
        save(new, ckpt_path)
    assert_same(load(ckpt_path, old), old, "old")
    save(new, ckpt_path, overwrite=True)
    assert_same(load(ckpt_path, new), new, "new")
    assert sorted(p.name for p in ckpt_path.parent.iterdir()) == [ckpt_path.name]  # nothing left over
    ckptio.verify(ckpt_path)


def test_missing_checkpoint(tmp_path):
    """DCP (2.15) keeps only the text of read_metadata's error (an AssertionError
    "metadata is None; global metadata read failed: ..."): it names the path."""
    path = tmp_path / "nope"
    with expect_failure() as caught:
        dcp.load({"w": torch.zeros(2)}, storage_reader=Reader(path), no_dist=True)
    assert str(path) in str(caught[0])


def test_async_save_round_trip(ckpt_path):
    """dcp.async_save (THREAD, one process): what is saved is the state as async_save
    returned, values' types included, although the state changes before the save ends."""
    state = nested_state(5)
    want = copy.deepcopy(state)
    future = dcp.async_save(state, storage_writer=Writer(ckpt_path), no_dist=True)
    state["model"]["layers"]["0"]["w"].fill_(0.5)
    state["extra"]["epoch"] = -1
    future.result(timeout=120)
    ckptio.verify(ckpt_path)
    assert_same(load(ckpt_path, want), want, "state")


def test_checkpoint_id_retargets(tmp_path):
    """``checkpoint_id=`` of dcp.save/dcp.load names the checkpoint, as with DCP's own."""
    state = nested_state(4)
    dcp.save(state, checkpoint_id=tmp_path / "b", storage_writer=Writer(tmp_path / "a"), no_dist=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    target = sentinel_like(state)
    dcp.load(target, checkpoint_id=tmp_path / "b", storage_reader=Reader(tmp_path / "a"), no_dist=True)
    assert_same(target, state, "state")


def test_writer_and_reader_pickle(ckpt_path):
    """Both survive pickling (DCP's PROCESS async mode sends the writer to its process),
    with their options, before and after use."""
    old, new = nested_state(1), nested_state(3)
    save(old, ckpt_path)
    writer = pickle.loads(pickle.dumps(Writer(ckpt_path, overwrite=True, durable=False, threads=2)))
    dcp.save(new, storage_writer=writer, no_dist=True)  # overwrite=True survived
    writer = pickle.loads(pickle.dumps(writer))
    dcp.save(old, storage_writer=writer, no_dist=True)
    reader = pickle.loads(pickle.dumps(Reader(ckpt_path)))
    target = sentinel_like(old)
    dcp.load(target, storage_reader=reader, no_dist=True)
    assert_same(target, old, "state")
    target = sentinel_like(old)
    dcp.load(target, storage_reader=pickle.loads(pickle.dumps(reader)), no_dist=True)
    assert_same(target, old, "state")


def test_cli_inspect(ckpt_path):
    save(nested_state(1), ckpt_path)
    r = subprocess.run(
        [sys.executable, "-m", "ckptio.cli", "inspect", str(ckpt_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "dcp" in r.stdout
    for name in ("model.layers.0.w", "model.layers.1.b", "optim.state.0.exp_avg"):
        assert name in r.stdout, r.stdout
