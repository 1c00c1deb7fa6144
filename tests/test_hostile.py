"""Hostile files: checkpoints crafted to attack the reader. Each is made from a valid
checkpoint whose manifest is re-signed (self-checksum and file checksums recomputed), so
the checksums pass and only the structural checks stand in the way. Every case must be
rejected with ``FormatError`` naming the offending file, with no panic, no SIGBUS, no
hang, and no allocation sized by the file.

All cases run in one child interpreter (a crash fails the tests instead of killing
pytest; a hang hits the timeout). Before each case the child caps its address space
at what it uses plus the case's file sizes plus 256 MiB: mapping the files fits, but
an allocation sized by a hostile length does not, and would abort the child.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _faults import (
    MANIFEST,
    read_manifest,
    resign,
    run_python,
    safetensors_bytes,
    write_manifest,
    xxh3_hex,
)

import ckptio

MODEL = "model.safetensors"
OPT = "optimizer.safetensors"
GiB = 1 << 30


def _entry(dtype: str, shape: list[int], b: int, e: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


def _model(header: Any, data: bytes | int = 0) -> Callable[[Path], None]:
    """A case that replaces model.safetensors by a crafted file."""

    def make(ck: Path) -> None:
        (ck / MODEL).write_bytes(safetensors_bytes(header, data))
        resign(ck)

    return make


def _raw(data: bytes) -> Callable[[Path], None]:
    """A case that replaces model.safetensors by raw bytes."""

    def make(ck: Path) -> None:
        (ck / MODEL).write_bytes(data)
        resign(ck)

    return make


def _manifest_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def make(ck: Path) -> None:
        m = read_manifest(ck)
        edit(m)
        write_manifest(ck, m)

    return make


def _set_file_name(bad: str) -> Callable[[Path], None]:
    def edit(m: dict[str, Any]) -> None:
        for rec in m["files"]:
            if rec["name"] == MODEL:
                rec["name"] = bad
        for t in m["tensors"]:
            if t["file"] == MODEL:
                t["file"] = bad

    return _manifest_edit(edit)


def _set_tensor(field: str, value: Any) -> Callable[[Path], None]:
    def edit(m: dict[str, Any]) -> None:
        m["tensors"][0][field] = value

    return _manifest_edit(edit)


def _huge_header_prefix(ck: Path) -> None:
    """A 1 GiB JSON header: a sparse file whose prefix claims 1 GiB of header."""
    with open(ck / MODEL, "wb") as f:
        f.write(struct.pack("<Q", GiB) + b'{"a":')
        f.truncate(8 + GiB + 64)
    resign(ck)


def _huge_manifest(ck: Path) -> None:
    """A 1 GiB ckptio.json (sparse): refused by its size before it is read."""
    with open(ck / MANIFEST, "r+b") as f:
        f.truncate(GiB)


def _huge_index(ck: Path) -> None:
    """A sharded checkpoint's index claimed to be 4 GiB (sparse), checksum and all."""
    m = read_manifest(ck)
    rec = next(r for r in m["files"] if r["role"] == "index")
    with open(ck / rec["name"], "r+b") as f:
        f.truncate(4 * GiB)
    rec["size"] = 4 * GiB
    rec["xxh3"] = "0123456789abcdef"
    write_manifest(ck, m)


def _deep_optimizer(ck: Path) -> None:
    """An optimizer tree nested 100,000 levels deep in the manifest."""
    m = read_manifest(ck)
    depth = 100_000
    deep = '{"list":[' * depth + "null" + "]}" * depth
    m["user"]["optimizer"] = "@@DEEP@@"
    body = json.dumps(m).replace('"@@DEEP@@"', deep).encode()
    write_manifest(ck, None, body=body)


def _symlink(name: str, *, outside_copy: bool) -> Callable[[Path], None]:
    """Replaces ``name`` by a symlink to an identical copy outside the checkpoint (so
    the checksums would pass if the link were followed) or to /etc/passwd."""

    def make(ck: Path) -> None:
        target = ck.parent / f"outside-{name}"
        if outside_copy:
            shutil.copyfile(ck / name, target)
        else:
            target = Path("/etc/passwd")
        (ck / name).unlink()
        (ck / name).symlink_to(target)

    return make


