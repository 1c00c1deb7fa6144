"""Shared fixtures: a fresh checkpoint path per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ckpt_path(tmp_path: Path) -> Path:
    """Where a test saves its checkpoint (does not exist yet)."""
    return tmp_path / "ckpt"
