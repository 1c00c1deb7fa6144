"""Smoke tests of ``ckptio bench --workload dcp``: one tiny run from 2 gloo ranks gives a
row per library and operation, checked loads, the targets and its files, and removes
everything it wrote; bad arguments give clear errors. Speeds are never asserted."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed.checkpoint  # noqa: F401  # a hard dependency of these tests: never skipped

import ckptio.bench.dcpcli  # noqa: F401
from ckptio.cli import main

LIBRARIES = ("ckptio", "DCP FileSystem", "DCP HuggingFace")
ALL_OPERATIONS = ("save", "load hot", "load cold", "load resharded")
ASYNC_OPERATIONS = ("stage", "async save")  # ckptio and DCP FileSystem (both AsyncStagers)


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``ckptio bench --workload dcp --ranks 2 --size 2M --runs 1`` with JSON and markdown."""
    out = tmp_path_factory.mktemp("bench-dcp-out")
    (out / "work").mkdir()
    args = ["--workload", "dcp", "--ranks", "2", "--size", "2M", "--runs", "1", "--no-progress"]
    args += ["--dir", str(out / "work"), "--json", str(out / "d.json"), "--markdown", str(out / "d.md")]
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio.cli", "bench", *args], capture_output=True, text=True, timeout=600
    )
    return proc, out


def test_dcp_run_has_a_row_per_library_and_operation(
    dcp_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = dcp_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads((out / "d.json").read_text())
    assert data["suite"] == "dcp" and data["settings"]["ranks"] == 2
    assert data["skipped"] == {} and data["failures"] == []  # all three measured, every load checked
    assert [w["name"] for w in data["workloads"]] == ["llm"]
    rows = {(r["library"], r["operation"]): r for r in data["rows"]}
    expected = {(lib, op) for lib in LIBRARIES for op in ALL_OPERATIONS}
    expected |= {(lib, op) for lib in LIBRARIES[:2] for op in ASYNC_OPERATIONS}
    assert set(rows) == expected
    for (library, op), row in rows.items():
        assert row["runs"] == 1 and row["seconds"] > 0 and row["gbps"] > 0
        assert row["vs_ckptio"] is not None and row["vs_raw"] is not None  # vs ckptio, vs DCP FileSystem
        assert (row["stall"] is not None) == (op == "async save"), (library, op)
    cold = [m for m in data["measurements"] if m["operation"] == "load cold"]
    assert len(cold) == 3 and all(m["resident_before"] < 0.5 for m in cold)  # they were cold
    targets = {t["number"]: t for t in data["targets"]}
    assert set(targets) == {"D1", "D2", "D3", "D4", "D5"}
    assert all(t["met"] in (True, False) for t in targets.values())  # every one measured


def test_dcp_run_prints_the_table_and_removes_every_file(
    dcp_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = dcp_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert text.startswith("ckptio bench (DCP)")
    assert "2 ranks, one process each (gloo" in text and "llm: " in text and "targets (DCP)" in text
    header = next(line for line in text.splitlines() if line.startswith("operation"))
    assert "vs ckptio" in header and "vs FileSystem" in header
    for library in LIBRARIES:
        assert f" {library} " in text
    md = (out / "d.md").read_text()
    assert md.startswith("# ckptio bench results: torch.distributed.checkpoint")
    assert "| operation | library | time | GB/s | vs ckptio | vs FileSystem | peak RSS | notes |" in md
    assert list((out / "work").iterdir()) == []


def _error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    try:
        code = main(["bench", *args])
    except SystemExit as e:  # argparse errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_dcp_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "--ranks applies to --workload dcp only" in _error(capsys, "--ranks", "2", "--dir", str(tmp_path))
    assert "runs alone" in _error(capsys, "--workload", "dcp,llm")
    assert "positive" in _error(capsys, "--workload", "dcp", "--ranks", "0")
    assert "--plot" in _error(capsys, "--workload", "dcp", "--plot", str(tmp_path / "p.png"))
    assert "local files" in _error(capsys, "--workload", "dcp", "--storage", "s3://b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["dcpcatalog", "dcpcli", "dcpreport", "dcprunner"])
def test_dcp_bench_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"ckptio.bench.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
