"""Cleanup of leftovers: it removes only what it can prove dead, and nothing named like
a leftover can block a save, make cleanup fail, or be followed or restored.

- A save proves it is alive by an exclusive ``flock`` on its staging directory (and on
  an old checkpoint it moved aside); the pid in the name proves nothing, since the
  saver may be in another PID namespace or on another host. Here a directory named
  with a pid that does not exist locally is locked by a live child process.
- Files, symlinks, FIFOs and directories planted under leftover names (anyone can in
  a shared sticky directory) never make a save fail; cleanup skips what it did not
  make, with the reason, and never follows a symlink.
- Leftovers of saves to non-UTF-8 names are found and removed.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from _faults import assert_is_version, save_version, side_entries

import ckptio
from ckptio.cli import main

# A pid no process has here (above the kernel's pid_max), as a saver in another PID
# namespace or on another host appears.
FOREIGN_PID = 2147483646
HEX = "0123456789abcdef"

HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


@contextmanager
def locked_by_another_process(directory: Path) -> Iterator[None]:
    """Holds an exclusive flock on ``directory`` from a live child process, as a save
    in progress does on its staging directory."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        yield
    finally:
        child.communicate(timeout=30)
    assert child.returncode == 0


def test_a_locked_staging_dir_of_an_unknown_pid_is_left_alone(tmp_path: Path) -> None:
    """Regression: a pid unknown locally was taken for a dead saver, and cleanup
    deleted the live save of a process in another PID namespace."""
    staging = tmp_path / f".ck.ckptio-tmp-{FOREIGN_PID}-{HEX}"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"a save in progress")
    with locked_by_another_process(staging):
        result = ckptio.cleanup(tmp_path)
        assert result == []
        assert [(p, why.split(":")[0]) for p, why in result.skipped] == [(staging, "in use")]
        # Neither does the cleanup that a save to that name runs first.
        save_version(tmp_path / "ck", 1)
        assert (staging / "model.safetensors").read_bytes() == b"a save in progress"
    # Once the lock is released (the saver died), the leftover is removed.
    assert ckptio.cleanup(tmp_path) == [staging]
    assert side_entries(tmp_path) == []
    assert_is_version(tmp_path / "ck", 1)


def test_a_locked_old_checkpoint_moved_aside_is_not_put_back(tmp_path: Path) -> None:
    """The two-rename fallback moves the old checkpoint aside before the new one takes
    the name; while its saver lives, cleanup must not put it back under the name."""
    save_version(tmp_path / "ck", 1)
    aside = tmp_path / f".ck.ckptio-old-{FOREIGN_PID}-{HEX}"
    (tmp_path / "ck").rename(aside)
    with locked_by_another_process(aside):
        result = ckptio.cleanup(tmp_path)
        assert result == [] and [p for p, _ in result.skipped] == [aside]
        assert not (tmp_path / "ck").exists()
    assert ckptio.cleanup(tmp_path) == [aside]
    assert_is_version(tmp_path / "ck", 1)


def _plant(parent: Path, outside: Path) -> dict[str, Path]:
    """Entries of every type under leftover names of ``ck``, none made by ckptio."""
    entries = {
        "file": parent / f".ck.ckptio-tmp-{FOREIGN_PID}-{HEX}",
        "fifo": parent / f".ck.ckptio-tmp-{FOREIGN_PID - 1}-{HEX}",
        "symlink to a checkpoint": parent / f".ck.ckptio-tmp-{FOREIGN_PID - 2}-{HEX}",
        "old symlink to a checkpoint": parent / f".ck.ckptio-old-{FOREIGN_PID - 3}-{HEX}",
        "dangling old symlink": parent / f".ck.ckptio-old-{FOREIGN_PID - 4}-{HEX}",
    }
    entries["file"].write_bytes(b"planted")
    os.mkfifo(entries["fifo"])
    entries["symlink to a checkpoint"].symlink_to(outside)
    entries["old symlink to a checkpoint"].symlink_to(outside)
    entries["dangling old symlink"].symlink_to(parent / "nowhere")
    return entries


