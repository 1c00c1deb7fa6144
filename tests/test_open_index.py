"""The open index lives in the core and the user section is parsed per key on first
use (docs/ENGINE.md, "Open"): its answers must equal an index built eagerly from the
manifest, and a bad manifest must still be refused at open, not at first use."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _faults import read_manifest, resign, write_manifest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptio
from ckptio._plan import SavePlan, save_options
from ckptio.errors import FormatError

_DTYPES = [np.float32, np.float64, np.int8, np.uint16, np.int64, np.bool_]
_names = st.text(alphabet="abcxyz.0_/é", min_size=1, max_size=8)
_arrays = st.tuples(
    st.sampled_from(_DTYPES), st.lists(st.integers(0, 3), max_size=3), st.integers(0, 2**31)
).map(lambda t: np.random.default_rng(t[2]).integers(0, 2, size=t[1]).astype(t[0]))


def _eager_index(path: Path) -> dict[tuple[str, str], tuple[str, tuple[int, ...], int, str]]:
    """(group, name) -> (dtype, shape, nbytes, file), straight from the manifest."""
    m = read_manifest(path)
    weights_group = m["user"].get("weights_group", "model")
    out = {}
    for t in m["tensors"]:
        group = "model" if t["group"] == weights_group else t["group"]
        b, e = t["byte_range"]
        out[(group, t["name"])] = (t["dtype"], tuple(t["shape"]), e - b, t["file"])
    return out


@settings(max_examples=40, deadline=None)
@given(
    weights=st.dictionaries(_names, _arrays, min_size=1, max_size=12),
    moments=st.dictionaries(_names, _arrays, max_size=12),
    peft=st.booleans(),
)
def test_lazy_index_answers_equal_the_manifest(
    weights: dict[str, np.ndarray], moments: dict[str, np.ndarray], peft: bool
) -> None:
    path = Path(tempfile.mkdtemp()) / "ck"
    if peft:
        SavePlan(
            path, "sampler", weights, None, options=save_options(), weights_group="adapter_model"
        ).write()
    else:
        ckptio.save_state(path, weights, {"m": moments, "step": 3}, step=3)
    eager = _eager_index(path)
    with ckptio.open(path) as ckpt:
        assert ckpt.names == list(weights)
        assert list(ckpt) == list(weights) and len(ckpt) == len(weights)
        got = {(t.group, t.name): (t.dtype, t.shape, t.nbytes, t.file) for t in ckpt.tensors}
        assert got == eager
        for (group, name), (dtype, shape, nbytes, file) in eager.items():
            info = ckpt.info(name, group)
            assert (info.name, info.group, info.dtype, info.shape, info.nbytes, info.file) == (
                name,
                group,
                dtype,
                shape,
                nbytes,
                file,
            )
        for name, value in weights.items():
            assert name in ckpt
            np.testing.assert_array_equal(ckpt[name], value)
            assert ckpt[name].dtype == value.dtype
        for absent in ["", "nope\x00", *(n + "~" for n in weights)]:
            assert absent not in ckpt
            with pytest.raises(KeyError):
                ckpt.info(absent)
        assert 0 not in ckpt  # not a name at all
        if peft:  # the stored stem is not a public group name
            with pytest.raises(KeyError):
                ckpt.info(next(iter(weights)), "adapter_model")
        else:
            opt = ckpt.optimizer_state()
            assert opt["step"] == 3 and set(opt["m"]) == set(moments)
            for k, v in moments.items():
                np.testing.assert_array_equal(opt["m"][k], v)


def _saved() -> Path:
    path = Path(tempfile.mkdtemp()) / "ck"
    ckptio.save_state(path, {"a": np.ones(2, np.float32), "b": np.zeros(3)}, {"m": np.ones(1)}, step=1)
    return path


def _edit_user(path: Path, user: Any) -> None:
    m = read_manifest(path)
    m["user"] = user
    resign(path, m)


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ([1, 2], "invalid user section"),
        ("text", "invalid user section"),
        ({"weights_group": "optimizer"}, "invalid weights_group"),
        ({"weights_group": 7}, "invalid weights_group"),
        ({"aliases": [["c", "a"]], "order": ["a", "b"]}, "aliases/order disagree"),
        ({"aliases": [["a", "b"]], "order": ["a", "b"]}, "aliases/order disagree"),
        ({"aliases": [["c", "zz"]], "order": ["a", "b", "c"]}, "aliases/order disagree"),
        ({"order": ["a"]}, "aliases/order disagree"),
        ({"aliases": 5}, "invalid aliases"),
    ],
)
def test_bad_user_sections_are_refused_at_open(user: Any, message: str) -> None:
    path = _saved()
    _edit_user(path, user)
    with pytest.raises(FormatError, match=message):
        ckptio.open(path)


def test_repeated_user_key_keeps_the_last_like_json() -> None:
    """A hand-written manifest may repeat a key; Python's json keeps the last, and so
    does the per-key reader."""
    path = _saved()
    body = json.dumps({**read_manifest(path), "user": {"step": 1}}).encode()
    assert body.endswith(b'"user": {"step": 1}}')
    write_manifest(path, None, body=body[: -len(b"}}")] + b', "step": 9}}')
    assert ckptio.open(path).step == 9


def test_header_in_another_order_than_the_manifest_still_opens() -> None:
    """The index matches records at each header's cursor, falling back to a lookup by
    name: a header listing the tensors in another order is still the same file."""
    path = _saved()
    f = path / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    flipped = dict(reversed(list(header.items())))
    text = json.dumps(flipped, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    f.write_bytes(raw[:8] + text + raw[8 + n :])
    resign(path)
    with ckptio.open(path) as ckpt:
        assert ckpt.names == ["a", "b"]
        np.testing.assert_array_equal(ckpt["b"], np.zeros(3))
    ckptio.verify(path)


def test_header_in_another_layout_takes_the_general_road_to_the_same_tensors() -> None:
    """open checks a header exactly as ckptio writes it against the manifest without
    parsing it; a header another tool laid out (indented, keys sorted, so of another
    length) is parsed and matched instead, and gives the same tensors and bytes."""
    path = _saved()
    with ckptio.open(path) as ckpt:
        before = {name: np.array(ckpt[name]) for name in ckpt.names}
    f = path / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    text = json.dumps(json.loads(raw[8 : 8 + n]), indent=2, sort_keys=True).encode()
    text += b" " * (-(8 + len(text)) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    manifest = read_manifest(path)
    for rec in manifest["tensors"]:
        if rec["file"] == "model.safetensors":
            rec["byte_range"] = [b - n + len(text) for b in rec["byte_range"]]
    resign(path, manifest)
    with ckptio.open(path) as ckpt:
        assert ckpt.names == list(before)
        for name, array in before.items():
            np.testing.assert_array_equal(ckpt[name], array)
    ckptio.verify(path)
    # The same edit without moving the manifest's ranges: refused, naming the tensor.
    manifest["tensors"][0]["byte_range"] = [b + 8 for b in manifest["tensors"][0]["byte_range"]]
    resign(path, manifest)
    with pytest.raises(FormatError, match="disagrees with the file header"):
        ckptio.open(path)
