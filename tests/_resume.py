"""Shared by the resume tests: run a test file as a worker in a new process, and compare
states bit for bit. Imports numpy only (the numpy resume checks its worker never
imports torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


def assert_bitwise_equal(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], what: str) -> None:
    """Same entries, dtypes, shapes and bytes."""
    assert sorted(got) == sorted(expected), f"{what}: different entries"
    differ = [
        name
        for name, a in expected.items()
        if (a.dtype, a.shape) != (got[name].dtype, got[name].shape) or a.tobytes() != got[name].tobytes()
    ]
    assert not differ, f"{what}: not bitwise equal: {differ}"


def resume_in_new_process(script: str, checkpoint: Path, out: Path) -> dict[str, np.ndarray]:
    """Runs ``script CHECKPOINT OUT`` with this interpreter; returns the arrays it wrote."""
    proc = subprocess.run(
        [sys.executable, script, str(checkpoint), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
