"""Crash consistency: a saving process is SIGKILLed at every point of a save, chosen
by the core's crash points (``CKPTIO_CRASH_AT=NAME#N``, see src/fault.rs) and by
timing. Crash points exist only in the test build with the ``fault-injection`` cargo
feature (the ``fault_env`` fixture of _faults.py builds it); the children that use
them import that build, never the installed one. After each kill:

- the name holds the complete old checkpoint or the complete new one (exactly the
  one the point implies) and ``verify`` passes, or nothing for a first save;
- nothing else is visible in the parent; every leftover is a hidden, tagged side
  directory of that name, and none passes for a checkpoint (opening it fails, or it
  is a complete checkpoint that verifies: an old one swapped out);
- ``ckptio.cleanup(parent)`` or the next save removes the leftovers.

Each case runs the save in a fresh interpreter so the kill ends only that process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _faults import (
    NO_RENAMEAT2,
    ForkServer,
    assert_is_version,
    assert_leftovers_harmless,
    run_python,
    save_version,
    side_entries,
    visible_entries,
)

import ckptio

OLD, NEW, NEXT = 1, 2, 3
# make_state has 4 weights and 3 optimizer arrays.
N_TENSORS = 7
# With this shard size the state splits into 3 weight shards and 2 optimizer shards.
SHARD_BYTES = 1024

SAVE_CHILD = """
import json, sys
from pathlib import Path
from _faults import save_version
a = json.loads(sys.argv[1])
save_version(Path(a["path"]), a["version"], overwrite=a["overwrite"], durable=a["durable"],
             max_shard_bytes=a["shard"], background=a["background"])
print("saved")
"""


def _points(n_files: int, *, overwrite: bool, fallback: bool) -> list[str]:
    """Every crash point one save passes, in order (see writer.rs / commit.rs)."""
    points = ["staged"]
    points += [f"file#{i}" for i in range(1, n_files + 1)]
    points += [f"data#{i}" for i in range(1, N_TENSORS + 1)]
    points += ["data_written", "manifest_written", "files_synced", "before_commit"]
    if overwrite and fallback:
        points.append("moved_aside")
    points.append("committed")
    if overwrite:
        points.append("old_removed")
    return points


def _expected(point: str, *, overwrite: bool) -> int | None:
    """What the name holds after a kill at ``point``: a version, or None (absent)."""
    if point in ("committed", "old_removed"):
        return NEW
    if point == "moved_aside":
        return None  # the old one is aside until cleanup or the next save puts it back
    return OLD if overwrite else None


CONFIGS = {
    # name: (overwrite, durable, sharded, fallback, background)
    "fresh": (False, True, False, False, False),
    "overwrite": (True, True, False, False, False),
    "fresh-nondurable": (False, False, False, False, False),
    "overwrite-nondurable": (True, False, False, False, False),
    "fresh-sharded": (False, True, True, False, False),
    "overwrite-sharded": (True, True, True, False, False),
    "fresh-fallback": (False, True, False, True, False),
    "overwrite-fallback": (True, True, False, True, False),
    # save_state_async: the points are passed in the background writer thread.
    "async-fresh": (False, True, False, False, True),
    "async-overwrite": (True, True, False, False, True),
    "async-overwrite-sharded": (True, True, True, False, True),
}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for config, (overwrite, _durable, sharded, fallback, _bg) in CONFIGS.items():
        n_files = 5 if sharded else 2
        cases += [(config, p) for p in _points(n_files, overwrite=overwrite, fallback=fallback)]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory, fault_env: dict[str, str]) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path_factory.mktemp("fork-logs"), env=fault_env)
    yield server
    server.close()


def _kill_at(
    forks: ForkServer, path: Path, point: str, config: str, version: int = NEW
) -> tuple[int | None, str]:
    overwrite, durable, sharded, fallback, background = CONFIGS[config]
    args = {
        "background": background,
        "path": str(path),
        "version": version,
        "overwrite": overwrite,
        "durable": durable,
        "shard": SHARD_BYTES if sharded else None,
    }
    return forks.run(
        SAVE_CHILD,
        json.dumps(args),
        env={"CKPTIO_CRASH_AT": point},
        preamble=NO_RENAMEAT2 if fallback else "",
    )


def test_case_count_covers_every_point() -> None:
    assert len(CASES) >= 150
    named = {p.split("#")[0] for _, p in CASES}
    # Every crash point the core defines is exercised.
    core_points = {"staged", "file", "data", "data_written", "files_synced", "manifest_written"}
    core_points |= {"before_commit", "moved_aside", "committed", "old_removed"}
    assert named == core_points


@pytest.mark.parametrize(("config", "point"), CASES, ids=[f"{c}-{p}" for c, p in CASES])
def test_kill_at_point(forks: ForkServer, tmp_path: Path, config: str, point: str) -> None:
    overwrite, _, sharded, fallback, _ = CONFIGS[config]
    path = tmp_path / "step-2"
    if overwrite:
        save_version(path, OLD, durable=False, max_shard_bytes=SHARD_BYTES if sharded else None)
    rc, output = _kill_at(forks, path, point, config)
    # The point was reached and the process died there: a case that saved to the end
    # would test nothing.
    assert rc == -signal.SIGKILL, (rc, output)

    expected = _expected(point, overwrite=overwrite)
    if expected is None:
        assert not path.exists()
        assert visible_entries(tmp_path) == []
    else:
        assert_is_version(path, expected)
        assert visible_entries(tmp_path) == ["step-2"]
    left = assert_leftovers_harmless(tmp_path, "step-2")
    # Killed before the commit, the staging directory is left; right after an
    # exchange it holds the old checkpoint; after that nothing is left.
    exchanged = point == "committed" and overwrite and not fallback
    assert bool(left) == (point not in ("committed", "old_removed") or exchanged), left

    # Recovery alternates between ckptio.cleanup and the next save.
    if CASES.index((config, point)) % 2 == 0:
        cleaned = ckptio.cleanup(tmp_path)
        assert sorted(cleaned) == left
        assert side_entries(tmp_path) == []
        restored = OLD if point == "moved_aside" else expected
        if restored is None:
            assert not path.exists()
        else:
            assert_is_version(path, restored)
    else:
        save_version(path, NEXT, overwrite=True, durable=False)
        assert side_entries(tmp_path) == []
        assert_is_version(path, NEXT)


def test_save_after_kill_while_old_moved_aside(forks: ForkServer, tmp_path: Path) -> None:
    """Regression: stage() used to decide `replace` before cleanup put the old
    checkpoint back, so this save failed with CheckpointExistsError."""
    path = tmp_path / "step-2"
    save_version(path, OLD)
    rc, output = _kill_at(forks, path, "moved_aside", "overwrite-fallback")
    assert rc == -signal.SIGKILL, output
    assert not path.exists()
    save_version(path, NEXT, overwrite=True)
    assert_is_version(path, NEXT)
    assert side_entries(tmp_path) == []


def test_installed_build_has_no_crash_points(tmp_path: Path) -> None:
    """Regression: the extension users install honoured CKPTIO_CRASH_AT, so a process
    with that variable set SIGKILLed itself in its first save. Crash points are now
    compiled only into the fault-injection test build."""
    path = tmp_path / "ck"
    for point in ("staged", "data", "before_commit", "committed"):
        code = f"import pathlib, _faults; _faults.save_version(pathlib.Path({str(path)!r}), 1)"
        result = run_python(code, env={"CKPTIO_CRASH_AT": point, "CKPTIO_STOP_AT": point}, timeout=60)
        assert result.returncode == 0, (point, result.returncode, result.stderr)
        assert_is_version(path, 1)
        shutil.rmtree(path)


# -- kills by timing ----------------------------------------------------------------
TIMED_CHILD = """
import json, sys, time
from pathlib import Path
from _faults import make_state
import ckptio
a = json.loads(sys.argv[1])
weights, opt = make_state(a["version"], scale=a["scale"])
kw = dict(step=a["version"], metadata={"version": a["version"]}, overwrite=True, max_shard_bytes=a["shard"])
t0 = time.monotonic()
if a["background"]:
    future = ckptio.save_state_async(Path(a["path"]), weights, opt, **kw)
    print("start", flush=True)  # snapshot taken; the write runs in the background
    future.result()
