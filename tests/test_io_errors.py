"""Disk full, file too large, permission denied, missing parent: each save fails with a
clear exception (``StorageError`` carrying the errno, or ``CheckpointNotFoundError``),
leaves no temporary files, and leaves an old checkpoint intact.

- EFBIG: ``RLIMIT_FSIZE`` in a child (SIGXFSZ ignored, so write returns EFBIG), set so
  the save fails at the first file, a later file, a later shard, or the manifest.
- ENOSPC: a small tmpfs the test mounts (skipped where mounting is not allowed),
  remounted with the free space, or the free inodes, stepped up one unit at a time
  until the save succeeds: every step before that fails somewhere else in the save.
- EACCES / EPERM / EROFS: a child that drops root for ``nobody`` (root ignores
  permission bits), a sticky parent that forbids the final rename after all the data
  is written, and a read-only mount.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _faults import ForkServer, assert_tree_equal, side_entries, visible_entries

import ckptio

NOBODY = 65534


def _state(seed: int, weight_bytes: int, opt_bytes: int) -> tuple[dict[str, Any], Any]:
    rng = np.random.default_rng(seed)
    weights = {
        "a": rng.integers(0, 255, weight_bytes // 4, dtype=np.uint8),
        "b": rng.integers(0, 255, weight_bytes - weight_bytes // 4, dtype=np.uint8),
    }
    return weights, {"m": rng.integers(0, 255, opt_bytes, dtype=np.uint8), "step": seed}


def _save(path: Path, seed: int, weight_bytes: int, opt_bytes: int, **kw: Any) -> None:
    weights, opt = _state(seed, weight_bytes, opt_bytes)
    ckptio.save_state(path, weights, opt, step=seed, **kw)


def _assert_holds(path: Path, seed: int, weight_bytes: int, opt_bytes: int) -> None:
    ckptio.verify(path)
    weights, opt = _state(seed, weight_bytes, opt_bytes)
    got_w, got_opt, step, _ = ckptio.load_state_with_optimizer(path)
    assert step == seed
    assert_tree_equal({k: np.array(v) for k, v in got_w.items()}, weights)
    assert_tree_equal(got_opt, opt)


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path_factory.mktemp("fork-logs"))
    yield server
    server.close()


SAVE_CHILD = """
import errno, json, sys
from pathlib import Path
import ckptio
from test_io_errors import _save
a = json.loads(sys.argv[1])
try:
    _save(Path(a["path"]), a["seed"], a["w"], a["o"], overwrite=a["overwrite"],
          max_shard_bytes=a.get("shard"))
    out = {"ok": True}
except Exception as e:
    out = {"ok": False, "type": type(e).__name__, "errno": getattr(e, "errno", None),
           "message": str(e), "filename": getattr(e, "filename", None)}
