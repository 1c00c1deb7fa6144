"""Round trips of weights: every dtype, shapes, names, order, many tensors."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import ckptio

DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2,
]  # fmt: skip


def _sample(dtype: type, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    arr = raw.view(dtype).reshape(shape)
    return arr if dtype is not np.bool_ else arr.astype(bool)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_bit_exactly(ckpt_path, dtype):
    weights = {"scalar": _sample(dtype, ()), "vec": _sample(dtype, (7,)), "mat": _sample(dtype, (3, 5))}
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    loaded = ckptio.load_state(ckpt_path)
    for name, arr in weights.items():
        assert _same_bits(loaded[name], arr), name
    ckptio.verify(ckpt_path)


def test_empty_weights_and_zero_size_arrays(tmp_path):
    ckptio.save_weights_for_sampler(tmp_path / "empty", {})
    assert ckptio.load_state(tmp_path / "empty") == {}
    ckptio.verify(tmp_path / "empty")
    weights = {"none": np.zeros((0,), np.float32), "rows": np.zeros((3, 0), np.int64), "one": np.ones(1)}
    ckptio.save_weights_for_sampler(tmp_path / "zero", weights)
    loaded = ckptio.load_state(tmp_path / "zero")
    assert {k: (v.shape, v.dtype) for k, v in loaded.items()} == {
        k: (v.shape, v.dtype) for k, v in weights.items()
    }


def test_non_contiguous_and_big_endian_arrays_are_saved_as_their_values(ckpt_path):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    weights = {
        "strided": base[::2, 1::3],
        "transposed": base.T,
        "big_endian": np.arange(5, dtype=">i4"),
        "negative_stride": base[::-1],
    }
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    loaded = ckptio.load_state(ckpt_path)
    for name, arr in weights.items():
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)
        assert loaded[name].shape == arr.shape
    assert loaded["big_endian"].dtype == np.dtype("<i4")


def test_names_come_back_in_save_order_with_unicode(ckpt_path):
    names = ["zeta", "αβγ.weight", "layer.10", "layer.2", "🙂", "a b/c:d", ""]
    weights = {n: np.full(2, i, np.int32) for i, n in enumerate(names)}
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    loaded = ckptio.load_state(ckpt_path)
    assert list(loaded) == names
    for i, n in enumerate(names):
        assert loaded[n].tolist() == [i, i]


def test_ten_thousand_small_tensors(ckpt_path):
    weights = {f"lora.{i}.A": np.full((4,), i, np.float32) for i in range(10_000)}
    ckptio.save_weights_for_sampler(ckpt_path, weights, durable=False)
    loaded = ckptio.load_state(ckpt_path)
    assert len(loaded) == 10_000
    assert list(loaded) == list(weights)
    assert all(loaded[f"lora.{i}.A"][0] == i for i in range(0, 10_000, 997))
    ckptio.verify(ckpt_path)


def test_metadata_is_any_json_and_exact(ckpt_path):
    meta = {"lr": 1e-3, "big": 2**100, "nested": [1, {"x": None, "y": True}], "text": "ü"}
    ckptio.save_weights_for_sampler(ckpt_path, {"w": np.ones(1)}, metadata=meta)
    ck = ckptio.open(ckpt_path)
    assert ck.metadata == meta
    assert ck.kind == "sampler" and ck.step is None
    for value in ("just a string", 3, [1, 2], None):
        ckptio.save_weights_for_sampler(ckpt_path, {}, metadata=value, overwrite=True)
        assert ckptio.open(ckpt_path).metadata == value


def test_open_is_lazy_and_describes_tensors(ckpt_path):
    weights = {"w": np.ones((2, 3), np.float16), "b": np.zeros(4, np.int64)}
    ckptio.save_state(ckpt_path, weights, {"m": np.ones(3)}, step=5, metadata={"run": "x"})
    with ckptio.open(ckpt_path) as ck:
        assert ck.kind == "state" and ck.step == 5 and ck.metadata == {"run": "x"}
        assert ck.names == ["w", "b"] and list(ck) == ["w", "b"] and len(ck) == 2
        assert "w" in ck and "m" not in ck
        info = ck.info("w")
        assert (info.dtype, info.shape, info.nbytes, info.file) == ("F16", (2, 3), 12, "model.safetensors")
        assert ck.info("m", "optimizer").file == "optimizer.safetensors"
        assert ck["b"].dtype == np.int64
        ck.verify()
        with pytest.raises(KeyError, match="nope"):
            ck["nope"]


def test_overwrite_replaces_and_requires_the_flag(ckpt_path):
    ckptio.save_weights_for_sampler(ckpt_path, {"w": np.zeros(3)})
    with pytest.raises(ckptio.CheckpointExistsError, match="overwrite=True"):
        ckptio.save_weights_for_sampler(ckpt_path, {"w": np.ones(3)})
    assert ckptio.load_state(ckpt_path)["w"].tolist() == [0, 0, 0]
    ckptio.save_state(ckpt_path, {"w": np.ones(3)}, {}, overwrite=True)
    assert ckptio.load_state(ckpt_path)["w"].tolist() == [1, 1, 1]
    assert ckptio.open(ckpt_path).kind == "state"
    assert sorted(p.name for p in ckpt_path.parent.iterdir()) == ["ckpt"]


def test_manifest_is_readable_json_with_the_documented_fields(ckpt_path):
    ckptio.save_state(ckpt_path, {"w": np.ones(2, np.float32)}, {"step": 3}, step=3)
    doc = json.loads((ckpt_path / "ckptio.json").read_text())
    m = doc["manifest"]
    assert set(doc) == {"manifest", "manifest_xxh3"}
    assert (m["format"], m["format_version"], m["kind"], m["checksum"]) == ("ckptio", 1, "state", "xxh3-64")
    assert [f["name"] for f in m["files"]] == ["model.safetensors", "optimizer.safetensors"]
    assert m["tensors"][0]["name"] == "w" and len(m["tensors"][0]["xxh3"]) == 16
    assert m["user"]["step"] == 3


def test_loads_return_the_framework_the_weights_were_saved_as(tmp_path):
    import torch

    ckptio.save_state(tmp_path / "t", {"w": torch.ones(2)}, {"m": torch.zeros(2), "n": np.zeros(1)})
    ckptio.save_weights_for_sampler(tmp_path / "n", {"w": np.ones(2)})
    assert isinstance(ckptio.load_state(tmp_path / "t")["w"], torch.Tensor)
    w, opt, _, _ = ckptio.load_state_with_optimizer(tmp_path / "t")
    assert isinstance(w["w"], torch.Tensor) and isinstance(opt["m"], torch.Tensor)
    assert isinstance(opt["n"], np.ndarray)
    assert isinstance(ckptio.load_state(tmp_path / "t", framework="numpy")["w"], np.ndarray)
    assert isinstance(ckptio.load_state(tmp_path / "n")["w"], np.ndarray)
    assert isinstance(ckptio.load_state(tmp_path / "n", framework="torch")["w"], torch.Tensor)
    assert ckptio.open(tmp_path / "t").framework == "torch"
