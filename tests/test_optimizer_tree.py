"""The optimizer state tree round-trips exactly: types, key order, values bit for bit."""

from __future__ import annotations

import json
import math
import struct
from collections import OrderedDict

import numpy as np
import pytest

import ckptio


def _identical(a, b) -> bool:
    """Equality that also checks types, key order and float bits (nan, -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and a.tobytes() == b.tobytes()
    return a == b


def _round_trip(path, tree):
    ckptio.save_state(path, {"w": np.zeros(1)}, tree, overwrite=True)
    return ckptio.load_state_with_optimizer(path).optimizer_state


def test_seed_example_comes_back_identical(ckpt_path):
    seed = {
        "weight_happy": {"m": 0.004, "v": 0.00002},
        "weight_sad": {"m": -0.003, "v": 0.00001},
        "step": 1200,
    }
    back = _round_trip(ckpt_path, seed)
    assert back == seed and _identical(back, seed)


@pytest.mark.parametrize(
    "tree",
    [
        {"big": 2**200, "neg": -(2**70), "zero": 0},
        {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "negzero": -0.0, "tiny": 5e-324},
        {"payload_nan": struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000123))[0]},
        {"flags": [True, False, None], "text": "adamw ü", "empty": {}, "nil": []},
        {0: {"exp_avg": np.arange(3.0)}, 1: {"exp_avg": np.ones((2, 2), np.float32)}, "lr": 0.1},
        {"betas": (0.9, 0.999), "nested": ((1, 2), [3, (4,)]), "empty_tuple": ()},
        OrderedDict([("b", 1), ("a", 2)]),
        [np.float32(1.5), np.int64(7), np.bool_(True)],
        {"z": 1, "a": 2, "m": {"y": 3, "b": 4}},
        np.arange(4),
        3.25,
        None,
    ],
)
def test_trees_round_trip_exactly(ckpt_path, tree):
    back = _round_trip(ckpt_path, tree)
    assert _identical(back, tree), (back, tree)


def test_nan_payload_bits_are_kept(ckpt_path):
    weird = struct.unpack("<d", struct.pack("<Q", 0xFFF8DEADBEEF0001))[0]
    back = _round_trip(ckpt_path, {"x": weird})
    assert struct.pack("<d", back["x"]) == struct.pack("<d", weird)


def test_torch_style_adam_state_dict(ckpt_path):
    state = {
        "state": {0: {"step": np.array(10.0, np.float32), "exp_avg": np.ones(3), "exp_avg_sq": np.zeros(3)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "params": [0]}],
    }
    back = _round_trip(ckpt_path, state)
    assert _identical(back, state)
    assert isinstance(next(iter(back["state"])), int)


@pytest.mark.parametrize(
    ("tree", "where"),
    [
        ({"a": [1, {"b": object()}]}, "['a'][1]['b']"),
        ({"a": {1.5: 2}}, "['a']"),
        ({"a": b"bytes"}, "['a']"),
        ({"a": {"b": {1, 2}}}, "['a']['b']"),
        ({"a": np.array([object()], dtype=object)}, "object arrays"),
    ],
)
def test_unsupported_leaves_name_their_path(tmp_path, tree, where):
    path = tmp_path / "bad"
    with pytest.raises(TypeError) as info:
        ckptio.save_state(path, {"w": np.zeros(1)}, tree)
    assert where in str(info.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_too_deep_tree_is_refused_clearly(ckpt_path):
    tree: list = []
    for _ in range(40):
        tree = [tree]
    with pytest.raises(ValueError, match="nested deeper"):
        ckptio.save_state(ckpt_path, {}, tree)
    assert not ckpt_path.exists()


def test_shared_optimizer_arrays_are_stored_once_and_share_memory(ckpt_path):
    m = np.arange(6.0)
    ckptio.save_state(ckpt_path, {}, {"a": m, "b": m, "c": m.copy()})
    ck = ckptio.open(ckpt_path)
    assert len([t for t in ck.tensors if t.group == "optimizer"]) == 2
    back = ck.optimizer_state()
    assert np.shares_memory(back["a"], back["b"]) and not np.shares_memory(back["a"], back["c"])


def test_views_of_one_memory_that_differ_in_sign_are_stored_apart(ckpt_path):
    import torch

    c = torch.tensor([1 + 2j, 3 + 4j])
    tree = {"imag": c.imag, "conj_imag": c.conj().imag, "imag_again": c.imag}
    ckptio.save_state(ckpt_path, {}, tree)
    ck = ckptio.open(ckpt_path)
    assert len([t for t in ck.tensors if t.group == "optimizer"]) == 2  # a true tie: once
    back = ck.optimizer_state()
    assert back["imag"].tolist() == [2.0, 4.0]
    assert back["conj_imag"].tolist() == [-2.0, -4.0]
    assert back["imag_again"].data_ptr() == back["imag"].data_ptr()  # one stored tensor


HUGE = 10**10000  # over Python's int_max_str_digits (4,300): no decimal text for it


@pytest.mark.parametrize("sign", [1, -1], ids=["positive", "negative"])
def test_ints_of_any_size_round_trip_in_the_tree_and_as_step(ckpt_path, sign):
    big = sign * (HUGE + 12345)
    tree = {"big": big, "keys": {big: "int key", 7: "small key"}, "list": [big, -big, 1200]}
    ckptio.save_state(ckpt_path, {"w": np.zeros(1)}, tree, step=big)
    back = ckptio.load_state_with_optimizer(ckpt_path)
    assert _identical(back.optimizer_state, tree)
    assert back.step == big and ckptio.open(ckpt_path).step == big


def test_ints_keep_their_decimal_form_unless_too_big(ckpt_path):
    # Older readers parse decimal ints; only what they could never read is written in hex.
    ckptio.save_state(ckpt_path, {}, {"step": 1200, "big": 2**200, "huge": -(2**7000)}, step=1200)
    user = json.loads((ckpt_path / "ckptio.json").read_text())["manifest"]["user"]
    assert user["step"] == 1200
    nodes = dict((k, v) for k, v in user["optimizer"]["dict"])
    assert nodes["step"] == {"int": "1200"} and nodes["big"] == {"int": str(2**200)}
    assert nodes["huge"] == {"int": hex(-(2**7000))}


def test_sampler_checkpoint_has_no_optimizer_state(ckpt_path):
    ckptio.save_weights_for_sampler(ckpt_path, {"w": np.ones(2)})
    with pytest.raises(ckptio.CheckpointKindError, match="sampler"):
        ckptio.load_state_with_optimizer(ckpt_path)
    with pytest.raises(ValueError):
        ckptio.open(ckpt_path).optimizer_state()
    assert list(ckptio.load_state(ckpt_path)) == ["w"]