def _fifo(name: str) -> Callable[[Path], None]:
    def make(ck: Path) -> None:
        (ck / name).unlink()
        os.mkfifo(ck / name)

    return make


def _dir_instead(name: str) -> Callable[[Path], None]:
    def make(ck: Path) -> None:
        (ck / name).unlink()
        (ck / name).mkdir()

    return make


def _dup_file_record(m: dict[str, Any]) -> None:
    m["files"].append(dict(m["files"][0]))


def _dup_tensor_record(m: dict[str, Any]) -> None:
    m["tensors"].append(dict(m["tensors"][0]))


def _tensor_in_index_file(m: dict[str, Any]) -> None:
    m["files"].append({"name": "extra.json", "role": "index", "size": 0, "xxh3": "2d06800538d394c2"})
    m["tensors"][0]["file"] = "extra.json"


def _extra_header_tensor(ck: Path) -> None:
    """The header holds one tensor more than the manifest lists (everything else, the
    manifest's byte ranges included, consistent)."""
    raw = (ck / MODEL).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    header["z"] = _entry("U8", [4], len(data), len(data) + 4)
    new = safetensors_bytes(header, data + b"abcd")
    hlen = len(new) - len(data) - 4
    (ck / MODEL).write_bytes(new)
    m = read_manifest(ck)
    for t in m["tensors"]:
        if t["file"] == MODEL:
            b, e = header[t["name"]]["data_offsets"]
            t["byte_range"] = [hlen + b, hlen + e]
    resign(ck, m)


W = _entry("F32", [2, 3], 0, 24)
W_DATA = 24

