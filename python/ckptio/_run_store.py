"""Where a ``Run`` touches storage. Every read, write and delete a run makes goes
through these functions, each given the run's root or a checkpoint's path; the byte
work happens in the core (src/lifecycle.rs). Today a local directory; another backend
(``s3://``) replaces this module, not the ``Run``.

Layout: ``ROOT/weights/NAME/`` holds ``state`` checkpoints, ``ROOT/sampler_weights/NAME/``
``sampler`` checkpoints, as in Tinker's ``tinker://RUN/weights/NAME`` paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from . import _core, api
from .api import CleanupResult
from .errors import CheckpointNotFoundError

KIND_DIRS = {"state": "weights", "sampler": "sampler_weights"}


class Summary(NamedTuple):
    """What a checkpoint's manifest says, read without opening its tensor files."""

    kind: str
    checkpoint_id: str
    user_json: str
    size_bytes: int  # every listed file + the manifest
    modified: float  # manifest mtime, seconds since the epoch


def checkpoint_path(root: Path, kind: str, name: str) -> Path:
    return root / KIND_DIRS[kind] / name


def exists(root: Path) -> bool:
    """Is there a run (a directory) at ``root``?"""
    return root.is_dir()


def is_run(path: Path) -> bool:
    """Does ``path`` look like a run root rather than a checkpoint?"""
    return not (path / "ckptio.json").exists() and any((path / d).is_dir() for d in KIND_DIRS.values())


def prepare(root: Path, kind: str) -> None:
    """Creates the run's directory for ``kind`` checkpoints (and the root) if needed."""
    os.makedirs(root / KIND_DIRS[kind], exist_ok=True)


def describe(path: Path) -> Summary:
    """The manifest of one checkpoint, fully checked; CheckpointNotFoundError if none."""
    return Summary(*_core.describe_checkpoint(path))


def scan(root: Path, kind: str) -> tuple[list[tuple[str, Summary]], list[tuple[str, str]]]:
    """([(name, summary)], [(name, why it is unreadable)]) of one kind; nothing for a
    kind the run has never saved."""
    try:
        good, bad = _core.list_checkpoints(root / KIND_DIRS[kind])
    except CheckpointNotFoundError:
        return [], []
    return [(name, Summary(*s)) for name, s in good], bad


def delete(path: Path, *, durable: bool = True) -> None:
    _core.delete_checkpoint(path, durable=durable)


def update_run_entry(path: Path, entry_json: str, checkpoint_id: str, *, durable: bool = True) -> Summary:
    """Replaces the manifest's ``user.run`` entry, atomically, if the checkpoint is
    still the save ``checkpoint_id`` (CheckpointNotFoundError otherwise)."""
    summary = _core.update_user_section(path, "run", entry_json, expect_id=checkpoint_id, durable=durable)
    return Summary(*summary)


def remove_leftovers(root: Path, kind: str) -> list[Path]:
    """What dead processes' saves and deletes left in one kind's directory (cheap: one
    listing); runs after each save."""
    return list(api.cleanup(root / KIND_DIRS[kind]))


def cleanup(root: Path) -> CleanupResult:
    """Every leftover of dead processes in the run, manifest edits inside checkpoints
    included."""
    done: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for d in KIND_DIRS.values():
        if (root / d).is_dir():
            result = api.cleanup(root / d)
            done += result
            skipped += result.skipped
    return CleanupResult(done, skipped)
