"""A child made by ``fork`` (multiprocessing's default start method on Linux, DataLoader
workers) can use async saves: it inherits none of the parent's worker threads, its
lock or its pending saves.

Each case runs in a fresh interpreter that forks; the child gets a deadline, so a hang
fails the test instead of stalling the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ckptio

_PYTHONPATH = str(Path(ckptio.__file__).resolve().parent.parent)  # this ckptio, in the child too

_PRELUDE = """
import json, os, signal, sys, threading, time, traceback
import numpy as np
import ckptio
from ckptio import _core, async_save

def in_forked_child(work, limit=60.0):
    # Runs work() in a forked child; returns its exit code, or "hung" past the limit.
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if work() else 1
        except BaseException:
            traceback.print_exc()
            code = 2
        os._exit(code)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"

def save_and_check(path, threads=None):
    w = {"w": np.arange(1000.0)}
    fut = ckptio.save_state_async(path, w, {"step": 1}, threads=threads)
    fut.result(timeout=30)
    return ckptio.load_state(path)["w"].tolist() == w["w"].tolist()
"""


def _run(tmp_path: Path, code: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": _PYTHONPATH, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_child_forked_during_a_pending_save_does_not_wait_for_it(tmp_path):
    out = _run(tmp_path, """
        gate, real = threading.Event(), _core.save
        _core.save = lambda *a, **k: (gate.wait(), real(*a, **k))[1]  # the write waits
        fut = ckptio.save_state_async("parent", {"w": np.ones(3)}, {})
        child = in_forked_child(lambda: ckptio.wait_for_saves() == [])
        gate.set()
        print(json.dumps({"child": child, "parent": fut.result(timeout=60).name}))
    """)  # fmt: skip
    assert out == {"child": 0, "parent": "parent"}, out


def test_child_forked_while_another_thread_held_the_lock_can_use_it(tmp_path):
    out = _run(tmp_path, """
        with async_save._lock:  # as a thread inside ckptio at the moment of the fork would
            child = in_forked_child(lambda: ckptio.release_staging_memory() is None)
        print(json.dumps({"child": child}))
    """)  # fmt: skip
    assert out == {"child": 0}, out


def test_child_forked_after_an_async_save_saves_async(tmp_path):
    # threads=3: a Rust pool size the parent never built, so this checks the Python
    # side alone (the executor), whatever the state of the parent's Rust pools.
    out = _run(tmp_path, """
        assert save_and_check("parent")
        child = in_forked_child(lambda: save_and_check("child", threads=3))
        print(json.dumps({"child": child}))
    """)  # fmt: skip
    assert out == {"child": 0}, out


def test_child_forked_after_an_async_save_saves_async_with_default_threads(tmp_path):
    # The child reuses the Rust pools the parent built: this needs both the executor
    # reset (here) and the Rust pools rebuilt after fork (src/pool.rs).
    out = _run(tmp_path, """
        assert save_and_check("parent")
        child = in_forked_child(lambda: save_and_check("child"))
        print(json.dumps({"child": child}))
    """)  # fmt: skip
    assert out == {"child": 0}, out