# name -> (builder, stage, words the message must contain). Stage: where the
# FormatError is raised: "open" (ckptio.open) or "verify".
CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # header length prefix
    "header-len-past-eof": (_raw(struct.pack("<Q", 1000) + b"{}"), "open", "past the end"),
    "header-len-over-cap": (_raw(struct.pack("<Q", 1 << 40) + b"{}"), "open", "cap"),
    "header-1GiB-sparse": (_huge_header_prefix, "open", "cap"),
    "manifest-1GiB-sparse": (_huge_manifest, "open", "cap"),
    "file-shorter-than-prefix": (_raw(b"\x01\x00"), "open", "short"),
    # shapes, sizes, dtypes
    "shape-product-overflows": (
        _model({"w": _entry("F64", [1 << 32, 1 << 32], 0, 8)}, 8),
        "open",
        "overflows",
    ),
    "shape-overflow-hidden-by-zero": (_model({"w": _entry("U8", [1 << 63, 1 << 63, 0], 0, 0)}), "open", ""),
    "zero-size-dims-too-big-for-numpy": (
        _model({"w": _entry("U8", [0, 1 << 63], 0, 0)}),
        "open",
        "dimension",
    ),
    "rank-over-64": (_model({"w": _entry("U8", [1] * 65, 0, 1)}, 1), "open", "dimensions"),
    "dtype-size-mismatch": (_model({"w": _entry("F32", [2, 3], 0, 20)}, 20), "open", "needs 24"),
    "unknown-dtype": (_model({"w": _entry("F128", [1], 0, 16)}, 16), "open", "unsupported dtype"),
    "negative-shape": (
        _model('{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', 1),
        "open",
        "invalid header",
    ),
    "float-offsets": (
        _model('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0.0,1.0]}}', 1),
        "open",
        "invalid",
    ),
    "offset-beyond-u64": (
        _model('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}}', 1),
        "open",
        "invalid",
    ),
    "unknown-entry-field": (_model({"w": {**W, "extra": 1}}, W_DATA), "open", "unknown field"),
    # offsets
    "offsets-overlap": (
        _model({"a": _entry("U8", [4], 0, 4), "b": _entry("U8", [4], 2, 6)}, 6),
        "open",
        "overlaps",
    ),
    "offsets-hole": (_model({"a": _entry("U8", [4], 2, 6)}, 6), "open", "hole"),
    "offsets-out-of-range": (_model({"a": _entry("U8", [4], 0, 4)}, 2), "open", "past the end"),
    "offsets-reversed": (_model({"a": _entry("U8", [0], 4, 0)}, 4), "open", "data_offsets"),
    "offsets-u64-overflow": (
        _model({"a": _entry("U8", [0], (1 << 64) - 1, (1 << 64) - 1)}),
        "open",
        "overflow",
    ),
    "trailing-bytes-in-file": (_model({"w": W}, W_DATA + 3), "open", "trailing"),
    # duplicates
    "duplicate-header-names": (
        _model(
            '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
            2,
        ),
        "open",
        "duplicate",
    ),
    "duplicate-metadata-keys": (_model('{"__metadata__":{"k":"a","k":"b"}}'), "open", "duplicate"),
    "duplicate-file-records": (_manifest_edit(_dup_file_record), "open", "twice"),
    "duplicate-tensor-records": (_manifest_edit(_dup_tensor_record), "open", "duplicate"),
    # JSON shape of the header
    "header-not-object": (_model("[1,2,3]"), "open", "invalid JSON"),
    "header-invalid-utf8": (_raw(safetensors_bytes(b'{"\xff\xfe": 1}')), "open", "invalid"),
    "header-deeply-nested": (_model('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"), "open", "invalid"),
    "metadata-not-strings": (_model('{"__metadata__":{"k":[1]}}'), "open", "strings"),
    # manifest vs header
    "manifest-dtype-disagrees": (_set_tensor("dtype", "I32"), "open", "disagrees"),
    "manifest-shape-disagrees": (_set_tensor("shape", [3, 2]), "open", "disagrees"),
    "manifest-range-disagrees": (_set_tensor("byte_range", [0, 24]), "open", "disagrees"),
    "manifest-tensor-not-in-header": (_set_tensor("name", "ghost"), "open", "missing from the file header"),
    "header-tensor-not-in-manifest": (_extra_header_tensor, "open", "not in the manifest"),
    "tensor-in-index-file": (_manifest_edit(_tensor_in_index_file), "open", "not a listed tensor file"),
    "bad-checksum-text": (_set_tensor("xxh3", "zz"), "open", "checksum"),
    "newer-format-version": (_manifest_edit(lambda m: m.update(format_version=99)), "open", "upgrade"),
    "unknown-kind": (_manifest_edit(lambda m: m.update(kind="weights")), "open", "invalid manifest"),
    "unknown-checksum-algorithm": (_manifest_edit(lambda m: m.update(checksum="md5")), "open", "algorithm"),
    "not-ckptio-format": (
        _manifest_edit(lambda m: m.update(format="other")),
        "open",
        "not a ckptio manifest",
    ),
    "deep-optimizer-tree": (_deep_optimizer, "open", "nest"),
    # file names that leave the checkpoint
    "name-dotdot": (_set_file_name("../model.safetensors"), "open", "not allowed"),
    "name-dotdot-only": (_set_file_name(".."), "open", "not allowed"),
    "name-absolute": (_set_file_name("/etc/passwd"), "open", "not allowed"),
    "name-subdir": (_set_file_name("sub/model.safetensors"), "open", "not allowed"),
    "name-hidden": (_set_file_name(".model.safetensors"), "open", "not allowed"),
    "name-empty": (_set_file_name(""), "open", "not allowed"),
    "name-nul": (_set_file_name("model\u0000.safetensors"), "open", "not allowed"),
    "name-manifest": (_set_file_name(MANIFEST), "open", "not allowed"),
    "name-too-long": (_set_file_name("m" * 300), "open", "not allowed"),
    "symlink-tensor-file-outside": (_symlink(MODEL, outside_copy=True), "open", "symbolic link"),
    "symlink-tensor-file-etc": (_symlink(MODEL, outside_copy=False), "open", "symbolic link"),
    "symlink-manifest": (_symlink(MANIFEST, outside_copy=True), "open", "symbolic link"),
    "symlink-index-file": (
        _symlink("model.safetensors.index.json", outside_copy=True),
        "verify",
        "symbolic link",
    ),
    # special files
    "fifo-tensor-file": (_fifo(MODEL), "open", "regular file"),
    "fifo-manifest": (_fifo(MANIFEST), "open", "regular file"),
    "fifo-index-file": (_fifo("model.safetensors.index.json"), "verify", "regular file"),
    "directory-as-tensor-file": (_dir_instead(MODEL), "open", "regular file"),
    "index-4GiB-sparse": (_huge_index, "verify", "cap"),
}
SHARDED = {"symlink-index-file", "fifo-index-file", "index-4GiB-sparse"}

CHILD = """
import json, os, resource, sys, time, traceback
import ckptio

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0

soft, hard = resource.getrlimit(resource.RLIMIT_AS)
ckptio.verify(sys.argv[1])  # warm up: thread pool and imports before measuring
for case in sys.argv[2:]:
    name, path, nbytes = case.split("|")
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + int(nbytes) + (256 << 20), hard))
    t0 = time.monotonic()
    stage = "open"
    out = {"case": name}
    try:
        if name == "control":  # what the cap is for: an allocation sized by the file
            bytearray(2 * int(nbytes))
        c = ckptio.open(path)
        stage = "load"
        c.weights()
        if c.kind == "state":
            c.optimizer_state()
        stage = "verify"
        c.verify()
        out["error"] = None
    except BaseException as e:
        out.update(error=type(e).__name__, message=str(e)[:5000], file=getattr(e, "file", None),
                   tb=traceback.format_exc()[-600:])
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    out.update(stage=stage, seconds=time.monotonic() - t0)
    print(json.dumps(out), flush=True)
"""


def _base(path: Path, *, sharded: bool) -> Path:
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float16)}
    ckptio.save_state(path, weights, {"m": np.zeros(3)}, step=1, max_shard_bytes=16 if sharded else None)
    return path


