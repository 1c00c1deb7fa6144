"""Durable saves: the order of the syncs, and failing fsyncs.

A durable local save writes every file (the manifest last), then fsyncs all of them
and the staging directory at once, renames the directory into place, and fsyncs the
parent (docs/GUARANTEES.md, docs/ENGINE.md "Small saves"). A power loss cannot be
staged in a test, so the order is checked where it is decided, in the system calls:
the save runs under ``strace -y``, which names the file behind every descriptor, and
the test reads back which fsyncs completed before the rename. A failing fsync comes
from the fault-injection build (``CKPTIO_FAIL_AT=fsync#N``, src/fault.rs): every one
of a save's fsyncs is made to fail in turn.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _faults import ForkServer, side_entries, visible_entries

import ckptio

SAVE = """
import errno, json, sys
import numpy as np, ckptio

def save(a):
    rng = np.random.default_rng(a["seed"])
    weights = {f"layer{i}.lora_A": rng.standard_normal(a["elems"]).astype(np.float32) for i in range(a["n"])}
    kw = dict(durable=a["durable"], overwrite=a["overwrite"], max_shard_bytes=a["shard"])
    if a["state"]:
        ckptio.save_state(a["path"], weights, {"m": weights["layer0.lora_A"] * 2}, step=1, **kw)
    else:
        ckptio.save_weights_for_sampler(a["path"], weights, extra_files={"config.json": {"r": 8}}, **kw)
"""
SAVE_CHILD = (
    SAVE
    + """
save(json.loads(sys.argv[1]))
print("saved")
"""
)
# Prints how the save ended instead of raising.
SAVE_OR_FAIL_CHILD = (
    SAVE
    + """
try:
    save(json.loads(sys.argv[1]))
except ckptio.StorageError as e:
    print("failed", errno.errorcode.get(e.errno), e.filename)
else:
    print("saved")
