"""Cold mapped loads: ``load_state`` warms the page cache on a background thread
(``src/warm.rs``). A load after ``posix_fadvise(DONTNEED)`` returns the same bytes; the
warm-up reads the files of what is loaded, and only those, raises no RSS before the
arrays are touched, reads nothing of a cached checkpoint, and survives a file
truncated under it."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _faults import run_python

import ckptio
from ckptio.bench.measure import drop_from_cache, files_under, resident_fraction
from ckptio.bench.workloads import build_state

MIB = 1 << 20


def _make_cold(path: Path) -> None:
    """Drops the files of ``path`` from the page cache. Pages still mapped are not
    dropped: those of a load's arrays until they are collected, and a finished load's
    mapping lives on until its warm-up thread ends, hence the retries."""
    for _ in range(50):
        gc.collect()
        drop_from_cache(files_under(path))
        left = resident_fraction(files_under(path))
        if left <= 0.05:
            return
        time.sleep(0.05)
    if left > 0.05:
        # CI runs on a disk-backed temp dir: there a file that will not leave the cache
        # is a failure, not a skip.
        skip_or_fail = pytest.fail if os.environ.get("CI") else pytest.skip
        skip_or_fail(f"{left:.0%} of the files stayed cached after POSIX_FADV_DONTNEED (tmpfs?)")


def _same(a: Any, b: Any) -> bool:
    """Same tree: same types, keys and order, array bytes, dtypes and shapes."""
    if isinstance(a, np.ndarray):
        same_kind = isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        return same_kind and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(("workload", "size"), [("llm", 24 * MIB), ("lora", 4 * MIB)])
def test_cold_load_returns_identical_data(tmp_path: Path, workload: str, size: int) -> None:
    state = build_state(workload, size, seed=3)
    path = tmp_path / workload
    ckptio.save_state(path, state.weights, state.optimizer, step=state.step)
    _make_cold(path)
    weights, optimizer, step, _ = ckptio.load_state_with_optimizer(path)
    assert step == state.step
    assert _same(weights, state.weights)
    assert _same(optimizer, state.optimizer)
    del weights, optimizer  # pages still mapped cannot be dropped from the cache
    for verify in (False, True):
        _make_cold(path)
        assert _same(ckptio.load_state(path, verify=verify), state.weights)


# Waits for the background warm-up of this process (its threads are named
# "ckptio-warm"), then prints what it did.
_PROBE = r"""
import os, sys, time
from pathlib import Path
import ckptio
from ckptio.bench.measure import drop_from_cache, files_under, resident_fraction

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])

def warming():
    tasks = Path("/proc/self/task").iterdir()
    return any(Path(t, "comm").read_text().strip() == "ckptio-warm" for t in tasks)

def wait_warm(*files):
    # Until `files` are cached (or 60 s: the test then fails on what it finds), then
    # until the warm-up threads are gone (a thread is named once it runs: look twice).
    deadline = time.monotonic() + 60
    while resident_fraction(files) < 0.99 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    while warming() and time.monotonic() < deadline:
        time.sleep(0.01)

path = Path(sys.argv[1])
model, optimizer = path / "model.safetensors", path / "optimizer.safetensors"

def report(tag, start):
    hwm, read = start
    cached = resident_fraction([model]), resident_fraction([optimizer])
    print(tag, *cached, status("VmHWM") - hwm, rchar() - read)

drop_from_cache(files_under(path))
start = status("VmHWM"), rchar()
weights = ckptio.load_state(path)  # weights only: the optimizer file is not read
wait_warm(model)
report("weights", start)
start = status("VmHWM"), rchar()
state = ckptio.load_state_with_optimizer(path)
wait_warm(model, optimizer)
report("state", start)
start = status("VmHWM"), rchar()
again = ckptio.load_state_with_optimizer(path)  # everything cached: nothing read
wait_warm(model, optimizer)
report("hot", start)
"""


def test_warm_up_reads_what_is_loaded_without_rss(tmp_path: Path) -> None:
    path = tmp_path / "ck"
    weights = {f"w{i}": np.full(4 * MIB, i, np.float32) for i in range(4)}  # 64 MiB
    adam = {"m": np.ones(12 * MIB, np.float32)}  # 48 MiB
    ckptio.save_state(path, weights, adam, step=1)
    _make_cold(path)
    result = run_python(_PROBE, str(path), timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in result.stdout.splitlines()}
    model, optimizer, rss, read = rows["weights"]
    assert model > 0.99, f"load_state left {1 - model:.0%} of the weights file uncached"
    assert optimizer < 0.5, f"load_state read {optimizer:.0%} of the optimizer file it does not load"
    assert rss < 32 * MIB, f"the warm-up raised peak RSS by {rss / MIB:.0f} MiB before any touch"
    assert read >= 64 * MIB, "the weights were not read"
    model, optimizer, rss, read = rows["state"]
    assert model > 0.99 and optimizer > 0.99, rows["state"]
    assert rss < 32 * MIB, f"the warm-up raised peak RSS by {rss / MIB:.0f} MiB before any touch"
    assert read < 56 * MIB, f"{read / MIB:.0f} MiB read again: the cached weights file was read again"
    *_, rss, read = rows["hot"]
    assert read < 4 * MIB, f"a load of a cached checkpoint read {read / MIB:.0f} MiB"


_TRUNCATE = r"""
import os, sys, time
from pathlib import Path
import numpy as np
import ckptio
from ckptio.bench.measure import drop_from_cache

root = Path(sys.argv[1])
for i in range(6):
    path = root / f"ck{i}"
    ckptio.save_weights_for_sampler(path, {"w": np.ones(6 << 20, np.float32)})  # 24 MiB
    drop_from_cache([path / "model.safetensors"])
    ckpt = ckptio.open(path)
    if i % 2:
        os.truncate(path / "model.safetensors", 1 << 20)  # before the warm-up starts
        ckpt.prefetch()
    else:
        ckpt.prefetch()
        time.sleep(0.001 * i)
        os.truncate(path / "model.safetensors", 1 << 20)  # while it reads
    time.sleep(0.3)
print("alive")
"""


def test_a_file_truncated_under_the_warm_up_does_not_crash(tmp_path: Path) -> None:
    """The warm-up reads with ``preadv`` (a short read ends it) and never touches the
    mapping, so a truncation is no SIGBUS. The arrays themselves are not touched here:
    that would fault, as GUARANTEES.md says."""
    result = run_python(_TRUNCATE, str(tmp_path), timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "alive", (result.returncode, result.stderr)


def test_prefetch_is_harmless_on_a_closed_or_dropped_checkpoint(ckpt_path: Path) -> None:
    ckptio.save_weights_for_sampler(ckpt_path, {"w": np.arange(1 << 20, dtype=np.float32)})
    _make_cold(ckpt_path)
    ckpt = ckptio.open(ckpt_path)
    ckpt.prefetch()
    ckpt.prefetch(weights_only=True)
    del ckpt  # the warm-up holds the mapping until it ends, then lets it go
    w = ckptio.load_state(ckpt_path)["w"]
    assert w[-1] == (1 << 20) - 1 and os.path.exists(ckpt_path)
