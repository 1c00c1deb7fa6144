"""Our weight files are plain safetensors files: the safetensors package reads them."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

import ckptio


def test_safetensors_numpy_reads_identical_arrays(ckpt_path):
    rng = np.random.default_rng(0)
    weights = {
        "embed.weight": rng.standard_normal((50, 8)).astype(np.float32),
        "norm.weight": np.ones(8, np.float16),
        "ids": np.arange(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "scalar": np.float64(3.5),
        "bf16": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
    }
    ckptio.save_state(ckpt_path, weights, {"m": np.zeros(3, np.float32)}, step=1)
    ours = load_file(ckpt_path / "model.safetensors")
    assert sorted(ours) == sorted(weights)
    for name, arr in weights.items():
        got = ours[name]
        assert got.shape == np.shape(arr) and got.tobytes() == np.asarray(arr).tobytes(), name
    with safe_open(ckpt_path / "model.safetensors", "np") as f:
        assert f.metadata()["format"] == "pt"
    assert load_file(ckpt_path / "optimizer.safetensors")["m"].tolist() == [0, 0, 0]


def test_safetensors_torch_reads_sharded_weights(ckpt_path):
    import torch
    from safetensors.torch import load_file as load_torch

    weights = {f"layer.{i}": torch.full((256,), float(i)) for i in range(6)}
    ckptio.save_weights_for_sampler(ckpt_path, weights, max_shard_bytes=2048)
    files = sorted(p.name for p in ckpt_path.glob("model-*.safetensors"))
    assert len(files) == 3 and files[0] == "model-00001-of-00003.safetensors"
    merged = {}
    for f in files:
        merged.update(load_torch(ckpt_path / f))
    assert all(torch.equal(merged[k], v) for k, v in weights.items())