"""
)

# (sampler or state, tensors, elements each, shard bytes): one tensor file; shards
# with their index files; more shards than the writer holds open at once (64).
SHAPES = {
    "sampler": (False, 200, 256, None),
    "sharded": (True, 12, 256, 4096),
    "many_shards": (False, 70, 64, 256),
}


def _args(path: Path, shape: str, *, durable: bool = True, overwrite: bool = False, seed: int = 0) -> str:
    state, n, elems, shard = SHAPES[shape]
    return json.dumps(
        {"path": str(path), "state": state, "n": n, "elems": elems, "shard": shard}
        | {"durable": durable, "overwrite": overwrite, "seed": seed}
    )


SYSCALL = re.compile(r"^\d+\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<rc>-?\d+)")
FD_PATH = re.compile(r"^-?\d+<(?P<path>[^>]*)>")


def _trace(tmp_path: Path, args: str) -> list[tuple[str, str, int]]:
    """Runs a save child under strace; returns its completed sync-related calls in
    order as (name, arguments, return value)."""
    if shutil.which("strace") is None:
        # .ci/run installs strace: in CI its absence is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("strace is not installed")
    log = tmp_path / "strace.log"
    calls = "fsync,fdatasync,sync_file_range,syncfs,sync,renameat2,rename,renameat"
    cmd = ["strace", "-f", "-qq", "-y", "-e", f"trace={calls}", "-o", str(log)]
    result = subprocess.run(
        [*cmd, sys.executable, "-c", SAVE_CHILD, args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    if result.returncode != 0 and "ptrace" in result.stderr and not os.environ.get("CI"):
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0 and "saved" in result.stdout, result.stderr
    # With -f, a call that another thread's call interrupts in the log is printed in two
    # pieces ("<unfinished ...>", then "<... NAME resumed>"): join them.
    lines = log.read_text().splitlines()
    pending: dict[str, str] = {}
    out = []
    for line in lines:
        pid = line.split(" ", 1)[0]
        if line.endswith("<unfinished ...>"):
            pending[pid] = line[: -len("<unfinished ...>")].rstrip()
            continue
        if "resumed>" in line:
            line = pending.pop(pid) + line.split("resumed>", 1)[1]
        m = SYSCALL.match(line)
        if m:
            out.append((m["name"], m["args"], int(m["rc"])))
    return out


def _fd_path(args: str) -> str:
    m = FD_PATH.match(args)
    assert m is not None, args
    return m["path"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "replace"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_file_and_the_staging_directory_are_fsynced_before_the_rename(
    tmp_path: Path, shape: str, overwrite: bool
) -> None:
    target = tmp_path / "ck"
    if overwrite:
        ckptio.save_weights_for_sampler(target, {"old": np.zeros(3, np.float32)})
    calls = _trace(tmp_path, _args(target, shape, overwrite=overwrite))
    renames = [i for i, (name, args, rc) in enumerate(calls) if name.startswith("rename") and rc == 0]
    assert len(renames) == 1, calls
    at = renames[0]
    staging = Path(re.findall(r'"([^"]*)"', calls[at][1])[0])
    assert staging.parent == tmp_path and staging.name.startswith(".ck.ckptio-tmp-"), staging
    synced_before = {_fd_path(args) for name, args, rc in calls[:at] if name == "fsync" and rc == 0}
    names = sorted(p.name for p in target.iterdir())
    # Every file of the committed checkpoint was durable under the staging name, and
    # so was the directory listing them, before the name could point at it.
    missing = [n for n in names if str(staging / n) not in synced_before]
    assert not missing, (missing, sorted(synced_before))
    assert str(staging) in synced_before
    # The rename itself is made durable before the save returns.
    synced_after = [_fd_path(args) for name, args, rc in calls[at + 1 :] if name == "fsync" and rc == 0]
    assert str(tmp_path) in synced_after
    # Never a whole-filesystem flush: it would wait for other processes' data.
    assert not [c for c in calls if c[0] in ("syncfs", "sync")]
    if shape == "many_shards":
        assert len([n for n in names if n.endswith(".safetensors")]) > 64
    ckptio.verify(target)


def test_a_save_that_is_not_durable_syncs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "ck"
    calls = _trace(tmp_path, _args(target, "sharded", durable=False))
    synced = [c for c in calls if c[0] in ("fsync", "fdatasync", "sync_file_range", "syncfs", "sync")]
    assert not synced, synced
    assert [c[0] for c in calls] == ["renameat2"]
    ckptio.verify(target)


# -- failing fsyncs (fault-injection build) ---------------------------------------------
@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory, fault_env: dict[str, str]) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path_factory.mktemp("fork-logs"), env=fault_env)
    yield server
    server.close()


def _weights(path: Path) -> dict[str, np.ndarray]:
    return dict(ckptio.load_state(path, copy=True))


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "replace"])
@pytest.mark.parametrize("shape", ["sampler", "sharded"])
def test_each_failing_fsync_fails_the_save_and_changes_nothing(
    forks: ForkServer, tmp_path: Path, shape: str, overwrite: bool
) -> None:
    """The N-th fsync of the save fails with EIO, for N = 1, 2, ... until the save has
    fewer fsyncs than N and succeeds: each failure raises StorageError(EIO), removes
    the staging directory and leaves the name as it was."""
    target = tmp_path / "ck"
    old = None
    if overwrite:
        rc, out = forks.run(SAVE_CHILD, _args(target, shape, seed=1))
        assert rc == 0, out
        old = _weights(target)
    failures = 0
    for n in range(1, 400):
        args = _args(target, shape, overwrite=overwrite, seed=2)
        rc, out = forks.run(SAVE_OR_FAIL_CHILD, args, env={"CKPTIO_FAIL_AT": f"fsync#{n}"})
        assert rc == 0, out
        assert side_entries(tmp_path) == [], (n, out)
        if "saved" in out:
            break
        assert f"failed {errno.errorcode[errno.EIO]}" in out, (n, out)
        failures += 1
        assert visible_entries(tmp_path) == (["ck"] if overwrite else []), (n, out)
        if overwrite:
            got = _weights(target)
            assert old is not None and got.keys() == old.keys()
            assert all(np.array_equal(got[k], old[k]) for k in old), n
    else:
        pytest.fail("the save never succeeded")
    # Every file plus the staging directory: at least a tensor file, the side file or
    # index, the manifest and the directory.
    assert failures >= 4, failures
    ckptio.verify(target)
