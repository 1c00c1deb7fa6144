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
