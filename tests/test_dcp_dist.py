"""``ckptio.torch.dcp`` under real torch.distributed: gloo ranks on this machine,
DTensors on a CPU device mesh (helpers and rank code in ``_dcp.py``).

Four process groups in all: 4 ranks save (and fail to overwrite) a training state; 2
ranks load it resharded, save with torch's FileSystemWriter and ``async_save`` in a
thread and in a process; twice, 4 ranks save while one of them is SIGKILLed. The rest
runs in this process: ``dcp.load(no_dist=True)``, ``ckptio.open``, the CLI, damage,
``convert``, the safetensors package. About 30 s in all, most of it DCP's PROCESS
async mode starting its checkpoint processes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _dcp import (
    RANK_FILE,
    assert_steps,
    digests,
    expect_failure,
    flat_names,
    full_tensors,
    load_into,
    make_state,
    raw,
    run_ranks,
)
from safetensors import safe_open
from torch.distributed.checkpoint._nested_dict import flatten_state_dict

import ckptio
from ckptio.errors import CorruptCheckpointError
from ckptio.torch.dcp import Reader, convert

MANIFEST = "ckptio.json"
SAFETENSORS_DTYPE = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
}

# dcp.load(no_dist=True) in this process, without a process group, says so each time
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """4 ranks ran ``_dcp.scenario_save``: ``OUT/ck`` holds state 1."""
    out = tmp_path_factory.mktemp("dcp-save")
    return out, run_ranks("save", 4, out)[0]


@pytest.fixture(scope="module")
def two(saved: tuple[Path, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory):
    """2 ranks ran ``_dcp.scenario_two_ranks`` on the 4-rank checkpoint."""
    out = tmp_path_factory.mktemp("dcp-two")
    return out, run_ranks("two_ranks", 2, out, str(saved[0] / "ck"))[0]


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())["manifest"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptio.cli", *args], capture_output=True, text=True, timeout=120
    )


def assert_global_tensors(path: Path, version: int) -> None:
    """``ckptio.open(path)`` (no process group) gives every tensor of state ``version``
    whole, bit for bit."""
    want = full_tensors(version)
    ck = ckptio.open(path)
    assert ck.kind == "dcp"
    for name, t in want.items():
        got = ck.tensor(name)
        assert isinstance(got, torch.Tensor), (name, type(got))
        assert (got.dtype, tuple(got.shape)) == (t.dtype, tuple(t.shape)), name
        assert raw(got) == raw(t), f"{name}: bytes differ"


# -- 4 ranks: save, load, refused and failed overwrites -----------------------------------
def test_save_and_load_on_four_ranks(saved):
    out, reports = saved
    assert_steps(reports, "save", "load")
    ck = out / "ck"
    m = manifest(ck)
    assert m["kind"] == "dcp"
    files = sorted(p.name for p in ck.iterdir())
    # every rank holds a piece of some tensor here, so every rank wrote its file
    assert files == sorted([MANIFEST, *(RANK_FILE.format(r) for r in range(4))])
    assert sorted(f["name"] for f in m["files"]) == files[1:]


def test_overwrite_without_permission_is_refused(saved):
    assert_steps(saved[1], "overwrite_refused")


def test_failed_overwrite_keeps_old_checkpoint(saved):
    """Rank 1 raises in write_data: the save fails on every rank, the old checkpoint
    loads bit for bit on 4 ranks and here, and verifies."""
    out, reports = saved
    assert_steps(reports, "failed_overwrite", "load_after_failures")
    ckptio.verify(out / "ck")
    assert_global_tensors(out / "ck", 1)


def test_failed_saves_leave_no_staging(saved):
    """A save that raised leaves no staging directory once its writer is gone (checked
    in the ranks, which go on living, and after they exited)."""
    out, reports = saved
    assert_steps(reports, "overwrite_refused", "failed_overwrite")
    assert [r["hidden_after_gc"] for r in reports] == [[]] * 4
    assert hidden(out) == []


def test_overwrite_replaces(saved):
    out, reports = saved
    assert_steps(reports, "overwrite")
    ckptio.verify(out / "over")
    assert_global_tensors(out / "over", 1)


# -- in this process: no_dist load, open, CLI, safetensors ---------------------------------
def test_no_dist_load_of_four_rank_checkpoint(saved):
    load_into(saved[0] / "ck", 1, None, "full")


def test_open_gives_global_tensors(saved):
    ck_path = saved[0] / "ck"
    tensor_names, other_names = flat_names(make_state(1, None, "full"))
    ck = ckptio.open(ck_path)
    names = set(ck.names)
    assert set(tensor_names) <= names, sorted(set(tensor_names) - names)
    assert names <= set(tensor_names) | set(other_names), sorted(names - set(tensor_names) - set(other_names))
    want = full_tensors(1)
    for name, t in want.items():
        info = ck.info(name)
        assert (info.dtype, tuple(info.shape)) == (SAFETENSORS_DTYPE[t.dtype], tuple(t.shape)), name
        assert len(ck.shards(name)) >= 1, name
    # sharded on dim 0 over 4 ranks: 10 rows as 3+3+3+1, so 4 chunks
    assert len(ck.shards("model.embed.weight")) == 4
    assert_global_tensors(ck_path, 1)


def test_cli_inspect_and_verify(saved):
    ck = saved[0] / "ck"
    r = cli("inspect", str(ck))
    assert r.returncode == 0, r.stderr
    assert "dcp" in r.stdout
    for name in ("model.embed.weight", "model.proj.weight", "optim.state.bias.exp_avg_sq"):
        assert name in r.stdout, r.stdout
    r = cli("verify", str(ck))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rank_files_are_safetensors(saved):
    """Each rank file opens with the safetensors package: its keys and shapes are the
    manifest's, and every chunk ``shards()`` lists holds, read by safetensors, its
    piece of the original global tensor; the chunks of a tensor add up to it."""
    ck = saved[0] / "ck"
    m = manifest(ck)
    entries = {(t["file"], t["name"]): t for t in m["tensors"]}
    files = sorted(f["name"] for f in m["files"])
    assert sorted({f for f, _ in entries}) == files
    ckpt = ckptio.open(ck)
    seen = set()
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(ck / f, "pt")) for f in files}
        for f, h in handles.items():
            assert sorted(h.keys()) == sorted(n for ff, n in entries if ff == f), f
        for name, full in full_tensors(1).items():
            covered = 0
            for sh in ckpt.shards(name):
                entry = entries[(sh.file, sh.name)]
                got = handles[sh.file].get_tensor(sh.name)
                assert list(got.shape) == list(entry["shape"]) == list(sh.sizes), (name, sh)
                piece = full[tuple(slice(o, o + n) for o, n in zip(sh.offsets, sh.sizes, strict=True))]
                assert got.dtype == full.dtype and raw(got) == raw(piece), (name, sh)
                covered += piece.numel()
                seen.add((sh.file, sh.name))
            assert covered == full.numel(), name
    # the rest holds values DCP could only pickle, as bytes
    assert all(entries[k]["dtype"] == "U8" and len(entries[k]["shape"]) == 1 for k in set(entries) - seen)


# -- damage -------------------------------------------------------------------------------
def _damaged_copy(saved, tmp_path: Path, rank: int, where: str) -> tuple[Path, str]:
    """A copy of the 4-rank checkpoint with one byte of rank ``rank``'s file flipped,
    in its data section (``where="data"``) or its JSON header (``"header"``). Returns
    the copy and the file's name."""
    ck = tmp_path / "damaged"
    shutil.copytree(saved[0] / "ck", ck)
    rank_file = sorted(f["name"] for f in manifest(ck)["files"] if f.get("role") == "tensors")[rank]
    path = ck / rank_file
    blob = bytearray(path.read_bytes())
    header_len = int.from_bytes(blob[:8], "little")
    if where == "data":
        offset = 8 + header_len + (len(blob) - 8 - header_len) // 2
    else:
        offset = 8 + blob.index(b'"', 8) + 1  # the first character of the first key
    blob[offset] ^= 0x10
    path.write_bytes(bytes(blob))
    return ck, rank_file


