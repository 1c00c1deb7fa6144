"""The README's quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch):
    text = README.read_text()
    quick_start = text[text.index("## Quick start") : text.index("## Training loop")]
    (code,) = re.findall(r"```python\n(.*?)```", quick_start, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["sampler-001200", "step-001200"]


def test_object_storage_example_runs(tmp_path, monkeypatch, s3url):
    """The README's S3 example, against the test server (its bucket in place of yours)."""
    text = README.read_text()
    section = text[text.index("## Object storage") : text.index("## Hugging Face and PEFT")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert "s3://my-bucket/run-7" in code
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpts").mkdir()
    exec(compile(code.replace("s3://my-bucket/run-7", s3url), "README.md", "exec"), {})
    import ckptio

    assert ckptio.open(tmp_path / "ckpts" / "step-000100").step == 100
    assert ckptio.verify(f"{s3url}/step-000100") == []


def test_dcp_example_runs(tmp_path):
    """The README's DCP example, as the script it is (two gloo ranks, then one process)."""
    import os
    import socket
    import subprocess
    import sys

    text = README.read_text()
    section = text[text.index("## Distributed checkpoints") : text.index("## What you get")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (tmp_path / "dcp_example.py").write_text(code)
    with socket.socket() as s:  # a free port, so parallel runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_PORT": str(port)}
    done = subprocess.run(
        [sys.executable, "dcp_example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import ckptio

    assert ckptio.open(tmp_path / "ckpts" / "dcp-step-3").kind == "dcp"
    assert ckptio.verify(tmp_path / "ckpts" / "dcp-converted") == []
