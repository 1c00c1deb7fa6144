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
from collections.abc import Callable
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