def test_flipped_data_byte_is_detected(saved, tmp_path):
    ck, rank_file = _damaged_copy(saved, tmp_path, 1, "data")
    ckptio.open(ck)  # the headers are intact: open succeeds, verify and loads do not
    with pytest.raises(CorruptCheckpointError):
        ckptio.verify(ck)
    r = cli("verify", str(ck))
    assert r.returncode == 1, r.stdout + r.stderr
    assert rank_file in r.stdout + r.stderr
    with expect_failure(CorruptCheckpointError):
        dcp.load(make_state(1, None, "full", sentinel=True), storage_reader=Reader(ck), no_dist=True)


def test_flipped_header_byte_is_detected(saved, tmp_path):
    ck, rank_file = _damaged_copy(saved, tmp_path, 2, "header")
    errors = (CorruptCheckpointError, ckptio.FormatError)
    with pytest.raises(errors) as info:
        ckptio.open(ck)
    assert rank_file in str(info.value)
    with pytest.raises(errors):
        ckptio.verify(ck)
    r = cli("verify", str(ck))
    assert r.returncode == 1, r.stdout + r.stderr
    # DCP (2.15) turns an error of read_metadata into an AssertionError carrying only
    # its text ("metadata is None; global metadata read failed: ..."): the text it is
    with expect_failure() as caught:
        dcp.load(make_state(1, None, "full", sentinel=True), storage_reader=Reader(ck), no_dist=True)
    assert rank_file in str(caught[0]) and "checksum" in str(caught[0]), caught[0]