else:
    print("start", flush=True)
    ckptio.save_state(Path(a["path"]), weights, opt, **kw)
print("saved", time.monotonic() - t0, flush=True)
time.sleep(60)
"""
TIMED_SCALE = 22  # about 19 MB per checkpoint
N_TIMED = 12


def _spawn_timed(path: Path, version: int, shard: int | None, background: bool) -> subprocess.Popen[str]:
    args = {"path": str(path), "version": version, "scale": TIMED_SCALE, "shard": shard}
    args["background"] = background
    env = dict(os.environ)
    env.pop("CKPTIO_CRASH_AT", None)
    return subprocess.Popen(
        [sys.executable, "-c", TIMED_CHILD, json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_by_timing(tmp_path: Path, mode: str) -> None:
    """SIGKILL at times spread over a whole overwrite (measured first), half of them
    on a sharded checkpoint; for ``async`` while ``save_state_async`` writes in the
    background. The name always holds the complete old or the complete new one."""
    background = mode == "async"
    path = tmp_path / "ck"
    save_version(path, OLD, scale=TIMED_SCALE, durable=False)
    child = _spawn_timed(path, NEW, None, background)
    assert child.stdout is not None and child.stdout.readline().strip() == "start"
    line = child.stdout.readline().split()
    child.kill()
    child.wait()
    child.stdout.close()
    assert line[0] == "saved"
    duration = float(line[1])
    assert_is_version(path, NEW)

    outcomes = {OLD: 0, NEW: 0}
    on_disk = NEW
    for i in range(N_TIMED):
        shard = 4 << 20 if i % 2 else None
        if on_disk != OLD or i % 2:
            save_version(path, OLD, scale=TIMED_SCALE, overwrite=True, durable=False, max_shard_bytes=shard)
        child = _spawn_timed(path, NEW, shard, background)
        assert child.stdout is not None and child.stdout.readline().strip() == "start"
        time.sleep(duration * 1.2 * i / N_TIMED)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        on_disk = ckptio.open(path).step
        assert on_disk in (OLD, NEW)
        assert_is_version(path, on_disk)
        outcomes[on_disk] += 1
        assert_leftovers_harmless(tmp_path, "ck")
        ckptio.cleanup(tmp_path)
        assert side_entries(tmp_path) == []
        assert visible_entries(tmp_path) == ["ck"]
    # The kills are spread over the save: some must land before the commit.
    assert outcomes[OLD] >= 1, outcomes