print("RESULT", json.dumps(out, default=str))
"""

FSIZE_PREAMBLE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""

# Everything the child imports must be imported before root is dropped: the
# interpreter's own files may live where nobody cannot read (/root/.pyenv).
DROP_ROOT = f"""
import json, os, sys, tempfile, traceback
import numpy, ckptio, ckptio.errors, test_io_errors
with tempfile.TemporaryDirectory() as d:  # a warm-up pulls in lazy imports
    test_io_errors._save(os.path.join(d, "ck"), 0, 10, 10)
    ckptio.load_state_with_optimizer(os.path.join(d, "ck"))
    try:
        ckptio.load_state(os.path.join(d, "none"))
    except ckptio.CkptioError:
        pass
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
"""


def _child_save(forks: ForkServer, path: Path, *, preamble: str, **args: Any) -> dict[str, Any]:
    args = {"path": str(path), "overwrite": True, **args}
    rc, output = forks.run(SAVE_CHILD, json.dumps(args), preamble=preamble)
    assert rc == 0, output
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


# -- EFBIG -------------------------------------------------------------------------
# (weights bytes, optimizer bytes, shard size, file size limit): where the limit bites.
FSIZE_CASES = {
    "first-file": (40_000, 1_000, None, 20_000),
    "second-file": (1_000, 40_000, None, 20_000),
    "later-shard": (60_000, 1_000, 20_000, 30_000),  # shard 1 holds 15 kB, shard 2 45 kB
    "manifest": (100, 100, None, 600),  # tensor files ~300 B, manifest ~1 kB
}


@pytest.mark.parametrize("case", list(FSIZE_CASES))
@pytest.mark.parametrize("overwrite", [False, True], ids=["fresh", "overwrite"])
def test_file_too_large(forks: ForkServer, tmp_path: Path, case: str, overwrite: bool) -> None:
    w, o, shard, limit = FSIZE_CASES[case]
    path = tmp_path / "ck"
    if overwrite:
        _save(path, 1, w, o, max_shard_bytes=shard)
    r = _child_save(forks, path, preamble=FSIZE_PREAMBLE.format(limit=limit), seed=2, w=w, o=o, shard=shard)
    assert not r["ok"], "the limit must make the save fail"
    assert r["type"] == "StorageError" and r["errno"] == errno.EFBIG, r
    assert r["filename"] and r["filename"] in r["message"], r
    if case == "manifest":
        assert r["filename"].endswith("ckptio.json"), r
    elif case == "second-file":
        assert r["filename"].endswith("optimizer.safetensors"), r
    elif case == "later-shard":
        assert "-of-" in r["filename"] and "00001-of" not in r["filename"], r
    assert side_entries(tmp_path) == [], "temporary files left behind"
    if overwrite:
        _assert_holds(path, 1, w, o)
    else:
        assert visible_entries(tmp_path) == []


# -- ENOSPC on a small tmpfs ----------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # CI runs as root: there a tmpfs that cannot be mounted fails the test.
    skip_or_fail = pytest.fail if os.environ.get("CI") else pytest.skip
    if os.geteuid() != 0 or not shutil.which("mount"):
        skip_or_fail("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=1000", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True, capture_output=True)


def _sweep(mnt: Path, unit: str) -> list[str]:
    """Steps the free ``unit`` ('pages' or 'inodes') up from zero; each save that fails
    must fail cleanly. Returns the failing operations seen, in order."""
    w, o = 20_000, 9_000
    path = mnt / "ck"
    _save(path, 1, w, o, max_shard_bytes=8_000)
    st = os.statvfs(mnt)
    used_pages = st.f_blocks - st.f_bfree
    used_inodes = st.f_files - st.f_ffree
    ops = []
    for extra in range(64):
        if unit == "pages":
            _remount(mnt, f"size={(used_pages + extra) * st.f_frsize}")
        else:
            _remount(mnt, f"nr_inodes={used_inodes + extra}")
        try:
            _save(path, 2, w, o, overwrite=True, max_shard_bytes=8_000)
        except ckptio.StorageError as e:
            assert e.errno == errno.ENOSPC, e
            assert e.filename and str(e.filename) in str(e)
            assert side_entries(mnt) == [], "temporary files left behind"
            _assert_holds(path, 1, w, o)
            ops.append(str(e).split("] ", 1)[-1].split(" /")[0])
            continue
        _assert_holds(path, 2, w, o)
        assert side_entries(mnt) == []
        return ops
    raise AssertionError(f"the save never succeeded: {ops}")


def test_disk_full_at_every_step(tmpfs: Path) -> None:
    ops = _sweep(tmpfs, "pages")
    # No blocks for the first shard, for later shards (fallocate), then for the shard
    # index and the manifest (write).
    assert len(ops) >= 5 and {"allocate", "write"} <= set(ops), ops


def test_out_of_inodes_at_every_step(tmpfs: Path) -> None:
    ops = _sweep(tmpfs, "inodes")
    # The staging directory, each tensor file, the index, the manifest.
    assert len(ops) >= 5 and {"create staging directory", "create"} <= set(ops), ops


def test_read_only_filesystem(tmpfs: Path) -> None:
    path = tmpfs / "ck"
    _save(path, 1, 1000, 1000)
    _remount(tmpfs, "ro")
    with pytest.raises(ckptio.StorageError) as info:
        _save(path, 2, 1000, 1000, overwrite=True)
    assert info.value.errno == errno.EROFS
    _assert_holds(path, 1, 1000, 1000)
    assert side_entries(tmpfs) == []
    ckptio.load_state(path)  # reading a read-only checkpoint is fine


# -- permissions --------------------------------------------------------------------
@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="ckptio-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("overwrite", [False, True], ids=["fresh", "overwrite"])
def test_permission_denied_parent(forks: ForkServer, shared_dir: Path, overwrite: bool) -> None:
    parent = shared_dir / "root-only"
    parent.mkdir(mode=0o755)
    path = parent / "ck"
    if overwrite:
        _save(path, 1, 3000, 2000)
    r = _child_save(forks, path, preamble=DROP_ROOT, seed=2, w=3000, o=2000)
    assert r["type"] == "StorageError" and r["errno"] == errno.EACCES, r
    assert side_entries(parent) == []
    if overwrite:
        _assert_holds(path, 1, 3000, 2000)
    else:
        assert visible_entries(parent) == []


def test_permission_denied_unsearchable_parent(forks: ForkServer, shared_dir: Path) -> None:
    parent = shared_dir / "locked"
    parent.mkdir(mode=0o700)
    r = _child_save(forks, parent / "ck", preamble=DROP_ROOT, seed=2, w=100, o=100)
    assert r["type"] == "StorageError" and r["errno"] == errno.EACCES, r
    assert list(parent.iterdir()) == []


def test_permission_denied_at_commit_after_all_data(forks: ForkServer, shared_dir: Path) -> None:
    """A sticky, world-writable parent (like /tmp): ``nobody`` may stage and write the
    whole new checkpoint, but not move root's old one: the swap fails with EPERM after
    everything was written, and the staging directory must still go."""
    parent = shared_dir / "sticky"
    parent.mkdir()
    parent.chmod(0o1777)
    path = parent / "ck"
    _save(path, 1, 30_000, 20_000)
    r = _child_save(forks, path, preamble=DROP_ROOT, seed=2, w=30_000, o=20_000)
    assert r["type"] == "StorageError" and r["errno"] in (errno.EPERM, errno.EACCES), r
    assert side_entries(parent) == [], "the staging directory was left behind"
    _assert_holds(path, 1, 30_000, 20_000)


READ_CHILD = """
import json, sys
import ckptio
try:
    ckptio.load_state(sys.argv[1])
    out = {"ok": True}
