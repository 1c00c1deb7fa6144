"""Bad input gets a clear error naming what is wrong, and leaves nothing behind."""

from __future__ import annotations

import errno

import numpy as np
import pytest

import ckptio


def _entries(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(
    ("weights", "exc", "match"),
    [
        ({1: np.zeros(2)}, TypeError, "names must be str"),
        ({"obj": np.array([object()])}, TypeError, "'obj': object arrays"),
        ({"c": np.zeros(2, np.complex64)}, TypeError, "'c': dtype complex64 is not supported"),
        ({"s": np.array(["x"])}, TypeError, "'s': dtype <U1"),
        ({"l": [1, 2, 3]}, TypeError, "'l': expected a numpy array or torch tensor, got list"),
        ({"__metadata__": np.zeros(1)}, ValueError, "reserved"),
    ],
)
def test_bad_weights_are_named_and_nothing_is_left(tmp_path, weights, exc, match):
    with pytest.raises(exc, match=match):
        ckptio.save_weights_for_sampler(tmp_path / "ck", weights)
    assert _entries(tmp_path) == []


def test_weights_must_be_a_mapping(ckpt_path):
    with pytest.raises(TypeError, match="mapping"):
        ckptio.save_weights_for_sampler(ckpt_path, [np.zeros(1)])


def test_failed_save_leaves_the_old_checkpoint_intact(tmp_path):
    path = tmp_path / "ck"
    ckptio.save_weights_for_sampler(path, {"w": np.arange(3)})
    with pytest.raises(TypeError, match="'bad'"):
        ckptio.save_weights_for_sampler(path, {"w": np.zeros(3), "bad": "x"}, overwrite=True)
    with pytest.raises(TypeError, match="metadata"):
        ckptio.save_weights_for_sampler(path, {"w": np.zeros(3)}, metadata={"f": object()}, overwrite=True)
    with pytest.raises(ValueError, match="metadata"):
        ckptio.save_weights_for_sampler(
            path, {"w": np.zeros(3)}, metadata={"f": float("nan")}, overwrite=True
        )
    assert ckptio.load_state(path)["w"].tolist() == [0, 1, 2]
    ckptio.verify(path)
    assert _entries(tmp_path) == ["ck"]


def test_missing_path_and_file_path_and_non_checkpoint_dir(tmp_path):
    with pytest.raises(ckptio.CheckpointNotFoundError, match="no checkpoint") as info:
        ckptio.load_state(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ckptio.FormatError, match="is a file"):
        ckptio.open(tmp_path / "file")
    (tmp_path / "dir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no ckptio\.json"):
        ckptio.verify(tmp_path / "dir")


def test_save_targets_that_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ckptio.CheckpointExistsError, match="not a directory"):
        ckptio.save_weights_for_sampler(tmp_path / "file", {}, overwrite=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a ckptio checkpoint"):
        ckptio.save_weights_for_sampler(tmp_path / "data", {}, overwrite=True)
    assert (tmp_path / "data" / "mine.txt").read_text() == "precious"
    with pytest.raises(ckptio.CheckpointNotFoundError, match="parent directory"):
        ckptio.save_weights_for_sampler(tmp_path / "no" / "such" / "ck", {})
    assert _entries(tmp_path) == ["data", "file"]


def test_argument_checks(ckpt_path):
    with pytest.raises(TypeError, match="step"):
        ckptio.save_state(ckpt_path, {}, {}, step="12")
    with pytest.raises(ValueError, match="max_shard_bytes"):
        ckptio.save_weights_for_sampler(ckpt_path, {}, max_shard_bytes=0)
    with pytest.raises(ValueError, match="threads"):
        ckptio.save_weights_for_sampler(ckpt_path, {}, threads=0)
    ckptio.save_weights_for_sampler(ckpt_path, {"w": np.ones(1)})
    with pytest.raises(ValueError, match="framework"):
        ckptio.load_state(ckpt_path, framework="jax")


def test_exception_hierarchy():
    assert issubclass(ckptio.CorruptCheckpointError, ckptio.CkptioError)
    assert issubclass(ckptio.CorruptCheckpointError, ValueError)
    assert issubclass(ckptio.FormatError, ValueError)
    assert issubclass(ckptio.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(ckptio.CheckpointExistsError, FileExistsError)
    assert issubclass(ckptio.StorageError, OSError)
    e = ckptio.StorageError(errno.ENOSPC, "write failed", "/x")
    assert (e.errno, e.filename) == (errno.ENOSPC, "/x")
