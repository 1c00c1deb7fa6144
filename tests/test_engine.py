"""The throughput engine: threads, shards, copy loads, async saves, memory bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import ckptio


def _weights(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(1, 300)), int(rng.integers(1, 40))) for _ in range(n)]
    return {f"layer.{i}.w": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_round_trip_with_threads(tmp_path, threads):
    weights = _weights()
    opt = {"exp_avg": {k: v * 2 for k, v in weights.items()}}
    path = tmp_path / "ck"
    ckptio.save_state(path, weights, opt, threads=threads)
    w, o, _, _ = ckptio.load_state_with_optimizer(path)
    for k, v in weights.items():
        assert w[k].tobytes() == v.tobytes()
        assert o["exp_avg"][k].tobytes() == (v * 2).tobytes()
    ckptio.open(path).verify(threads=threads)


def test_shards_follow_the_hugging_face_layout(tmp_path):
    weights = _weights(10)
    weights["huge"] = np.arange(5000, dtype=np.float64)  # 40 kB: larger than a shard
    path = tmp_path / "ck"
    ckptio.save_state(path, weights, {"m": {k: np.ones(3) for k in weights}}, max_shard_bytes=16_000)
    shards = sorted(p.name for p in path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    n = len(shards)
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(weights)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in weights.values())
    huge_file = path / index["weight_map"]["huge"]
    assert huge_file.stat().st_size > 16_000  # a tensor larger than the limit gets its own shard
    loaded = ckptio.load_state(path)
    assert list(loaded) == list(weights)
    assert all(loaded[k].tobytes() == v.tobytes() for k, v in weights.items())
    assert (path / "optimizer.safetensors").exists()
    ckptio.verify(path)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_copy_load_reads_into_fresh_memory_and_checks_checksums(tmp_path, framework):
    weights = _weights(6)
    weights["tied"] = weights["layer.0.w"]
    path = tmp_path / "ck"
    ckptio.save_weights_for_sampler(path, weights, max_shard_bytes=20_000)
    loaded = ckptio.load_state(path, copy=True, framework=framework)
    assert list(loaded) == list(weights)
    for k, v in weights.items():
        got = loaded[k] if framework == "numpy" else loaded[k].numpy()
        assert got.tobytes() == v.tobytes() and got.shape == v.shape
    assert loaded["tied"] is loaded["layer.0.w"]
    ck = ckptio.open(path)
    info = ck.info("layer.3.w")
    begin = ck._core.tensors()[3][5]
    data = bytearray((path / info.file).read_bytes())
    data[begin + 5] ^= 0x10
    (path / info.file).write_bytes(bytes(data))
    with pytest.raises(ckptio.CorruptCheckpointError) as exc:
        ckptio.load_state(path, copy=True)
    assert exc.value.tensor == "layer.3.w"


def test_async_save_snapshots_the_state_at_the_call(tmp_path):
    weights = {"w": np.zeros(1 << 20, np.float32), "b": np.zeros(10, np.int64)}
    opt = {"m": np.zeros(1000), "step": 1}
    fut = ckptio.save_state_async(tmp_path / "ck", weights, opt, step=1)
    weights["w"] += 1.0  # mutate right after the call
    weights["b"][:] = 7
    opt["m"][:] = 3.0
    opt["step"] = 2
    assert fut.result(timeout=60) == tmp_path / "ck"
    assert fut.done() and fut.exception() is None
    w, o, step, _ = ckptio.load_state_with_optimizer(tmp_path / "ck")
    assert not w["w"].any() and not w["b"].any() and not o["m"].any()
    assert o["step"] == 1 and step == 1


def test_async_saves_to_one_target_run_in_call_order(tmp_path):
    path = tmp_path / "ck"
    futures = [
        ckptio.save_weights_for_sampler_async(path, {"w": np.full(50_000, i)}, metadata=i, overwrite=True)
        for i in range(5)
    ]
    for f in futures:
        f.result(timeout=60)
    assert ckptio.open(path).metadata == 4
    assert ckptio.load_state(path)["w"][0] == 4


def test_async_errors_reach_result(tmp_path):
    ckptio.save_weights_for_sampler(tmp_path / "ck", {"w": np.zeros(2)})
    fut = ckptio.save_weights_for_sampler_async(tmp_path / "ck", {"w": np.ones(2)})  # no overwrite
    with pytest.raises(ckptio.CheckpointExistsError):
        fut.result(timeout=60)
    fut = ckptio.save_weights_for_sampler_async(tmp_path / "missing" / "ck", {"w": np.ones(2)})
    with pytest.raises(ckptio.CheckpointNotFoundError):
        fut.result(timeout=60)
    with pytest.raises(TypeError, match="'bad'"):  # argument errors raise at the call
        ckptio.save_state_async(tmp_path / "x", {"bad": "text"}, {})
    assert ckptio.load_state(tmp_path / "ck")["w"].tolist() == [0, 0]
    assert ckptio.wait_for_saves() == []


_READ_ONLY_SAVE = textwrap.dedent(
    """
    import os, sys, numpy as np, ckptio
    if os.geteuid() == 0:
        os.setgid(65534); os.setuid(65534)  # drop root, which ignores permission bits
    fut = ckptio.save_weights_for_sampler_async(sys.argv[1], {"w": np.ones(4)})
    try:
        fut.result(timeout=60)
    except ckptio.StorageError as e:
        print("errno", e.errno)
    """
)


def test_async_save_into_a_read_only_directory_fails_in_result():
    import shutil
    import tempfile

    top = tempfile.mkdtemp()  # pytest's tmp_path sits under a root-only directory
    try:
        os.chmod(top, 0o755)
        ro = os.path.join(top, "ro")
        os.mkdir(ro, 0o555)
        script = [sys.executable, "-c", _READ_ONLY_SAVE, os.path.join(ro, "ck")]
        out = subprocess.run(script, capture_output=True, text=True)
        assert "errno 13" in out.stdout, out.stderr
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(top)


def test_saves_from_many_threads_at_once(tmp_path):
    errors: list[BaseException] = []

    def save(i: int) -> None:
        try:
            ckptio.save_state(tmp_path / f"ck{i}", {"w": np.full(10_000, i)}, {"step": i}, step=i)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):
        assert ckptio.open(tmp_path / f"ck{i}").step == i
        assert ckptio.load_state(tmp_path / f"ck{i}")["w"][0] == i


_RSS_SAVE = textwrap.dedent(
    """
    import sys, numpy as np, ckptio

    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024

    path, mode = sys.argv[1], sys.argv[2]
    weights = {f"w{i}": np.full(32 << 20, i, np.uint8) for i in range(16)}  # 512 MiB
    opt = {"m": {f"w{i}": np.full(8 << 20, i, np.uint8) for i in range(16)}}  # 128 MiB
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
    before = hwm()
    if mode == "sync":
        ckptio.save_state(path, weights, opt, durable=False)
    else:
        ckptio.save_state_async(path, weights, opt, durable=False).result()
    print(hwm() - before)
    """
)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_save_memory_is_bounded(tmp_path, mode):
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SAVE, str(tmp_path / "ck"), mode], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout)
    state = 640 << 20
    bound = 64 << 20 if mode == "sync" else state + (64 << 20)
    assert growth <= bound, f"{mode} save grew peak RSS by {growth >> 20} MiB (bound {bound >> 20} MiB)"
    if mode == "async":
        assert growth >= state // 2, "the async snapshot should hold a copy of the state"
    assert os.path.isdir(tmp_path / "ck")


def test_reused_staging_buffer_holds_each_saves_own_values(tmp_path):
    from ckptio import async_save

    w = {"w": np.zeros(100_000, np.float32)}
    first = ckptio.save_weights_for_sampler_async(tmp_path / "a", w)
    first.result(timeout=60)
    spare = async_save._spare_staging[0]
    w["w"][:] = 5.0
    second = ckptio.save_weights_for_sampler_async(tmp_path / "b", w)
    assert not async_save._spare_staging, "the spare buffer is in use by the second save"
    w["w"][:] = 9.0
    second.result(timeout=60)
    assert async_save._spare_staging[0] is spare
    assert ckptio.load_state(tmp_path / "a")["w"].max() == 0.0
    assert set(ckptio.load_state(tmp_path / "b")["w"].tolist()) == {5.0}
    ckptio.release_staging_memory()
    assert not async_save._spare_staging


_EXIT_DURING_SAVE = textwrap.dedent(
    """
    import sys, numpy as np, ckptio
    weights = {f"w{i}": np.full(8 << 20, i, np.float32) for i in range(8)}  # 256 MiB
    ckptio.save_weights_for_sampler_async(sys.argv[1], weights)
    ckptio.save_weights_for_sampler_async(sys.argv[2], {"w": np.ones(2)})  # target exists: fails
    print("returned", flush=True)
    # the interpreter exits here, with the saves still running
    """
)


def test_interpreter_exit_completes_pending_saves_and_reports_failures(tmp_path):
    ckptio.save_weights_for_sampler(tmp_path / "taken", {"w": np.zeros(1)})
    script = [sys.executable, "-c", _EXIT_DURING_SAVE, str(tmp_path / "big"), str(tmp_path / "taken")]
    out = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "returned", out.stderr
    ckptio.verify(tmp_path / "big")
    assert ckptio.load_state(tmp_path / "big")["w7"][0] == 7
    assert "async save to" in out.stderr and "taken" in out.stderr and "already exists" in out.stderr


def test_copy_load_of_the_optimizer_state(tmp_path):
    import torch

    opt = {"m": np.arange(5.0), "t": torch.ones(3), "s": np.float32(2.5), "step": 4}
    ckptio.save_state(tmp_path / "ck", {"w": np.ones(2)}, opt)
    w, back, _, _ = ckptio.load_state_with_optimizer(tmp_path / "ck", copy=True)
    assert back["m"].tolist() == [0, 1, 2, 3, 4] and isinstance(back["t"], torch.Tensor)
    assert type(back["s"]) is np.float32 and back["step"] == 4
    assert back["m"].flags.owndata and w["w"].flags.owndata  # fresh memory, not the mapping
    assert ckptio.load_state_with_optimizer(tmp_path / "ck").optimizer_state["m"].base is not None


# -- file handles: a save and an open hold a bounded number of descriptors -----------
_LOW_FD_LIMIT = """
import os, resource, sys
import numpy as np, ckptio
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
"""


def _tiny_shards(n: int) -> dict[str, np.ndarray]:
    return {f"t{i}": np.array([i % 251, i // 251], np.uint8) for i in range(n)}


def test_a_1500_shard_save_fits_in_256_file_handles(tmp_path):
    code = """
    path = sys.argv[1]
    weights = {f"t{i}": np.array([i % 251, i // 251], np.uint8) for i in range(1500)}
    ckptio.save_weights_for_sampler(path, weights, max_shard_bytes=2)
    print(len(ckptio.open(path).files))
    """
    out = subprocess.run(
        [sys.executable, "-c", _LOW_FD_LIMIT + textwrap.dedent(code), str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1500"]
    loaded = ckptio.load_state(tmp_path / "ck")
    assert all(loaded[k].tobytes() == v.tobytes() for k, v in _tiny_shards(1500).items())
    ckptio.verify(tmp_path / "ck")


def test_two_opens_of_a_1000_shard_checkpoint_fit_in_256_file_handles(tmp_path):
    """Each open keeps one descriptor (its directory), not one per file; verify and
    copy loads reopen files a window at a time."""
    weights = _tiny_shards(1000)
    ckptio.save_state(tmp_path / "ck", weights, {"m": weights}, max_shard_bytes=2, durable=False)
    code = """
    path = sys.argv[1]
    a, b = ckptio.open(path), ckptio.open(path)
    held = len(os.listdir("/proc/self/fd"))
    a.verify()
    b.verify()
    copies = ckptio.load_state_with_optimizer(path, copy=True)
    views = b.weights()
    assert all(copies.weights[k].tobytes() == views[k].tobytes() for k in views)
    print(len(a.files), held, len(os.listdir("/proc/self/fd")))
    """
    out = subprocess.run(
        [sys.executable, "-c", _LOW_FD_LIMIT + textwrap.dedent(code), str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    files, held, after = map(int, out.stdout.split())
    assert files == 1000 + 1000  # model and optimizer shards
    assert held < 64 and after < 64, (held, after)


_CHANGED_AFTER_OPEN = """
import json, os, shutil, sys
import numpy as np, ckptio
root = sys.argv[1]
weights = {f"t{i}": np.full(1000, i, np.float32) for i in range(3)}
out = {}
for case in ["swapped", "truncated", "removed"]:
    path = os.path.join(root, case)
    ckptio.save_weights_for_sampler(path, weights, max_shard_bytes=4000)
    ck = ckptio.open(path)
    shard = os.path.join(path, ck.files[1])
    if case == "swapped":  # the same bytes, another file
        shutil.copyfile(shard, shard + ".new")
        os.replace(shard + ".new", shard)
    elif case == "truncated":
        os.truncate(shard, 100)
    else:  # as a save replacing the checkpoint does
        shutil.rmtree(path)
    for how in ["verify", "copy"]:
        try:
            if how == "verify":
                ck.verify()
            else:
                got = ck.weights(copy=True)
                assert all(got[k].tobytes() == v.tobytes() for k, v in weights.items())
            out[f"{case}-{how}"] = None
        except ckptio.CkptioError as e:
            out[f"{case}-{how}"] = [type(e).__name__, e.file == shard, str(e)]
print(json.dumps(out))
"""


def test_files_changed_after_open_are_named_and_removed_ones_still_read(tmp_path):
    """verify and copy loads reopen each file by name: another file under the name, or
    a size change, is corruption naming the file (never a read past a truncated
    mapping, which would be SIGBUS: hence the child); a file removed since the open
    (its checkpoint was replaced) is read from its mapping."""
    out = subprocess.run(
        [sys.executable, "-c", _CHANGED_AFTER_OPEN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    for how in ["verify", "copy"]:
        assert r[f"swapped-{how}"][:2] == ["CorruptCheckpointError", True], r
        assert "replaced by another file since the checkpoint was opened" in r[f"swapped-{how}"][2]
        assert r[f"truncated-{how}"][:2] == ["CorruptCheckpointError", True], r
        assert "changed size since it was opened" in r[f"truncated-{how}"][2]
        assert r[f"removed-{how}"] is None, r
