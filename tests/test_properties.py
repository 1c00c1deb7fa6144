"""Properties, by hypothesis:

- random weights (every dtype, empty and scalar shapes, odd names, non-contiguous and
  big-endian arrays) and random optimizer trees (nested dicts with str and int keys,
  OrderedDicts, lists, tuples, big ints, NaN payloads, -0.0, numpy scalars, strings)
  round-trip exactly, sharded or not;
- random damage to the bytes of a saved checkpoint (flipped bytes, bursts,
  truncation, growth) is always detected, by ``open`` or by ``verify``.

Example counts are bounded (150 and 400) so the file runs in about 15 s;
``CKPTIO_PROPERTY_SCALE=N`` multiplies them for a long local run.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from _faults import assert_tree_equal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ckptio

# CKPTIO_PROPERTY_SCALE=20 multiplies the example counts for a long local run.
SCALE = int(os.environ.get("CKPTIO_PROPERTY_SCALE", "1"))
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [
    np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
    np.float16, np.float32, np.float64,
]  # fmt: skip
ML_DTYPES = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if draw(st.integers(0, 4)) == 0:
        # bf16 / fp8: arbitrary bit patterns, NaNs included.
        dtype = draw(st.sampled_from(ML_DTYPES))
        raw = draw(hnp.arrays(np.uint8, (*shape, np.dtype(dtype).itemsize)))
        return raw.view(dtype).reshape(shape)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind == "f":
        # Every bit pattern: NaN payloads, -0.0, infinities, subnormals.
        uint = np.dtype(f"u{dtype.itemsize}")
        arr = draw(hnp.arrays(uint, shape)).view(dtype)
    else:
        arr = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["c", "transposed", "big-endian", "strided"]))
    if layout == "transposed" and arr.ndim >= 2:
        arr = np.ascontiguousarray(arr.T).T
    elif layout == "big-endian" and dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder(">"))
    elif layout == "strided" and arr.ndim >= 1:
        arr = np.repeat(arr, 2, axis=0)[::2]
    return arr


names = st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__" and "\x00" not in s)

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, math.nan, -math.nan])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | floats
    | st.text(max_size=8)
    | st.builds(lambda v: np.float32(v), st.floats(width=32))
    | st.builds(lambda v: np.int64(v), st.integers(-(1 << 63), (1 << 63) - 1))
)
keys = st.text(max_size=6) | st.integers(-100, 100)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
        | st.dictionaries(keys, children, max_size=3).map(OrderedDict)
    )


trees = st.recursive(scalars | arrays(), _containers, max_leaves=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


def _bitwise(value: Any) -> Any:
    """Views whose comparison is bit-exact and layout-blind (native, C order)."""
    if isinstance(value, np.ndarray):
        return value.astype(value.dtype.newbyteorder("="), order="C")
    if isinstance(value, dict):
        return type(value)((k, _bitwise(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_bitwise(v) for v in value)
    return value


@settings(SETTINGS, max_examples=150 * SCALE)
@given(
    weights=st.dictionaries(names, arrays(), max_size=6),
    tree=trees,
    metadata=json_values,
    step=st.none() | st.integers(0, 1 << 40),
    shard=st.sampled_from([None, 1, 64, 1024]),
)
def test_round_trip_is_exact(
    weights: dict[str, np.ndarray], tree: Any, metadata: Any, step: Any, shard: Any
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ck"
        ckptio.save_state(path, weights, tree, step=step, metadata=metadata, max_shard_bytes=shard)
        got_w, got_tree, got_step, got_meta = ckptio.load_state_with_optimizer(path, verify=True)
        assert list(got_w) == list(weights)
        assert_tree_equal({k: np.array(v) for k, v in got_w.items()}, _bitwise(weights), "weights")
        assert_tree_equal(got_tree, _bitwise(tree), "optimizer")
        assert got_step == step and got_meta == metadata


def _save_random(path: Path, weights: dict[str, np.ndarray], shard: int | None) -> None:
    opt = {"m": {k: v for k, v in list(weights.items())[:2]}, "step": 3}
    ckptio.save_state(path, weights, opt, step=3, max_shard_bytes=shard)


_WS = set(b" \t\r\n")


@settings(SETTINGS, max_examples=400 * SCALE)
@given(
    weights=st.dictionaries(names, arrays().filter(lambda a: a.nbytes > 0), min_size=1, max_size=4),
    shard=st.sampled_from([None, 32, 256]),
    data=st.data(),
)
def test_random_damage_is_detected(weights: dict[str, np.ndarray], shard: Any, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ck"
        _save_random(path, weights, shard)
        files = sorted(p.name for p in path.iterdir())
        victim = path / data.draw(st.sampled_from(files), label="file")
        raw = bytearray(victim.read_bytes())
        kind = data.draw(st.sampled_from(["bytes", "burst", "truncate", "grow"]), label="damage")
        if kind == "bytes":
            where = data.draw(st.sets(st.integers(0, len(raw) - 1), min_size=1, max_size=4))
            for i in where:
                new = raw[i] ^ data.draw(st.integers(1, 255))
                # Whitespace for whitespace in the manifest's envelope is the same JSON.
                assume(not (victim.name == "ckptio.json" and raw[i] in _WS and new in _WS))
                raw[i] = new
        elif kind == "burst":
            i = data.draw(st.integers(0, len(raw) - 1))
            burst = data.draw(st.binary(min_size=1, max_size=64))
            assume(bytes(raw[i : i + len(burst)]) != burst[: len(raw) - i])
            old = bytes(raw)
            raw[i : i + len(burst)] = burst
            # As above: whitespace for whitespace in the envelope is the same JSON.
            changed = [(a, b) for a, b in zip(old, raw, strict=False) if a != b]
            same_json = len(raw) == len(old) and all(a in _WS and b in _WS for a, b in changed)
            assume(victim.name != "ckptio.json" or not same_json)
            assume(victim.name != "ckptio.json" or bytes(raw).strip() != old.strip())
        elif kind == "truncate":
            cut = data.draw(st.integers(0, len(raw) - 1))
            assume(victim.name != "ckptio.json" or raw[cut:].strip())
            del raw[cut:]
        else:
            extra = data.draw(st.binary(min_size=1, max_size=32))
            assume(victim.name != "ckptio.json" or extra.strip())
            raw += extra
        victim.write_bytes(bytes(raw))
        try:
            ckptio.open(path).verify()
        except (ckptio.CorruptCheckpointError, ckptio.FormatError) as e:
            assert e.file is not None and os.path.basename(e.file) == victim.name, (e.file, victim)
        except ckptio.CheckpointNotFoundError:
            assert victim.name == "ckptio.json"
        else:
            raise AssertionError(f"undetected {kind} damage to {victim.name}")
