"""Loading maps the files: arrays are views into the mapping, copy-on-write, and a
large load costs no memory until the data is touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

import ckptio


def _inside(arr: np.ndarray, base: np.ndarray) -> bool:
    start = base.__array_interface__["data"][0]
    ptr = arr.__array_interface__["data"][0]
    return start <= ptr and ptr + arr.nbytes <= start + base.nbytes


def test_loaded_arrays_are_views_into_the_mapping(ckpt_path):
    weights = {"a": np.arange(1000, dtype=np.float32), "b": np.ones((3, 3), np.int16)}
    ckptio.save_weights_for_sampler(ckpt_path, weights)
    ck = ckptio.open(ckpt_path)
    mapping = np.frombuffer(ck._core.file(0), dtype=np.uint8)
    assert len(mapping) == (ckpt_path / "model.safetensors").stat().st_size
    for name in weights:
        arr = ck[name]
        assert _inside(arr, mapping), name
        assert arr.__array_interface__["data"][0] % arr.dtype.itemsize == 0, "aligned"


def test_loaded_arrays_are_writable_and_writes_never_reach_the_file(ckpt_path):
    ckptio.save_weights_for_sampler(ckpt_path, {"w": np.zeros(4096, np.float64)})
    before = (ckpt_path / "model.safetensors").read_bytes()
    w = ckptio.load_state(ckpt_path)["w"]
    assert w.flags.writeable
    w[:] = 7.0
    assert (ckpt_path / "model.safetensors").read_bytes() == before
    assert ckptio.load_state(ckpt_path)["w"].sum() == 0
    ckptio.verify(ckpt_path)  # verification reads the file, not our modified pages


def test_arrays_outlive_the_checkpoint_object(ckpt_path):
    ckptio.save_weights_for_sampler(ckpt_path, {"w": np.arange(10)})
    ck = ckptio.open(ckpt_path)
    w = ck["w"]
    ck.close()
    del ck
    import gc

    gc.collect()
    assert w.tolist() == list(range(10))


_RSS_PROBE = textwrap.dedent(
    """
    import sys, numpy as np, ckptio

    def hwm_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    path = sys.argv[1]
    before = hwm_kib()
    weights = ckptio.load_state(path)
    loaded = hwm_kib()
    # One byte per 16 MiB: a read maps the whole page-cache folio it lands in, and a
    # file ckptio wrote is held in 2 MiB folios (docs/ENGINE.md), so 64 reads map 128 MiB.
    total = sum(int(w[:: 16 << 20].sum()) for w in weights.values())
    sparse = hwm_kib()
    for w in weights.values():
        w.sum()  # touch every page
    full = hwm_kib()
    print(before, loaded, sparse, full)
    """
)


def test_loading_1gb_does_not_grow_rss_until_touched(tmp_path):
    gib = 1 << 30
    path = tmp_path / "big"
    weights = {f"t{i}": np.full(64 << 20, i, np.uint8) for i in range(16)}  # 16 x 64 MiB
    ckptio.save_weights_for_sampler(path, weights, durable=False)
    del weights
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True, text=True, check=True
    ).stdout
    before, loaded, sparse, full = (int(x) * 1024 for x in out.split())
    assert loaded - before < 64 << 20, f"open+load grew peak RSS by {(loaded - before) >> 20} MiB"
    assert sparse - before < 192 << 20, f"sparse touch grew peak RSS by {(sparse - before) >> 20} MiB"
    assert full - before > gib * 0.9, "touching every page should map the whole file in"