# -- 2 ranks: resharded load, torch's writer, async saves -----------------------------------
def test_resharded_load_on_two_ranks(saved, two):
    """Saved on 4 ranks by Shard(0), loaded on 2 by Shard(1): the state bit for bit
    (checked in the ranks), and the same global tensors as a no_dist load here."""
    reports = two[1]
    assert_steps(reports, "reshard_load")
    flat, _ = flatten_state_dict(load_into(saved[0] / "ck", 1, None, "full"))
    here = digests({k: v for k, v in flat.items() if isinstance(v, torch.Tensor)})
    assert here == digests(full_tensors(1))
    assert reports[0]["digests"] == here
    assert reports[1]["digests"] == here


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_async_save(two, mode):
    """async_save (DCP's thread or process executor): the checkpoint verifies, holds the
    state as it was when async_save returned, although it was mutated in place before
    the save finished, and loads bit for bit on 2 ranks (in the ranks) and here."""
    out, reports = two
    path = out / f"async-{mode}"
    ckptio.verify(path)
    assert_global_tensors(path, 4)
    assert_steps(reports, f"async_{mode}")
    load_into(path, 4, None, "full")


def test_convert_from_torch_filesystem_writer(two, tmp_path):
    """A checkpoint of torch's FileSystemWriter (2 ranks, DTensors) converted: verifies,
    loads bit for bit, and ``open`` gives the global tensors."""
    out, reports = two
    assert_steps(reports, "torch_fs_save")
    dst = tmp_path / "converted"
    convert(out / "torch-fs", dst)
    assert manifest(dst)["kind"] == "dcp"
    ckptio.verify(dst)
    load_into(dst, 5, None, "full")
    assert_global_tensors(dst, 5)


# -- 4 ranks: a rank SIGKILLed mid-save -------------------------------------------------------
@pytest.mark.parametrize("victim", [2, 0], ids=["rank2-overwrite", "coordinator-fresh-name"])
def test_rank_killed_during_save(saved, tmp_path, victim):
    """A rank dies by SIGKILL right after writing its file, while 4 ranks save: rank 2
    while they overwrite a checkpoint (the old one stays, whole), or the coordinator,
    which holds the staging directory, on a fresh name (nothing appears, the staging
    directory is left). ``ckptio.cleanup`` then removes every leftover."""
    parent = tmp_path / "runs"
    parent.mkdir()
    target = parent / "ck"
    if victim != 0:
        shutil.copytree(saved[0] / "ck", target)
    reports, exitcodes = run_ranks("kill", 4, tmp_path / "out", str(target), victim, expect_death=True)
    assert_steps(reports, "started")
    assert exitcodes[victim] == -signal.SIGKILL, exitcodes
    assert all("not_killed" not in r for r in reports), reports
    left = hidden(parent)
    assert all(name.startswith(".ck.ckptio-") for name in left), left
    if victim == 0:
        assert not target.exists()
        assert left, "the coordinator died holding the staging directory: it must still be there"
    else:
        assert sorted(p.name for p in parent.iterdir() if not p.name.startswith(".")) == ["ck"]
        ckptio.verify(target)
        assert_global_tensors(target, 1)
    result = ckptio.cleanup(parent)
    assert not result.skipped, result.skipped
    assert hidden(parent) == []
    if victim != 0:
        load_into(target, 1, None, "full")
