"""The save planner in Rust (``_core.plan_save``, ``_core.flatten_tree``) against the
Python it replaced, on random weights and optimizer trees (hypothesis): the same
skeleton JSON byte for byte, the same tensor names in the same order, the same dtypes,
shapes and bytes, the same tied-weight folding, and the same errors for bad leaves,
keys and depths. Then the safety of rows planned early: a tensor changed between
planning and writing is refused, never read out of bounds.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ckptio
from ckptio import _core
from ckptio._plan import SavePlan
from ckptio._tensors import PLAN_HOOKS, SameViews, as_saveable, is_torch_tensor
from ckptio._tree import MAX_DEPTH, flatten

SCALE = int(os.environ.get("CKPTIO_PROPERTY_SCALE", "1"))
SETTINGS = settings(
    deadline=None,
    max_examples=200 * SCALE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the Python planner this replaced (the reference) ---------------------------------


def python_plan(weights: Any, tree: Any, *, state: bool = True) -> Any:
    """What SavePlan computed before the planner moved to Rust: ("ok", rows, skeleton
    JSON, aliases, order, all torch) or ("error", type, message)."""
    try:
        rows, aliases, order, views = [], [], [], SameViews()
        for name, value in weights.items():
            tied = views.find_or_add(value, name) if isinstance(name, str) else None
            if tied is not None:
                aliases.append((name, tied))
            else:
                rows.append(("w", name, *as_saveable(name, value)))
            order.append(name)
        all_torch = bool(rows) and all(is_torch_tensor(r[6]) for r in rows)
        skeleton = None
        if state:
            skel, arrays = flatten(tree)
            skeleton = json.dumps(skel, allow_nan=False)
            rows += [("o", n, *as_saveable(n, a)) for n, a in arrays]
    except Exception as e:
        return ("error", type(e), str(e))
    return ("ok", rows, skeleton, aliases, order if aliases else [], all_torch)


def rust_plan(weights: Any, tree: Any, *, state: bool = True) -> Any:
    try:
        tensors, skeleton, aliases, order, all_torch = _core.plan_save(
            weights,
            tree,
            weights_group="w",
            weights_metadata=[],
            optimizer_group="o" if state else None,
            max_depth=MAX_DEPTH,
            hooks=PLAN_HOOKS,
        )
    except Exception as e:
        return ("error", type(e), str(e))
    return ("ok", tensors, skeleton, aliases, order, all_torch)


def _bytes(data: Any) -> bytes:
    if is_torch_tensor(data):
        # A contiguous CPU tensor: its nbytes from data_ptr, as the binding reads it.
        return ctypes.string_at(data.data_ptr(), data.nbytes) if data.nbytes else b""
    return memoryview(data).tobytes()


def assert_same_plan(weights: Any, tree: Any, *, state: bool = True) -> None:
    want, got = python_plan(weights, tree, state=state), rust_plan(weights, tree, state=state)
    if want[0] == "error" or got[0] == "error":
        assert got == want
        return
    _, rows, skeleton, aliases, order, all_torch = want
    _, tensors, got_skeleton, got_aliases, got_order, got_all_torch = got
    assert got_skeleton == skeleton
    assert (got_aliases, got_order, got_all_torch) == (aliases, order, all_torch)
    info = tensors.rows_info()
    assert [(g, n, d, list(s), nb, b) for g, n, d, s, _, nb, _, b in rows] == info
    assert tensors.nbytes == sum(r[5] for r in rows)
    # The bytes: every row still in the caller's memory, through a snapshot.
    staging = np.empty(tensors.staging_bytes(), np.uint8)
    tensors.snapshot(staging)
    offset = 0
    for (*_, data, nbytes, _, borrowed), _info in zip(rows, info, strict=True):
        if borrowed:
            assert staging[offset : offset + nbytes].tobytes() == _bytes(data)
            offset += -(-nbytes // 64) * 64
    assert tensors.staging_bytes() == 0  # every row now reads the copy


# -- random inputs ---------------------------------------------------------------------

DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
          np.longlong, np.ulonglong, np.intc, np.float16, np.float32, np.float64]  # fmt: skip


@st.composite
def base_arrays(draw: st.DrawFn) -> np.ndarray:
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if draw(st.integers(0, 5)) == 0:
        dtype = draw(st.sampled_from([ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn]))
        raw = draw(hnp.arrays(np.uint8, (*shape, np.dtype(dtype).itemsize)))
        return raw.view(dtype).reshape(shape)
    return draw(hnp.arrays(np.dtype(draw(st.sampled_from(DTYPES))), shape))


def _views(a: np.ndarray) -> list[Any]:
    """The array, views of it (some the same view, tied), and unusual layouts."""
    out: list[Any] = [a, a[...], a.reshape(a.shape)]
    if a.ndim:
        out += [a[::2], a[1:], np.asarray(a).T]
    if a.dtype.isbuiltin and a.dtype.itemsize > 1:
        out.append(a.astype(a.dtype.newbyteorder(">")))
    if torch is not None and a.dtype.isbuiltin:
        try:
            t = torch.from_numpy(a)
        except (TypeError, RuntimeError):
            pass
        else:
            out += [t, t[...], t.view(t.shape)]
            if t.ndim:
                out += [t[::2], t.permute(*reversed(range(t.ndim)))]
            if t.is_floating_point():
                out += [t.to(torch.bfloat16), torch._neg_view(t)]
    return out


BAD_LEAVES = [
    object(), {1, 2}, b"bytes", Fraction(1, 3), np.array([1, None], object), np.zeros(2, np.complex64),
    np.zeros(2, "datetime64[s]"), type("MyDict", (dict,), {})(a=1),
]  # fmt: skip
SCALARS = [None, True, False, 0, -1, 2**63, -(2**2000), 2**2001, 10**700, 1.5, -0.0, math.inf, math.nan,
           1e-5, 1e16, 123456789.125, "", "text", "é\n\"\\\x7f\x00\U0001f600",
           np.float32(2.5), np.int64(-3)]  # fmt: skip
KEYS = st.text(max_size=5) | st.integers(-3, 3) | st.sampled_from(["a.b", "a", "b", "0", 2**70, -(2**2100)])
BAD_KEYS = st.sampled_from([1.5, (1,), None, True, b"k"])


@st.composite
def leaf_pools(draw: st.DrawFn) -> list[Any]:
    pool: list[Any] = []
    for base in draw(st.lists(base_arrays(), min_size=1, max_size=3)):
        pool += _views(base)
    return pool


def _trees(pool: list[Any], bad: bool) -> st.SearchStrategy[Any]:
    leaves = st.sampled_from(pool) | st.sampled_from(SCALARS)
    keys = (KEYS | BAD_KEYS) if bad else KEYS
    if bad:
        leaves = leaves | st.sampled_from(BAD_LEAVES)
    return st.recursive(
        leaves,
        lambda c: (
            st.lists(c, max_size=4)
            | st.lists(c, max_size=3).map(tuple)
            | st.dictionaries(keys, c, max_size=4)
            | st.dictionaries(keys, c, max_size=3).map(OrderedDict)
        ),
        max_leaves=14,
    )


@st.composite
def plans(draw: st.DrawFn, bad: bool) -> tuple[dict[Any, Any], Any]:
    pool = draw(leaf_pools())
    values = st.sampled_from(pool)
    if bad:
        values = values | st.sampled_from([*BAD_LEAVES, np.float32(1), 3])
    names = st.text(min_size=1, max_size=6) | (st.integers(0, 3) if bad else st.nothing())
    weights = draw(st.dictionaries(names, values, max_size=6))
    return weights, draw(_trees(pool, bad))


# -- properties ------------------------------------------------------------------------


@SETTINGS
@given(plans(bad=False))
def test_rust_planner_matches_python_on_valid_random_state(plan: tuple[dict[Any, Any], Any]) -> None:
    assert_same_plan(*plan)


@SETTINGS
@given(plans(bad=True))
def test_rust_planner_matches_python_errors_on_random_bad_state(plan: tuple[dict[Any, Any], Any]) -> None:
    assert_same_plan(*plan)


@SETTINGS
@given(st.data())
def test_flatten_tree_matches_flatten_leaf_by_leaf(data: st.DataObject) -> None:
    tree = data.draw(_trees(data.draw(leaf_pools()), bad=False))
    prefix = data.draw(st.sampled_from(["state", "loop_state", "x.y"]))
    skel, arrays = flatten(tree, prefix)
    got_skel, got_arrays = _core.flatten_tree(tree, prefix, max_depth=MAX_DEPTH, hooks=PLAN_HOOKS)
    assert got_skel == json.dumps(skel, allow_nan=False)
    assert [n for n, _ in got_arrays] == [n for n, _ in arrays]
    assert all(a is b for (_, a), (_, b) in zip(got_arrays, arrays, strict=True))


# -- examples --------------------------------------------------------------------------


def test_weights_only_saves_have_no_optimizer_skeleton() -> None:
    a = np.ones(3, np.float32)
    assert_same_plan({"a": a, "b": a}, None, state=False)
    assert rust_plan({"a": a}, None, state=False)[2] is None


def test_depth_limit_and_cycles_give_pythons_error() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    cycle: list[Any] = []
    cycle.append(cycle)
    for tree in (deep, cycle, {"a": {"b": [cycle]}}):
        got = rust_plan({}, tree)
        assert got[0] == "error" and got == python_plan({}, tree)
        assert "nested deeper than 32 levels" in got[2]
    ok: Any = np.zeros(1)
    for _ in range(MAX_DEPTH):
        ok = [ok]
    assert_same_plan({}, ok)


def test_strings_that_are_not_utf8_are_written_as_json_dumps_writes_them() -> None:
    tree = {"k\ud800": "v\udfff", "ok": ["\ud83d", "x"]}
    assert_same_plan({}, tree)


def test_a_lone_surrogate_naming_a_tensor_is_refused_clearly() -> None:
    # Python flattened this and the binding then failed to read the name as UTF-8.
    with pytest.raises(ValueError, match="not valid UTF-8"):
        _core.flatten_tree({"k\ud800": np.zeros(1)}, "state", max_depth=MAX_DEPTH, hooks=PLAN_HOOKS)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        SavePlan("x", "sampler", {"w\ud800": np.zeros(1)})


def test_class_spoofing_leaves_are_refused_not_trusted() -> None:
    """``isinstance`` believes a ``__class__`` property; the planner checks real types."""

    class Spoof:
        @property  # type: ignore[misc]
        def __class__(self) -> type:
            return np.ndarray

    with pytest.raises(TypeError, match=r"unsupported .*Spoof"):
        _core.flatten_tree([Spoof()], "state", max_depth=MAX_DEPTH, hooks=PLAN_HOOKS)


def test_mapping_that_is_not_a_dict_is_read_through_items() -> None:
    class Weights(dict):
        def items(self):  # type: ignore[override]
            return [("b", np.ones(2)), ("a", np.zeros(3))]

    got = rust_plan(Weights(), None, state=False)
    assert [r[1] for r in got[1].rows_info()] == ["b", "a"]


# -- rows planned early are checked again when the bytes are read -----------------------


def test_a_storage_resized_after_planning_is_refused_at_write(tmp_path: Path) -> None:
    t = torch.arange(1024, dtype=torch.float32)
    plan = SavePlan(tmp_path / "c", "sampler", {"big": t})
    t.untyped_storage().resize_(0)  # frees the memory the plan saw
    with pytest.raises(ValueError, match=r'tensor "big": .*no memory'):
        plan.write()
    assert not (tmp_path / "c").exists()


def test_a_storage_resized_after_planning_is_refused_at_snapshot(tmp_path: Path) -> None:
    t = torch.arange(1024, dtype=torch.float32)
    plan = SavePlan(tmp_path / "c", "state", {}, {"m": t})
    t.untyped_storage().resize_(16)
    with pytest.raises(ValueError, match=r'tensor "m" .*outside its storage of 16 bytes'):
        plan.snapshot()


def test_user_code_after_planning_cannot_make_the_write_read_freed_memory(tmp_path: Path) -> None:
    """``step.__index__`` runs after the rows are planned: it may resize a storage."""
    t = torch.arange(4096, dtype=torch.float64)

    class Step:
        def __index__(self) -> int:
            t.untyped_storage().resize_(0)
            return 3

    with pytest.raises(ValueError, match=r"storage|no memory"):
        ckptio.save_state(tmp_path / "c", {"w": t}, None, step=Step())


def test_numpy_array_resized_after_planning_is_refused(tmp_path: Path) -> None:
    a = np.arange(64, dtype=np.float32)
    plan = SavePlan(tmp_path / "c", "sampler", {"a": a})
    a.resize(128, refcheck=False)  # same object, new memory and size
    with pytest.raises(ValueError, match="needs 256 bytes, got 512"):
        plan.write()


def test_held_storages_keep_what_was_planned(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.arange(8, dtype=torch.float32))
    plan = SavePlan(tmp_path / "c", "state", {"p": p}, {"m": p.detach() * 2})
    plan.hold_storages()
    p.data = torch.full((8,), -1.0)  # rebinding after planning changes nothing saved
    plan.write()
    got = ckptio.load_state(tmp_path / "c", framework="numpy")
    assert got["p"].tolist() == list(range(8))


def test_snapshot_rows_read_the_copy_and_a_small_buffer_is_refused(tmp_path: Path) -> None:
    a = np.arange(10, dtype=np.int64)
    plan = SavePlan(tmp_path / "c", "state", {"a": a}, {"m": a[::2]})
    assert plan.staging_bytes() == 128  # a: 80 -> 128; m (a private copy): not staged
    with pytest.raises(ValueError, match="too small"):
        plan.tensors.snapshot(np.empty(64, np.uint8))
    plan.snapshot()
    a[:] = -1  # the caller changes its array: the snapshot is what is saved
    plan.write()
    w, opt, _, _ = ckptio.load_state_with_optimizer(tmp_path / "c")
    assert np.asarray(w["a"]).tolist() == list(range(10))
    assert np.asarray(opt["m"]).tolist() == list(range(0, 10, 2))


def test_snapshot_refuses_a_staging_buffer_that_overlaps_a_source() -> None:
    a = np.zeros(4096, np.uint8)
    plan = SavePlan("x", "sampler", {"a": a[:64]})
    with pytest.raises(ValueError, match="overlaps"):
        plan.tensors.snapshot(a[32:])