def _apparent_size(ck: Path) -> int:
    return sum(p.lstat().st_size for p in ck.iterdir())


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile")
    good = _base(root / "good", sharded=False)
    good_sharded = _base(root / "good-sharded", sharded=True)
    args = []
    for name, (make, _, _) in CASES.items():
        ck = root / name / "ck"
        ck.parent.mkdir()
        shutil.copytree(good_sharded if name in SHARDED else good, ck)
        make(ck)
        args.append(f"{name}|{ck}|{_apparent_size(ck)}")
    control = root / "control" / "ck"
    shutil.copytree(good, control)
    _huge_header_prefix(control)
    args.append(f"control|{control}|{_apparent_size(control)}")
    try:
        proc = run_python(CHILD, str(good), *args, timeout=60)
        stdout, status = proc.stdout, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        stdout, status = (out.decode() if isinstance(out, bytes) else out), "hung (timeout)"
    out: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        r = json.loads(line)
        out[r["case"]] = r
    # A crash or hang stops the child: the first case without a result is the culprit.
    missing = [n for n in [*CASES, "control"] if n not in out]
    if missing:
        out[missing[0]] = {"case": missing[0], "error": f"child {status} in this case"}
    return out


def test_every_case_ran(results: dict[str, dict[str, Any]]) -> None:
    assert len(CASES) >= 50
    assert set(results) == {*CASES, "control"}, "the child stopped early"


def test_address_space_cap_catches_a_file_sized_allocation(results: dict[str, dict[str, Any]]) -> None:
    """The control case allocates twice the size of its (sparse, 1 GiB) file under the
    same cap as every case: the cap must refuse it, or it would prove nothing."""
    assert results["control"]["error"] == "MemoryError", results["control"]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case_rejected(results: dict[str, dict[str, Any]], name: str) -> None:
    _, stage, words = CASES[name]
    r = results.get(name)
    assert r is not None, "the child died or hung in an earlier case"
    assert r["error"] == "FormatError", r
    assert r["stage"] == stage, r
    assert words.lower() in r["message"].lower(), r
    assert r["file"] is not None, r
    assert r["file"] in r["message"], r


