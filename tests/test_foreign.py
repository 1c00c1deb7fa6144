"""Plain safetensors files without a ckptio manifest (what Hugging Face's
``save_pretrained`` writes): ``ckptio.open`` and ``load_state`` read them read-only,
without checksums, with one warning; every header is validated as for our own files."""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from _faults import run_python, safetensors_bytes
from safetensors.numpy import save_file

import ckptio

RNG = np.random.default_rng(7)
TENSORS = {
    "embed.weight": RNG.standard_normal((6, 4)).astype(np.float32),
    "norm.weight": np.ones(4, np.float16),
    "ids": np.arange(5, dtype=np.int64),
}


def _hf_dir(tmp_path: Path, *, sharded: bool) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "tiny"}')
    if not sharded:
        save_file(TENSORS, str(d / "model.safetensors"), metadata={"format": "np"})
        return d
    names = list(TENSORS)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: TENSORS[k] for k in keys}, str(d / file), metadata={"format": "np"})
        weight_map.update({k: file for k in keys})
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


@pytest.mark.parametrize("sharded", [False, True])
def test_open_and_load_a_plain_directory_with_one_warning(tmp_path: Path, sharded: bool) -> None:
    d = _hf_dir(tmp_path, sharded=sharded)
    with pytest.warns(ckptio.UnverifiedCheckpointWarning, match="without checksums") as record:
        ckpt = ckptio.open(d)
    assert len(record) == 1
    assert sorted(ckpt.names) == sorted(TENSORS) and ckpt.kind == "sampler"
    assert not ckpt.checksummed and ckpt.metadata == {"format": "np"} and ckpt.side_files == []
    for copy in (False, True):
        with pytest.warns(ckptio.UnverifiedCheckpointWarning) as record:
            loaded = ckptio.load_state(d, copy=copy)
        assert len(record) == 1
        for name, arr in TENSORS.items():
            assert loaded[name].dtype == arr.dtype and np.array_equal(loaded[name], arr), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no checksums: verify says so, it does not warn
        with pytest.raises(ckptio.CheckpointNotFoundError, match=r"no ckptio\.json"):
            ckptio.verify(d)
        with pytest.raises(ckptio.CheckpointNotFoundError, match=r"no ckptio\.json"):
            ckptio.load_state_with_optimizer(d)
    with (
        pytest.warns(ckptio.UnverifiedCheckpointWarning),
        pytest.raises(ckptio.CheckpointNotFoundError, match="no checksums"),
    ):
        ckptio.load_state(d, verify=True)
    assert not (d / "ckptio.json").exists()  # read-only


