"""torch tensors in and out: every dtype, zero-copy views of the mapping, copy-on-write,
parameters, non-contiguous tensors, device placement, torch as an optional dependency."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ckptio
import ckptio.torch

DTYPES = [
    torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.float8_e4m3fn, torch.float8_e5m2,
]  # fmt: skip
DTYPES += [getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)]  # torch >= 2.3
SHAPES = [(), (7,), (3, 5), (2, 0, 4)]


def _sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bytes reinterpreted as ``dtype`` (covers NaN payloads, -0.0, subnormals)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = int(np.prod(shape, dtype=np.int64))
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and _bits(a) == _bits(b)


def _mapped_files(address: int) -> list[str]:
    """The files whose mappings in this process contain ``address`` (Linux)."""
    hits = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi and len(parts) == 6:
            hits.append(parts[5].strip())
    return hits


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_every_torch_dtype_round_trips_with_dtype_and_shape(ckpt_path, dtype):
    weights = {f"t{i}": _sample(dtype, shape, seed=i) for i, shape in enumerate(SHAPES)}
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    ckptio.verify(ckpt_path)
    for loaded in (ckptio.load_state(ckpt_path, framework="torch"), ckptio.torch.load_weights(ckpt_path)):
        assert list(loaded) == list(weights)
        for name, t in weights.items():
            got = loaded[name]
            assert isinstance(got, torch.Tensor), name
            assert got.dtype == dtype, (name, got.dtype)
            assert tuple(got.shape) == tuple(t.shape), (name, got.shape)
            assert _same(got, t), name


def test_loaded_tensors_are_views_of_the_mapped_file(ckpt_path):
    weights = {"big": torch.arange(4096, dtype=torch.float32), "small": torch.ones(3, dtype=torch.int64)}
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    loaded = ckptio.torch.load_weights(ckpt_path)
    for name, t in loaded.items():
        files = _mapped_files(t.data_ptr())
        assert any(f.endswith("model.safetensors") and str(ckpt_path) in f for f in files), (name, files)
    # the view stays valid after every ckptio object is gone
    del weights
    gc.collect()
    assert torch.equal(loaded["big"], torch.arange(4096, dtype=torch.float32))


def test_writing_a_loaded_tensor_never_changes_the_file(ckpt_path):
    original = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    ckptio.save_weights_for_sampler(ckpt_path, {"w": original})
    files = {p: p.read_bytes() for p in Path(ckpt_path).iterdir()}
    loaded = ckptio.torch.load_weights(ckpt_path)["w"]
    loaded.mul_(-7).add_(1)
    loaded[0, 0] = 123.0
    assert loaded[0, 0].item() == 123.0
    assert {p: p.read_bytes() for p in Path(ckpt_path).iterdir()} == files
    ckptio.verify(ckpt_path)
    assert torch.equal(ckptio.torch.load_weights(ckpt_path)["w"], original)


def test_cpu_tensors_are_saved_from_their_own_memory():
    from ckptio._tensors import as_saveable

    t = torch.arange(10, dtype=torch.float64)
    saveable = as_saveable("t", t)
    assert saveable.borrowed and saveable.data is t  # the binding reads t's storage in place


def test_parameters_that_require_grad_are_saved_as_their_values(ckpt_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    loss = layer(torch.randn(2, 4)).square().sum()
    loss.backward()  # a parameter with a grad and a graph around it
    assert layer.weight.requires_grad and layer.weight.grad is not None
    ckptio.save_weights_for_sampler(ckpt_path, {"weight": layer.weight, "bias": layer.bias})
    loaded = ckptio.torch.load_weights(ckpt_path)
    assert _same(loaded["weight"], layer.weight.detach())
    assert _same(loaded["bias"], layer.bias.detach())
    assert not loaded["weight"].requires_grad


def test_non_contiguous_tensors_are_saved_as_their_values(ckpt_path):
    base = torch.arange(120, dtype=torch.float32).reshape(6, 20)
    image = torch.arange(2 * 3 * 4 * 5, dtype=torch.bfloat16).reshape(2, 3, 4, 5)
    weights = {
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "column": base[:, 7],
        "expanded": torch.arange(4, dtype=torch.int16).expand(3, 4),
        "channels_last": image.contiguous(memory_format=torch.channels_last),
        "narrowed": base.narrow(1, 5, 10),
    }
    assert not any(t.is_contiguous() for n, t in weights.items() if n != "channels_last")
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    loaded = ckptio.torch.load_weights(ckpt_path)
    for name, t in weights.items():
        assert loaded[name].is_contiguous(), name
        assert torch.equal(loaded[name], t), name
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
    # the caller's tensors are untouched
    assert torch.equal(base, torch.arange(120, dtype=torch.float32).reshape(6, 20))


def test_device_places_loaded_tensors(ckpt_path):
    ckptio.save_weights_for_sampler(ckpt_path, {"w": torch.ones(2, 3)})
    on_meta = ckptio.torch.load_weights(ckpt_path, device="meta")["w"]
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 3)
    on_cpu = ckptio.load_state(ckpt_path, framework="torch", device="cpu")["w"]
    assert on_cpu.device.type == "cpu" and torch.equal(on_cpu, torch.ones(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_copied_to_host_and_back(ckpt_path):  # pragma: no cover - no GPU here
    t = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    ckptio.save_weights_for_sampler(ckpt_path, {"t": t.T})
    assert torch.equal(ckptio.torch.load_weights(ckpt_path)["t"], t.T.cpu())
    back = ckptio.torch.load_weights(ckpt_path, device="cuda")["t"]
    assert back.device.type == "cuda" and torch.equal(back, t.T)


def test_unsupported_torch_dtype_names_the_tensor(ckpt_path):
    with pytest.raises(TypeError, match="'z'"):
        ckptio.save_weights_for_sampler(ckpt_path, {"z": torch.zeros(2, dtype=torch.complex64)})
    assert not os.path.exists(ckpt_path)


def test_ckptio_imports_and_works_without_torch(tmp_path):
    script = f"""
import sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
import numpy as np
import ckptio
path = {str(tmp_path / "ck")!r}
ckptio.save_state(path, {{"w": np.arange(3.0)}}, {{"step": 1, "m": np.zeros(3)}}, step=1)
w, opt, step, _ = ckptio.load_state_with_optimizer(path)
assert w["w"].tolist() == [0.0, 1.0, 2.0] and step == 1 and opt["step"] == 1
try:
    import ckptio.torch
except ImportError as e:
    assert "pip install" in str(e), e
    print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_views_of_one_memory_that_differ_in_sign_are_stored_apart(ckpt_path):
    # c.imag and c.conj().imag start at the same address with the same dtype, shape and
    # strides; only the neg bit tells them apart. Tied-weight folding must not merge them.
    c = torch.tensor([1 + 2j, 3 + 4j])
    weights = {"imag": c.imag, "conj_imag": c.conj().imag, "imag_again": c.imag}
    assert weights["imag"].data_ptr() == weights["conj_imag"].data_ptr()
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    loaded = ckptio.torch.load_weights(ckpt_path)
    assert loaded["imag"].tolist() == [2.0, 4.0]
    assert loaded["conj_imag"].tolist() == [-2.0, -4.0]
    assert loaded["imag_again"] is loaded["imag"]  # a true tie is still stored once
    assert len(ckptio.open(ckpt_path).tensors) == 2