def test_manifest_resigning_is_faithful(tmp_path: Path) -> None:
    """The helpers re-sign exactly what the reader checks: a re-signed, unmodified
    checkpoint still opens and verifies (so the hostile cases fail for their damage)."""
    ck = _base(tmp_path / "ck", sharded=True)
    m = read_manifest(ck)
    write_manifest(ck, m)
    resign(ck)
    ckptio.verify(ck)
    assert xxh3_hex(b"") == "2d06800538d394c2"


# -- the writer refuses what the reader would refuse ----------------------------------
# Each save runs in a child (some build strings of hundreds of MiB) with overwrite=True
# over a good checkpoint, which must survive untouched: same directory, same bytes.
_SAVE_OVER_LIMIT = """
import sys, numpy as np, ckptio
path, case = sys.argv[1], sys.argv[2]
weights, metadata = {"w": np.ones(3, np.float32)}, None
if case == "metadata-too-deep":
    for _ in range(200):
        metadata = [metadata]
elif case == "rank-65":
    import torch
    weights["r"] = torch.zeros([1] * 65)
elif case == "header-over-cap":
    weights["n" * (100 << 20)] = np.zeros(1, np.uint8)
elif case == "metadata-over-cap":
    metadata = "x" * (64 << 20)
elif case == "manifest-over-cap":  # 3 shards: each header within its cap, not the manifest
    weights = {c * (90 << 20): np.zeros(1, np.uint8) for c in "abc"}
try:
    ckptio.save_weights_for_sampler(
        path, weights, metadata=metadata, overwrite=True, durable=False,
        max_shard_bytes=1 if case == "manifest-over-cap" else None,
    )
    print("saved")
except ValueError as e:
    print(type(e).__name__, str(e)[:300])
"""
OVER_LIMIT = {
    "metadata-too-deep": 'is 201 levels deep (200 in "metadata"), over the limit of 126',
    "metadata-over-cap": 'in "metadata"), over the limit of 67108864',
    "rank-65": "65 dimensions, more than the limit of 64",
    "header-over-cap": "model.safetensors: its safetensors header would be",
    "manifest-over-cap": "ckptio.json would be",
}


def _tree_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("case", list(OVER_LIMIT))
def test_save_refuses_what_open_would_refuse(tmp_path: Path, case: str) -> None:
    path = _base(tmp_path / "ck", sharded=False)
    before, inode = _tree_bytes(path), path.stat().st_ino
    out = run_python(_SAVE_OVER_LIMIT, str(path), case, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ValueError"), out.stdout  # "saved" before the limits
    assert OVER_LIMIT[case] in out.stdout, out.stdout
    assert path.stat().st_ino == inode and _tree_bytes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "a leftover of the failed save"
    ckptio.verify(path)
    assert ckptio.open(path).step == 1


def test_deepest_optimizer_tree_the_python_layer_accepts_saves_and_opens(tmp_path: Path) -> None:
    """The Python layer's depth limit (_tree.MAX_DEPTH) lies within the core's: the
    deepest tree it flattens (int keys, the costliest nesting) opens again, exactly."""
    from ckptio._tree import MAX_DEPTH

    tree: Any = {7: {}, 8: np.arange(2.0)}  # its values sit MAX_DEPTH levels down
    for _ in range(MAX_DEPTH - 1):
        tree = {7: tree}
    ckptio.save_state(tmp_path / "ck", {"w": np.ones(1)}, tree, metadata=[[[[1]]]])
    back = ckptio.load_state_with_optimizer(tmp_path / "ck").optimizer_state
    for _ in range(MAX_DEPTH - 1):
        back = back[7]
    assert back[7] == {} and back[8].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="nested deeper"):
        ckptio.save_state(tmp_path / "deeper", {"w": np.ones(1)}, {7: tree})


