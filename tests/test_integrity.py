"""Checksums catch damage, and a killed save never leaves a half checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ckptio


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(ckpt_path):
    weights = {"first": np.arange(100, dtype=np.float32), "second": np.ones((10, 10), np.float64)}
    ckptio.save_state(ckpt_path, weights, {"m": np.zeros(5)}, step=1)
    return ckpt_path


def test_flipped_data_byte_names_the_tensor(saved):
    ck = ckptio.open(saved)
    info = ck.info("first")
    begin = ck._core.tensors()[0][5]
    _flip(saved / info.file, begin + 17)
    with pytest.raises(ckptio.CorruptCheckpointError) as exc:
        ckptio.verify(saved)
    assert exc.value.tensor == "first"
    assert exc.value.file.endswith("model.safetensors")
    assert "first" in str(exc.value)
    with pytest.raises(ckptio.CorruptCheckpointError):
        ckptio.load_state(saved, verify=True)
    ckptio.load_state(saved)  # the default load checks structure, not data (documented)


def test_flipped_header_byte_is_detected_on_open(saved):
    _flip(saved / "model.safetensors", 20)
    with pytest.raises((ckptio.CorruptCheckpointError, ckptio.FormatError)) as exc:
        ckptio.open(saved)
    assert "model.safetensors" in str(exc.value)


def test_flipped_manifest_byte_is_detected(saved):
    text = (saved / "ckptio.json").read_text()
    doc = json.loads(text)
    step_pos = text.index('"step": 1')
    (saved / "ckptio.json").write_text(text[:step_pos] + '"step": 2' + text[step_pos + 9 :])
    assert doc["manifest"]["user"]["step"] == 1
    with pytest.raises(ckptio.CorruptCheckpointError, match="manifest checksum"):
        ckptio.open(saved)


@pytest.mark.parametrize("keep", [0, 7, 8, 100, -1])
def test_truncated_file_raises(saved, keep):
    f = saved / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(ckptio.CkptioError):
        ckptio.load_state(saved)


_SAVE_LOOP = textwrap.dedent(
    """
    import sys, numpy as np, ckptio
    path = sys.argv[1]
    i = 1
    while True:
        weights = {f"w{j}": np.full(1 << 18, i, np.float64) for j in range(8)}
        ckptio.save_weights_for_sampler(path, weights, metadata={"i": i}, overwrite=True)
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_during_saves_leaves_old_or_new_never_half(tmp_path):
    path = tmp_path / "ck"
    for attempt in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one save is complete
        time.sleep(0.05 + 0.037 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckptio.verify(path)
        ck = ckptio.open(path)
        i = ck.metadata["i"]
        assert all(float(ck[f"w{j}"][0]) == i for j in range(8))
        visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
        assert visible == ["ck"]
        ckptio.cleanup(tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == ["ck"]
