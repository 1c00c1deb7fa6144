"""The ``ckptio`` commands for runs: ``ls``, ``rm``, ``ttl``, and ``inspect`` /
``verify`` / ``cleanup`` given a run. Human tables, ``--json``, the confirmation prompt
of ``rm`` (driven through a pseudo-terminal), and one-line errors for a missing run or
name."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from _runs import FakeClock, names, save

import ckptio
from ckptio import _core
from ckptio.cli import human_bytes, main


def _cli(*args: str, tty_answer: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the command in a new process; with ``tty_answer``, stdin is a terminal
    that has that line typed into it."""
    cmd = [sys.executable, "-m", "ckptio.cli", *args]
    if tty_answer is None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    controller, terminal = pty.openpty()
    try:
        pipe = subprocess.PIPE
        proc = subprocess.Popen(cmd, stdin=terminal, stdout=pipe, stderr=pipe, text=True)
        os.write(controller, tty_answer.encode() + b"\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def run(tmp_path: Path) -> ckptio.Run:
    """s1, s2, s3 (state; s1 expired a year ago, s3 expires in a day) and x3 (sampler)."""
    r = ckptio.Run(tmp_path / "run")
    save(r, "state", "s2", 2, metadata={"note": "second"})
    save(r, "state", "s3", 3, ttl=86400, loop_state={"next_batch": 30})
    save(r, "sampler", "x3", 3)
    past = FakeClock(tick=1)  # last, or the saves above would delete it as expired
    past.now = datetime.now(UTC) - timedelta(days=365)
    save(ckptio.Run(tmp_path / "run", clock=past), "state", "s1", 1, ttl=60)
    return r


def test_ls_table(run: ckptio.Run) -> None:
    out = _cli("ls", str(run.root))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "step", "size", "created", "(UTC)", "expires", "(UTC)"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["s1", "s2", "s3", "x3"]
    size = human_bytes(run.get("s2").size_bytes)
    assert rows["s2"].split()[1:3] == ["state", "2"] and size in rows["s2"] and "never" in rows["s2"]
    assert "(expired)" in rows["s1"] and "(expired)" not in rows["s3"]
    assert rows["x3"].split()[1] == "sampler"
    only = _cli("ls", str(run.root), "--kind", "sampler")
    assert [line.split()[0] for line in only.stdout.splitlines()[1:]] == ["x3"]


def test_ls_json(run: ckptio.Run) -> None:
    out = _cli("ls", str(run.root), "--json")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert [r["name"] for r in records] == ["s1", "s2", "s3", "x3"]
    fields = {"name", "kind", "path", "step", "size_bytes", "created", "expires_at", "loop_state", "metadata"}
    assert fields <= set(records[0])
    by_name = {r["name"]: r for r in records}
    assert by_name["s3"]["loop_state"] == {"next_batch": 30}
    assert by_name["s2"]["metadata"] == {"note": "second"}
    assert by_name["s2"]["expires_at"] is None
    created = datetime.fromisoformat(by_name["s3"]["created"])
    assert datetime.fromisoformat(by_name["s3"]["expires_at"]) - created == timedelta(days=1)
    assert created.utcoffset() == timedelta(0)
    assert Path(by_name["x3"]["path"]) == run.root / "sampler_weights" / "x3"
    assert by_name["s2"]["size_bytes"] == run.get("s2").size_bytes


def test_ls_reports_what_it_cannot_list(run: ckptio.Run) -> None:
    manifest = run.get("s2").path / "ckptio.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"second", b"sekond"))
    out = _cli("ls", str(run.root))
    assert out.returncode == 0 and "s2" not in out.stdout
    assert "not listed" in out.stderr and "s2" in out.stderr and "checksum" in out.stderr


def test_missing_run_or_name_are_one_line_errors(tmp_path: Path, run: ckptio.Run) -> None:
    for args, message in [
        (("ls", str(tmp_path / "nope")), "no run at"),
        (("rm", str(tmp_path / "nope"), "s1", "-y"), "no run at"),
        (("rm", str(run.root), "zz", "-y"), "no checkpoint named 'zz'"),
        (("rm", str(run.root), "s2", "zz", "-y"), "no checkpoint named 'zz'"),
        (("rm", str(run.root), "../s2", "-y"), "invalid checkpoint name"),
        (("rm", str(run.root)), "name what to delete"),
        (("ttl", str(run.root), "zz", "60"), "no checkpoint named 'zz'"),
        (("ttl", str(run.root), "s2", "soon"), "invalid TTL 'soon'"),
        (("ttl", str(run.root), "s2"), "or --remove"),
        (("ttl", str(run.root), "s2", "0"), "ttl must be a positive"),
        (("inspect", str(run.root), "zz"), "no checkpoint named 'zz'"),
        (("inspect", str(run.root)), "is a run: name a checkpoint"),
        (("verify", str(run.root), "zz"), "no checkpoint named 'zz'"),
    ]:
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert names(run) == ["s1", "s2", "s3", "x3"]  # nothing was deleted


def test_rm_with_yes(run: ckptio.Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rm", str(run.root), "s2", "x3", "-y"]) == 0
    assert names(run) == ["s1", "s3"]
    assert "deleted  state s2" in capsys.readouterr().out


def test_rm_before_and_expired(run: ckptio.Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rm", str(run.root), "--expired", "-y"]) == 0
    assert names(run) == ["s2", "s3", "x3"]
    assert main(["rm", str(run.root), "--before", "3", "-y"]) == 0
    assert names(run) == ["s3", "x3"]
    assert main(["rm", str(run.root), "--before", "4", "--kind", "sampler", "-y"]) == 0
    assert names(run) == ["s3"]
    assert main(["rm", str(run.root), "--expired", "-y"]) == 0
    assert "nothing to delete" in capsys.readouterr().out


def test_rm_asks_first(run: ckptio.Run) -> None:
    no_tty = _cli("rm", str(run.root), "s2")
    assert no_tty.returncode == 2 and "refusing" in no_tty.stderr and "-y" in no_tty.stderr
    declined = _cli("rm", str(run.root), "s2", tty_answer="n")
    assert declined.returncode == 1, declined.stderr
    assert "Delete these 1 checkpoint(s)" in declined.stderr and "nothing deleted" in declined.stderr
    assert "s2" in declined.stderr  # the table of what would go
    assert names(run) == ["s1", "s2", "s3", "x3"]
    accepted = _cli("rm", str(run.root), "s2", "--before", "2", tty_answer="y")
    assert accepted.returncode == 0, accepted.stderr
    assert "Delete these 2 checkpoint(s)" in accepted.stderr
    assert names(run) == ["s3", "x3"]


def test_rm_a_name_of_both_kinds_needs_the_kind(run: ckptio.Run) -> None:
    save(run, "sampler", "s2", 2)
    out = _cli("rm", str(run.root), "s2", "-y")
    assert out.returncode == 2 and "pass --kind" in out.stderr
    assert _cli("rm", str(run.root), "s2", "--kind", "sampler", "-y").returncode == 0
    assert names(run, "sampler") == ["x3"] and "s2" in names(run, "state")


def test_ttl(run: ckptio.Run) -> None:
    before = datetime.now(UTC)
    out = _cli("ttl", str(run.root), "s2", "12h", "--json")
    assert out.returncode == 0, out.stderr
    (record,) = json.loads(out.stdout)
    expires = datetime.fromisoformat(record["expires_at"])
    assert before + timedelta(hours=12) <= expires <= datetime.now(UTC) + timedelta(hours=12)
    assert run.get("s2").expires_at == expires
    out = _cli("ttl", str(run.root), "x3", "3600")  # the one kind that has it
    assert out.returncode == 0 and out.stdout.startswith("sampler x3: expires 20"), out.stdout
    out = _cli("ttl", str(run.root), "s2", "--remove")
    assert out.returncode == 0 and "expires never" in out.stdout, out.stdout
    assert run.get("s2").expires_at is None


def test_inspect_and_verify_take_a_run_and_a_name(run: ckptio.Run) -> None:
    out = _cli("inspect", str(run.root), "s3")
    assert out.returncode == 0, out.stderr
    assert "step        3" in out.stdout and str(run.root / "weights" / "s3") in out.stdout
    out = _cli("inspect", str(run.root), "x3", "--kind", "sampler")
    assert out.returncode == 0 and "sampler" in out.stdout
    out = _cli("verify", str(run.root), "s2", "x3")
    assert out.returncode == 0 and out.stdout.count("ok ") == 2, out.stdout
    everything = _cli("verify", str(run.root))
    assert everything.returncode == 0 and everything.stdout.count("ok ") == 4
    data = run.get("s2").path / "model.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    out = _cli("verify", str(run.root), "--progress")
    assert out.returncode == 1 and "FAILED" in out.stdout and 'tensor "w"' in out.stdout, out.stdout
    assert out.stdout.count("ok ") == 3
    assert "verify" in out.stderr and "\x1b[" in out.stderr  # the bar, drawn as asked


def test_verify_reports_a_damaged_manifest_in_a_run(run: ckptio.Run) -> None:
    manifest = run.get("s3").path / "ckptio.json"
    manifest.write_bytes(manifest.read_bytes()[:-20])
    out = _cli("verify", str(run.root))
    assert out.returncode == 1 and out.stdout.count("ok ") == 3
    assert "FAILED" in out.stdout and "s3" in out.stdout


def test_cleanup_of_a_run(run: ckptio.Run, capsys: pytest.CaptureFixture[str]) -> None:
    dead = "2147483646-0123456789abcdef"
    left = run.root / "sampler_weights" / f".x3.ckptio-tmp-{dead}"
    left.mkdir()
    assert main(["cleanup", str(run.root)]) == 0
    assert not left.exists() and str(left) in capsys.readouterr().out


def test_verify_with_progress_counts_every_tensor_byte(tmp_path: Path) -> None:
    weights = {f"t{i}": np.arange(1000 * (i + 1), dtype=np.float32) for i in range(5)}
    rec = ckptio.Run(tmp_path).save_state("s", weights, {"m": np.ones(300)})
    calls: list[tuple[int, int]] = []
    _core.verify_with_progress(rec.path, lambda done, total: calls.append((done, total)), 4)
    total = sum(t.nbytes for t in ckptio.open(rec).tensors)
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(t == total for _, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    _core.verify_with_progress(rec.path, lambda done, total: 1 / 0)  # a failing callback is ignored
    # It finds what verify finds.
    path = rec.path / "optimizer.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ckptio.CorruptCheckpointError) as plain:
        ckptio.verify(rec)
    with pytest.raises(ckptio.CorruptCheckpointError) as progress:
        _core.verify_with_progress(rec.path, lambda done, total: None)
    assert str(plain.value) == str(progress.value) and progress.value.tensor == "m"
    path.write_bytes(bytes(raw[:-5]) + bytes([raw[-5] ^ 0x10]) + bytes(raw[-4:]))
    _core.verify_with_progress(rec.path, lambda done, total: None)
    (rec.path / "stray").write_bytes(b"x")
    assert _core.verify_with_progress(rec.path, lambda done, total: None) == ["stray"]