# -- linear checks on huge manifests ------------------------------------------------
MANY = 160_000
_TIMED_OPEN = """
import sys, time, ckptio
t0 = time.monotonic()
try:
    ck = ckptio.open(sys.argv[1])
    if sys.argv[2] == "verify":
        ck.verify()
    print("ok", time.monotonic() - t0)
except ckptio.CkptioError as e:
    print(type(e).__name__, time.monotonic() - t0, str(e)[:300])
"""


def _timed_open(path: Path, stage: str) -> tuple[str, float, str]:
    """(outcome, seconds, message) of an open (+ verify) in a child; a child that
    takes more than a minute (quadratic checks: about 64 s) fails the test."""
    try:
        out = run_python(_TIMED_OPEN, str(path), stage, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{stage} of {path} took over 60 s")
    assert out.returncode == 0, out.stderr[-2000:]
    outcome, seconds, *message = out.stdout.split(" ", 2)
    return outcome, float(seconds), " ".join(message)


def test_open_of_a_manifest_listing_160k_files_and_tensors_is_linear(tmp_path: Path) -> None:
    """Every tensor names the last of 160,000 listed files: a structure check that
    scans the file list per tensor takes about a minute; a linear one, well under a
    second. The open is then refused at the first file, which does not exist."""
    ck = _base(tmp_path / "ck", sharded=False)
    m = read_manifest(ck)
    files = [
        {"name": f"f{i:06d}.safetensors", "role": "tensors", "size": 64, "xxh3": "0" * 16}
        for i in range(MANY)
    ]
    last = files[-1]["name"]
    tensor = {
        "group": "model",
        "file": last,
        "dtype": "U8",
        "shape": [1],
        "byte_range": [8, 9],
        "xxh3": "0" * 16,
    }
    m["files"] = files
    m["tensors"] = [{**tensor, "name": f"t{i}"} for i in range(MANY)]
    write_manifest(ck, m)
    outcome, seconds, message = _timed_open(ck, "open")
    assert outcome == "CorruptCheckpointError" and "f000000.safetensors" in message, message
    assert seconds < 10, f"open took {seconds:.1f} s"


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A temporary directory in memory (/dev/shm) where there is one: creating tens of
    thousands of files there takes a second instead of half a minute."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="ckptio-test-", dir="/dev/shm"))
    try:
        yield root
    finally:
        shutil.rmtree(root)


def test_verify_of_a_checkpoint_listing_50k_files_is_linear(fast_tmp: Path) -> None:
    """A valid checkpoint that lists 50,000 (empty) side files opens and verifies:
    an open holds no descriptor per file (the usual limit is 1,024), and the
    unexpected-file check looks each directory entry up in a set, not in the list."""
    ck = _base(fast_tmp / "ck", sharded=False)
    m = read_manifest(ck)
    empty = xxh3_hex(b"")
    for i in range(50_000):
        name = f"i{i:06d}.json"
        os.close(os.open(ck / name, os.O_CREAT | os.O_WRONLY, 0o644))
        m["files"].append({"name": name, "role": "index", "size": 0, "xxh3": empty})
    write_manifest(ck, m)
    outcome, seconds, message = _timed_open(ck, "verify")
    assert outcome == "ok", message
    assert seconds < 10, f"open + verify took {seconds:.1f} s"


# -- memory amplification of the manifest's user section ----------------------------
_OPEN_AMPLIFIER = """
import json, os, resource, sys, time, xxhash
import ckptio
path, mib, count, wide = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "wide"

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) << 10

# The good manifest with user.metadata = [{}, {}, ...] (`count` dicts, or `mib` MiB of
# them), or a `mib` MiB string with one wide character; written and signed in chunks so
# crafting it costs this process little memory.
m = json.loads(open(os.path.join(path, "ckptio.json"), "rb").read())["manifest"]
if count < 0:  # fill the value budget (MAX_USER_NODES in src/limits.rs)
    def values(v):
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        return 1 + sum(isinstance(v, dict) + values(x) for _, x in items)
    m["user"]["metadata"] = []
    count = (8 << 20) - values(m["user"])
m["user"]["metadata"] = "@@"
head, tail = json.dumps(m).encode().split(b'"@@"')
n = count or (mib << 20) // 3
chunk = b"{}," * (1 << 16)
pieces = [head, b"["] + [chunk] * ((n - 1) >> 16) + [b"{}," * ((n - 1) & 0xFFFF), b"{}]", tail]
if wide:
    pieces = [head, '"\U0001f600'.encode()] + [b"a" * (1 << 20)] * mib + [b'"', tail]
h = xxhash.xxh3_64()
with open(os.path.join(path, "ckptio.json"), "wb") as f:
    f.write(b'{"manifest":')
    for p in pieces:
        h.update(p)
        f.write(p)
    f.write(b',"manifest_xxh3":"' + h.hexdigest().encode() + b'"}')
size = os.path.getsize(os.path.join(path, "ckptio.json"))
del pieces, chunk

open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
before = status("VmHWM")
# A cap well above any bounded open, well below the unbounded one (26x the file), so a
# regression fails fast instead of swapping the machine.
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (3 << 30), resource.RLIM_INFINITY))
t0 = time.monotonic()
try:
    ck = ckptio.open(path)
    len(ck.metadata)
    out = {"error": None}
except (ckptio.CkptioError, MemoryError) as e:
    out = {"error": type(e).__name__, "message": str(e)[:500], "file": getattr(e, "file", None)}
out.update(size=size, growth=status("VmHWM") - before, seconds=time.monotonic() - t0)
print(json.dumps(out))
"""


def _open_amplifier(path: Path, *, mib: int = 0, count: int = 0, wide: bool = False) -> dict[str, Any]:
    out = run_python(_OPEN_AMPLIFIER, str(path), str(mib), str(count), "wide" if wide else "", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_a_250mib_manifest_of_empty_dicts_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """87 million `{}` in the user section: Python's json would build 6.4 GiB of dicts
    (26x the file). The core refuses the section by its size before anything parses
    it; the open costs about twice the file (its bytes, and the user section)."""
    ck = _base(tmp_path / "ck", sharded=False)
    r = _open_amplifier(ck, mib=250)
    assert r["error"] == "FormatError", r
    assert "user section" in r["message"] and r["file"] == str(ck / MANIFEST), r
    assert r["growth"] < 4 * r["size"], (
        f"peak RSS grew {r['growth'] >> 20} MiB for a {r['size'] >> 20} MiB file"
    )


def test_a_user_section_denser_than_the_value_budget_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """60 MiB of `{}`: within the user section's byte cap, over its value budget."""
    ck = _base(tmp_path / "ck", sharded=False)
    r = _open_amplifier(ck, mib=60)
    assert r["error"] == "FormatError", r
    assert "JSON values" in r["message"] and r["file"] == str(ck / MANIFEST), r
    assert r["growth"] < 4 * r["size"], (
        f"peak RSS grew {r['growth'] >> 20} MiB for a {r['size'] >> 20} MiB file"
    )


def test_the_densest_user_section_within_the_limits_opens_in_bounded_memory(tmp_path: Path) -> None:
    """The value budget filled with `{}` (the costliest value for Python's json) opens,
    at the worst-case cost that docs/GUARANTEES.md states (about 0.65 GiB)."""
    ck = _base(tmp_path / "ck", sharded=False)
    r = _open_amplifier(ck, count=-1)
    assert r["error"] is None, r
    assert r["growth"] < 1 << 30, f"peak RSS grew {r['growth'] >> 20} MiB"


def test_a_250mib_manifest_of_one_wide_string_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """One string of 250 million characters, one of them beyond U+FFFF: Python would
    hold it at 4 bytes a character, beside copies of the text (9x the file). The core
    refuses a user section over its own cap, below the manifest's."""
    ck = _base(tmp_path / "ck", sharded=False)
    r = _open_amplifier(ck, mib=250, wide=True)
    assert r["error"] == "FormatError", r
    assert "bytes, more than the limit" in r["message"] and r["file"] == str(ck / MANIFEST), r
    assert r["growth"] < 4 * r["size"], (
        f"peak RSS grew {r['growth'] >> 20} MiB for a {r['size'] >> 20} MiB file"
    )
