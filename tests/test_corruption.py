"""Corruption: damage in every region of a checkpoint is detected, by ``open`` for
structural damage (manifest, headers, sizes, missing files) or by ``verify`` for tensor
data, with an error that names the file and, for data, the tensor.

Regions: each file's 8-byte length prefix, its JSON header, each tensor's data, the
manifest, and the shard index of a sharded checkpoint. Damage: single bit flips (every
byte of every file), truncation, trailing bytes, missing / extra / swapped files, and a
manifest from another checkpoint. ``load_state(verify=True)`` refuses what verify
refuses, and ``ckptio verify`` exits 1.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from _faults import MANIFEST, flip_bit, read_manifest

import ckptio

SHARD_BYTES = 96


def _save(path: Path, seed: int, *, sharded: bool) -> Path:
    rng = np.random.default_rng(seed)
    weights = {
        "w": rng.standard_normal((4, 6)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float16),
        "e": np.zeros((0, 3), np.int64),  # empty tensor: no data bytes
        "n": rng.integers(0, 9, 7, dtype=np.int8),
    }
    opt = {"m": rng.standard_normal(3), "step": 5, "s": np.float32(seed)}
    ckptio.save_state(
        path, weights, opt, step=5, metadata={"seed": seed}, max_shard_bytes=SHARD_BYTES if sharded else None
    )
    return path


@dataclass(frozen=True)
class Region:
    file: str
    kind: str  # "prefix" | "header" | "data" | "manifest" | "index"
    begin: int
    end: int
    tensor: str | None = None


def _regions(ckpt: Path) -> list[Region]:
    m = read_manifest(ckpt)
    regions = [Region(MANIFEST, "manifest", 0, (ckpt / MANIFEST).stat().st_size)]
    for rec in m["files"]:
        if rec["role"] == "index":
            regions.append(Region(rec["name"], "index", 0, rec["size"]))
            continue
        n = struct.unpack("<Q", (ckpt / rec["name"]).read_bytes()[:8])[0]
        regions += [Region(rec["name"], "prefix", 0, 8), Region(rec["name"], "header", 8, 8 + n)]
    for t in m["tensors"]:
        b, e = t["byte_range"]
        if e > b:
            regions.append(Region(t["file"], "data", b, e, t["name"]))
    covered = sum(r.end - r.begin for r in regions)
    assert covered == sum(p.stat().st_size for p in ckpt.iterdir()), "regions must tile every file"
    return regions


def _detect(ckpt: Path) -> tuple[str, BaseException | None]:
    """('open' | 'verify', error) for the first check that refuses, or ('', None)."""
    try:
        c = ckptio.open(ckpt)
    except ckptio.CkptioError as e:
        return "open", e
    try:
        c.verify()
    except ckptio.CkptioError as e:
        return "verify", e
    return "", None


def _assert_names(e: BaseException, ckpt: Path, region: Region) -> None:
    assert isinstance(e, ckptio.CorruptCheckpointError | ckptio.FormatError), repr(e)
    assert e.file is not None and Path(e.file).name == region.file, (e.file, region, e)
    assert region.file in str(e)
    if region.kind == "data":
        assert isinstance(e, ckptio.CorruptCheckpointError)
        assert e.tensor == region.tensor, (e.tensor, region)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_every_single_bit_flip_is_detected(tmp_path: Path, sharded: bool) -> None:
    ckpt = _save(tmp_path / "ck", 1, sharded=sharded)
    regions = _regions(ckpt)
    flips = 0
    seen_kinds = set()
    for region in regions:
        path = ckpt / region.file
        for offset in range(region.begin, region.end):
            # Every bit of every byte of a single-file checkpoint; of a sharded one,
            # every bit of the length prefixes and one bit per byte elsewhere, rotating.
            bits = range(8) if region.kind == "prefix" or not sharded else [offset % 8]
            for bit in bits:
                flip_bit(path, offset, bit)
                stage, err = _detect(ckpt)
                flip_bit(path, offset, bit)
                assert err is not None, (
                    f"undetected flip of bit {bit} at {region.file}:{offset} ({region.kind})"
                )
                _assert_names(err, ckpt, region)
                # Data damage is for verify; everything else is caught by open.
                want = "verify" if region.kind in ("data", "index") else "open"
                assert stage == want, (region, err)
                flips += 1
                seen_kinds.add(region.kind)
    ckptio.verify(ckpt)  # restored
    assert seen_kinds == {"prefix", "header", "data", "manifest"} | ({"index"} if sharded else set())
    assert flips > (10_000 if not sharded else 2000), flips


def test_verify_names_every_bad_tensor_and_loads_refuse(tmp_path: Path) -> None:
    ckpt = _save(tmp_path / "ck", 2, sharded=False)
    data = [r for r in _regions(ckpt) if r.kind == "data"]
    for r in data[:2]:
        flip_bit(ckpt / r.file, r.begin, 0)
    with pytest.raises(ckptio.CorruptCheckpointError) as info:
        ckptio.verify(ckpt)
    for r in data[:2]:
        assert repr(r.tensor) in str(info.value) or f"/{r.tensor}" in str(info.value)
    # The default load does not hash data (documented); verify=True refuses.
    ckptio.load_state(ckpt)
    with pytest.raises(ckptio.CorruptCheckpointError):
        ckptio.load_state(ckpt, verify=True)
    with pytest.raises(ckptio.CorruptCheckpointError):
        ckptio.load_state_with_optimizer(ckpt, verify=True)


def _truncation_offsets(size: int, region_edges: list[int]) -> list[int]:
    offs = {0, 1, 7, 8, 9, size // 2, size - 1}
    for edge in region_edges:
        offs |= {edge - 1, edge, edge + 1}
    return sorted(o for o in offs if 0 <= o < size)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_truncation_and_trailing_bytes(tmp_path: Path, sharded: bool) -> None:
    ckpt = _save(tmp_path / "ck", 3, sharded=sharded)
    regions = _regions(ckpt)
    cases = 0
    for name in sorted(p.name for p in ckpt.iterdir()):
        path = ckpt / name
        pristine = path.read_bytes()
        edges = sorted(
            {r.begin for r in regions if r.file == name} | {r.end for r in regions if r.file == name}
        )
        whole = Region(
            name, "index" if name.endswith(".json") and name != MANIFEST else "file", 0, len(pristine)
        )
        for cut in _truncation_offsets(len(pristine), edges):
            if name == MANIFEST and not pristine[cut:].strip():
                continue  # only trailing whitespace lost: the same JSON
            path.write_bytes(pristine[:cut])
            stage, err = _detect(ckpt)
            assert err is not None, f"{name} truncated at {cut} undetected"
            _assert_names(err, ckpt, whole)
            cases += 1
        for extra in (b"\x00", b"x", b"\x00" * 4096):
            path.write_bytes(pristine + extra)
            stage, err = _detect(ckpt)
            assert err is not None, f"{name} + {len(extra)} trailing bytes undetected"
            _assert_names(err, ckpt, whole)
            assert stage == ("verify" if whole.kind == "index" else "open")
            cases += 1
        path.write_bytes(pristine)
    ckptio.verify(ckpt)
    assert cases > 40


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_missing_file(tmp_path: Path, sharded: bool) -> None:
    ckpt = _save(tmp_path / "ck", 4, sharded=sharded)
    for name in sorted(p.name for p in ckpt.iterdir()):
        aside = tmp_path / name
        (ckpt / name).rename(aside)
        if name == MANIFEST:
            with pytest.raises(ckptio.CheckpointNotFoundError):
                ckptio.open(ckpt)
        else:
            stage, err = _detect(ckpt)
            assert isinstance(err, ckptio.CorruptCheckpointError), (name, err)
            assert Path(err.file).name == name and "missing" in str(err)
            assert stage == ("verify" if name.endswith(".json") else "open")
        aside.rename(ckpt / name)
    ckptio.verify(ckpt)


@pytest.mark.parametrize("extra", ["notes.txt", ".hidden", "model-00009-of-00009.safetensors", "subdir"])
def test_extra_file(tmp_path: Path, extra: str) -> None:
    """A file dropped in after the save is not part of the checkpoint: verify passes
    and names it as not covered by checksums."""
    ckpt = _save(tmp_path / "ck", 5, sharded=True)
    if extra == "subdir":
        (ckpt / extra).mkdir()
    else:
        (ckpt / extra).write_bytes(b"not part of the checkpoint")
    ckptio.open(ckpt)  # open reads only what the manifest lists
    assert ckptio.verify(ckpt) == [extra]


def test_swapped_files(tmp_path: Path) -> None:
    ckpt = _save(tmp_path / "ck", 6, sharded=True)
    other = _save(tmp_path / "other", 7, sharded=True)  # same structure, other bytes and id
    twin = _save(tmp_path / "twin", 6, sharded=True)  # same bytes, other checkpoint id
    shards = sorted(p.name for p in ckpt.iterdir() if p.name.endswith(".safetensors"))
    assert len(shards) >= 3
    swaps = 0
    # A file from another checkpoint, even one with identical tensors.
    for source in (other, twin):
        for name in shards:
            pristine = (ckpt / name).read_bytes()
            shutil.copyfile(source / name, ckpt / name)
            stage, err = _detect(ckpt)
            assert stage == "open" and isinstance(err, ckptio.CorruptCheckpointError), (name, err)
            assert Path(err.file).name == name
            (ckpt / name).write_bytes(pristine)
            swaps += 1
    # Two files of the same checkpoint exchanged.
    for a, b in itertools.pairwise(shards):
        os.rename(ckpt / a, tmp_path / "x")
        os.rename(ckpt / b, ckpt / a)
        os.rename(tmp_path / "x", ckpt / b)
        stage, err = _detect(ckpt)
        assert stage == "open" and isinstance(err, ckptio.CorruptCheckpointError), (a, b, err)
        assert Path(err.file).name in (a, b)
        os.rename(ckpt / a, tmp_path / "x")
        os.rename(ckpt / b, ckpt / a)
        os.rename(tmp_path / "x", ckpt / b)
        swaps += 1
    ckptio.verify(ckpt)
    assert swaps >= 8


def test_swapped_tensor_data_within_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    ckpt = tmp_path / "ck"
    ckptio.save_weights_for_sampler(ckpt, {"a": a, "b": b})
    ranges = {t["name"]: t["byte_range"] for t in read_manifest(ckpt)["tensors"]}
    raw = bytearray((ckpt / "model.safetensors").read_bytes())
    (a0, a1), (b0, b1) = ranges["a"], ranges["b"]
    raw[a0:a1], raw[b0:b1] = raw[b0:b1], raw[a0:a1]
    (ckpt / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ckptio.CorruptCheckpointError) as info:
        ckptio.verify(ckpt)
    assert info.value.tensor in ("a", "b") and "2 bad tensor" in str(info.value)


def test_manifest_from_another_checkpoint(tmp_path: Path) -> None:
    for sharded in (False, True):
        ckpt = _save(tmp_path / f"ck{sharded}", 9, sharded=sharded)
        twin = _save(tmp_path / f"twin{sharded}", 9, sharded=sharded)  # identical tensors
        shutil.copyfile(twin / MANIFEST, ckpt / MANIFEST)
        stage, err = _detect(ckpt)
        assert stage == "open" and isinstance(err, ckptio.CorruptCheckpointError), err
        assert Path(err.file).name.endswith(".safetensors") and "header checksum" in str(err)


def test_cli_verify_exits_1_on_corruption(tmp_path: Path) -> None:
    good = _save(tmp_path / "good", 10, sharded=False)
    bad = _save(tmp_path / "bad", 11, sharded=True)
    data = next(r for r in _regions(bad) if r.kind == "data")
    flip_bit(bad / data.file, data.begin + 1, 3)
    cli = [sys.executable, "-m", "ckptio.cli", "verify"]
    ok = subprocess.run([*cli, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    res = subprocess.run([*cli, str(good), str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED" in res.stdout and data.file in res.stdout and f'"{data.tensor}"' in res.stdout