def test_leftovers_of_any_type_never_block_a_save(tmp_path: Path) -> None:
    """Regression: a regular file named like a dead save's leftover made every save to
    that name fail with ENOTDIR, and cleanup() abort; a planted ``ckptio-old`` symlink
    was "restored" as the checkpoint."""
    outside = tmp_path / "outside"
    save_version(outside, 7)  # what the symlinks point to: it must stay untouched
    parent = tmp_path / "shared"
    parent.mkdir()
    planted = _plant(parent, outside)
    # A directory under a leftover name that holds a symlink out and a FIFO: removed
    # as a dead save's leftover, without following or opening either.
    dead = parent / f".ck.ckptio-tmp-{FOREIGN_PID - 5}-{HEX}"
    dead.mkdir()
    (dead / "link").symlink_to(outside)
    os.mkfifo(dead / "fifo")

    save_version(parent / "ck", 1)
    assert_is_version(parent / "ck", 1)
    save_version(parent / "ck", 2, overwrite=True)
    assert_is_version(parent / "ck", 2)
    assert not (parent / "ck").is_symlink()

    result = ckptio.cleanup(parent)
    assert result == []  # the dead directory went with the first save
    assert not dead.exists()
    skipped = dict(result.skipped)
    assert sorted(skipped) == sorted(planted.values())
    assert all(why.startswith("not a directory") for why in skipped.values()), skipped
    for path in planted.values():
        assert path.is_symlink() or path.exists(), path
    assert_is_version(outside, 7)
    assert sorted(p.name for p in outside.iterdir()) == [
        "ckptio.json",
        "model.safetensors",
        "optimizer.safetensors",
    ]


def test_a_planted_old_symlink_never_becomes_the_checkpoint(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    save_version(outside, 7)
    parent = tmp_path / "shared"
    parent.mkdir()
    (parent / f".ck.ckptio-old-{FOREIGN_PID}-{HEX}").symlink_to(outside)
    assert ckptio.cleanup(parent) == []
    assert not (parent / "ck").exists() and not (parent / "ck").is_symlink()
    save_version(parent / "ck", 1)  # a fresh save to the name, not a replace
    assert not (parent / "ck").is_symlink()
    assert_is_version(parent / "ck", 1)
    assert_is_version(outside, 7)


def test_cli_cleanup_reports_what_it_skipped(tmp_path: Path, capsys) -> None:
    (tmp_path / f".ck.ckptio-tmp-{FOREIGN_PID}-{HEX}").write_bytes(b"planted")
    dead = tmp_path / f".ck.ckptio-tmp-{FOREIGN_PID}-{HEX[::-1]}"
    dead.mkdir()
    assert main(["cleanup", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"cleaned  {dead}",
        f"skipped  {tmp_path / f'.ck.ckptio-tmp-{FOREIGN_PID}-{HEX}'}: not a directory, so not left"
        " by ckptio (it leaves only directories); left alone",
    ]


def test_leftovers_of_non_utf8_names_are_cleaned(tmp_path: Path) -> None:
    """Regression: leftover names were parsed as UTF-8, so those of a save to a
    non-UTF-8 name were never removed."""
    name = os.fsdecode(b"ck\xff")
    path = tmp_path / name
    ckptio.save_weights_for_sampler(path, {"w": np.arange(3)})
    dead = tmp_path / os.fsdecode(b".ck\xff.ckptio-tmp-%d-%s" % (FOREIGN_PID, HEX.encode()))
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    assert ckptio.cleanup(tmp_path) == [dead]
    dead.mkdir()
    ckptio.save_weights_for_sampler(path, {"w": np.arange(4)}, overwrite=True)
    assert side_entries(tmp_path) == []
    assert list(ckptio.load_state(path)["w"]) == [0, 1, 2, 3]


def test_lock_is_per_open_file_not_per_process(tmp_path: Path) -> None:
    """A save in this very process (another thread, an async save) is protected too:
    flock conflicts between two opens of the directory even in one process."""
    staging = tmp_path / f".ck.ckptio-tmp-{os.getpid()}-{HEX}"
    staging.mkdir()
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert ckptio.cleanup(tmp_path) == [] and staging.is_dir()
    finally:
        os.close(fd)
    assert ckptio.cleanup(tmp_path) == [staging]
