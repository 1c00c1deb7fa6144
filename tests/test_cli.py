"""The ckptio command: inspect and verify."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import ckptio
from ckptio.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckptio.cli", *args], capture_output=True, text=True)


def test_inspect_prints_kind_tensors_sizes_metadata(ckpt_path):
    ckptio.save_state(ckpt_path, {"embed": np.zeros((4, 8), np.float32)}, {"m": np.ones(2)}, step=9,
                      metadata={"run": "demo"})  # fmt: skip
    out = _run("inspect", str(ckpt_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in ("state", "step        9", "embed", "F32", "4x8", "128 B", '"run": "demo"', "optimizer"):
        assert expected in text, expected


def test_verify_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for p in (good, bad):
        ckptio.save_weights_for_sampler(p, {"w": np.arange(64, dtype=np.int64)})
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    assert main(["verify", str(good)]) == 0
    assert main(["verify", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "ok" in out and "FAILED" in out and 'tensor "w"' in out
    assert main(["verify", str(tmp_path / "missing")]) == 1


def test_errors_are_one_line_not_tracebacks(tmp_path):
    out = _run("inspect", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "no checkpoint" in out.stderr
