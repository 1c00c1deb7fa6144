"""Shared fixtures: a fresh checkpoint path per test; the test build with crash points."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ckpt_path(tmp_path: Path) -> Path:
    """Where a test saves its checkpoint (does not exist yet)."""
    return tmp_path / "ckpt"


@pytest.fixture(scope="session")
def fault_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment (``PYTHONPATH``) under which a child process imports the ckptio
    test build that has crash points (see ``_faults.make_fault_package``); built once
    per session, about a minute from scratch."""
    from _faults import make_fault_package

    return make_fault_package(tmp_path_factory.mktemp("fault-build"))
