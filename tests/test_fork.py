"""Fork safety: a child made by ``os.fork`` (multiprocessing's default start method
on Linux, DataLoader workers) after the parent used ckptio can use ckptio too.

The core caches its rayon thread pools; their threads do not exist in a forked child,
so a child that reused them waited forever for work no thread would ever run. Each
case runs in a fresh interpreter: the parent does every kind of operation (which
builds every pool), forks, and the child does one kind again. The child is killed
and the case fails if it does not finish in time, so a hang fails the test instead of
stalling pytest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _faults import run_python

KINDS = ["save", "verify", "load_copy", "async_save", "load"]

CHILD = r"""
import os, sys, threading, time, traceback
from pathlib import Path
import numpy as np
import ckptio

root, kind, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
weights = {"a": np.arange(1 << 16, dtype=np.float32), "b": np.ones((64, 64))}
ckptio.save_weights_for_sampler(root / "base", weights)

def do(kind, tag):
    target = root / f"{tag}-{kind}"
    if kind == "save":
        ckptio.save_weights_for_sampler(target, weights)
        ckptio.verify(target)
    elif kind == "verify":
        ckptio.verify(root / "base")
    elif kind in ("load_copy", "load"):  # load: mapped, with its background warm-up
        got = ckptio.load_state(root / "base", copy=kind == "load_copy")
        assert all(np.array_equal(got[k], v) for k, v in weights.items())
    elif kind == "async_save":
        ckptio.save_weights_for_sampler_async(target, weights).result()
        ckptio.verify(target)

for k in ["save", "verify", "load_copy", "async_save", "load"]:
    do(k, "parent")

busy = threading.Event()
def keep_busy():  # the core is in use by another thread at the moment of the fork
    i = 0
    while not busy.is_set():
        do("save" if i % 2 else "verify", f"thread{i}")
        i += 1

n_forks = 1 if mode == "idle" else 8
if mode == "busy":
    worker = threading.Thread(target=keep_busy, daemon=True)
    worker.start()
for i in range(n_forks):
    pid = os.fork()
    if pid == 0:
        try:
            do(kind, f"child{i}")
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print(f"child {i} hung in {kind}", flush=True)
            os._exit(3)
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"child {i} failed in {kind}: exit {code}", flush=True)
        os._exit(4)
busy.set()
print("ok", flush=True)
"""


@pytest.mark.parametrize("mode", ["idle", "busy"])
@pytest.mark.parametrize("kind", KINDS)
def test_forked_child_can_use_ckptio(tmp_path: Path, kind: str, mode: str) -> None:
    """``idle``: one fork after the parent used every kind of operation. ``busy``:
    eight forks while another thread of the parent saves and verifies, so the fork may
    land while the core's pool cache is in use."""
    result = run_python(CHILD, str(tmp_path), kind, mode, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.returncode,
        result.stdout,
        result.stderr,
    )