def test_torch_files_load_as_torch_and_a_single_file_opens(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file as save_torch

    weights = {"w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)}
    save_torch(weights, str(tmp_path / "weights.safetensors"), metadata={"format": "pt"})
    with pytest.warns(ckptio.UnverifiedCheckpointWarning):
        loaded = ckptio.load_state(tmp_path / "weights.safetensors")
    assert isinstance(loaded["w"], torch.Tensor) and torch.equal(loaded["w"], weights["w"])
    with pytest.warns(ckptio.UnverifiedCheckpointWarning):
        assert ckptio.open(tmp_path).names == ["w"]


def test_not_a_checkpoint_still_says_so(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not ours")
    with pytest.raises(ckptio.CheckpointNotFoundError, match="not a ckptio checkpoint"):
        ckptio.open(tmp_path)
    with pytest.raises(ckptio.CheckpointNotFoundError):
        ckptio.open(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ckptio.FormatError, match="not a checkpoint directory"):
        ckptio.open(tmp_path / "notes.txt")


def _entry(dtype: str, shape: list[int], b: int, e: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


# Hostile directories: (files to write, the file the error must name, what it says).
HOSTILE: dict[str, tuple[dict[str, bytes], str, str]] = {
    "overlap": (
        {
            "model.safetensors": safetensors_bytes(
                {"a": _entry("U8", [4], 0, 4), "b": _entry("U8", [4], 2, 6)}, 6
            )
        },
        "model.safetensors",
        "overlaps",
    ),
    "trailing": (
        {"model.safetensors": safetensors_bytes({"a": _entry("U8", [2], 0, 2)}, 9)},
        "model.safetensors",
        "trailing",
    ),
    "past-end": (
        {"model.safetensors": safetensors_bytes({"a": _entry("F32", [8], 0, 32)}, 4)},
        "model.safetensors",
        "past",
    ),
    "huge-header-length": (
        {"model.safetensors": struct.pack("<Q", 1 << 40) + b"{}"},
        "model.safetensors",
        "exceeds",
    ),
    "shape-overflow": (
        {"model.safetensors": safetensors_bytes({"a": _entry("F64", [1 << 32, 1 << 32], 0, 8)}, 8)},
        "model.safetensors",
        "overflows",
    ),
    "unknown-dtype": (
        {"model.safetensors": safetensors_bytes({"a": _entry("Q7", [1], 0, 1)}, 1)},
        "model.safetensors",
        "dtype",
    ),
    "duplicate-key": (
        {
            "model.safetensors": safetensors_bytes(
                '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
                2,
            )
        },
        "model.safetensors",
        "duplicate",
    ),
    "index-escapes": (
        {"model.safetensors.index.json": json.dumps({"weight_map": {"a": "../model.safetensors"}}).encode()},
        "../model.safetensors",
        "plain file name",
    ),
    "index-disagrees": (
        {
            "a.safetensors": safetensors_bytes({"x": _entry("U8", [1], 0, 1)}, 1),
            "model.safetensors.index.json": json.dumps({"weight_map": {"y": "a.safetensors"}}).encode(),
        },
        "model.safetensors.index.json",
        "no header",
    ),
    "same-tensor-twice": (
        {
            "a.safetensors": safetensors_bytes({"x": _entry("U8", [1], 0, 1)}, 1),
            "b.safetensors": safetensors_bytes({"x": _entry("U8", [1], 0, 1)}, 1),
        },
        "b.safetensors",
        "also in",
    ),
}

CHILD = """
import json, sys, warnings
from pathlib import Path
import ckptio
warnings.simplefilter("ignore")
out = {}
for case in sorted(Path(sys.argv[1]).iterdir()):
    try:
        ckptio.load_state(case, copy=True)
        out[case.name] = ["loaded", "", ""]
    except Exception as e:
        out[case.name] = [type(e).__name__, str(e), str(getattr(e, "file", "") or "")]
print(json.dumps(out))
"""


def test_hostile_plain_directories_are_refused(tmp_path: Path) -> None:
    """In a child interpreter: a crash fails the test instead of killing pytest."""
    for name, (files, _, _) in HOSTILE.items():
        d = tmp_path / name
        d.mkdir()
        for file, data in files.items():
            (d / file).write_bytes(data)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    save_file({"x": np.ones(1)}, str(outside))
    (tmp_path / "symlink").mkdir()
    os.symlink(outside, tmp_path / "symlink" / "model.safetensors")
    try:
        proc = run_python(CHILD, str(tmp_path), env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    finally:
        outside.unlink()
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results["symlink"][0] == "FormatError" and "symbolic link" in results["symlink"][1]
    for name, (_, file, message) in HOSTILE.items():
        kind, text, named = results[name]
        assert kind == "FormatError", (name, kind, text)
        assert message in text and named.endswith(file), (name, text, named)


def test_a_ckptio_checkpoint_without_its_manifest_is_not_read_unverified(tmp_path: Path) -> None:
    path = ckptio.save_weights_for_sampler(tmp_path / "ck", {"w": np.ones(3)}, max_shard_bytes=8)
    (path / "ckptio.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for load in (ckptio.open, ckptio.load_state):
            with pytest.raises(ckptio.CheckpointNotFoundError, match=r"manifest \(ckptio\.json\) is missing"):
                load(path)
        with pytest.raises(ckptio.CheckpointNotFoundError, match=r"no ckptio\.json"):
            ckptio.verify(path)