except Exception as e:
    out = {"ok": False, "type": type(e).__name__, "errno": getattr(e, "errno", None), "message": str(e)}
print("RESULT", json.dumps(out, default=str))
"""


def test_permission_denied_reading(forks: ForkServer, shared_dir: Path) -> None:
    path = shared_dir / "ck"
    _save(path, 1, 100, 100)
    for f in path.iterdir():
        if f.name != "ckptio.json":
            f.chmod(0o600)
    rc, output = forks.run(READ_CHILD, str(path), preamble=DROP_ROOT)
    assert rc == 0, output
    r = json.loads(next(x for x in output.splitlines() if x.startswith("RESULT "))[7:])
    assert r["type"] == "StorageError" and r["errno"] == errno.EACCES, r
    assert ".safetensors" in r["message"]


# -- missing parent -----------------------------------------------------------------
def test_parent_missing(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "ck"
    with pytest.raises(ckptio.CheckpointNotFoundError) as info:
        _save(path, 1, 10, 10)
    assert str(tmp_path / "no" / "such") in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):  # the built-in users catch
        ckptio.save_weights_for_sampler(path, {"a": np.zeros(1)})


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises((ckptio.CkptioError, ValueError, OSError)) as info:
        _save(tmp_path / "file" / "ck", 1, 10, 10)
    assert "file" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
