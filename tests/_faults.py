"""Helpers shared by the reliability batteries (crash, I/O errors, corruption, hostile
files, concurrency): deterministic test data, subprocess runners, leftovers, and
re-signing of manifests so a test can craft a hostile checkpoint that passes the
checksums and reaches the structural checks behind them."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

import ckptio

MANIFEST = "ckptio.json"
SIDE_NAME = re.compile(r"^\.(?P<name>.+)\.ckptio-(?P<tag>tmp|old)-(?P<pid>\d+)-[0-9a-f]{16}$")


# -- deterministic checkpoints ------------------------------------------------------
def make_state(version: int, *, scale: int = 10) -> tuple[dict[str, Any], Any]:
    """Weights and an optimizer tree whose every value depends on ``version``: 4
    weights (4 dtypes) and 3 optimizer arrays, so a save passes 7 ``data`` points.
    About ``2**scale * 4.5`` bytes in all."""
    rng = np.random.default_rng(1000 + version)
    n = 1 << scale
    weights = {
        "embed": rng.standard_normal((n // 64, 16)).astype(np.float32),
        "proj": rng.standard_normal((n // 32, 8)).astype(np.float64),
        "bias": rng.standard_normal(n // 16).astype(np.float16),
        "ids": rng.integers(0, 1 << 30, n // 128, dtype=np.int64),
    }
    opt = {
        "step": version,
        "lr": 0.001 * (version + 1),
        "m": {"embed": rng.standard_normal((n // 64, 16)).astype(np.float32)},
        "v": [rng.random(n // 32), np.float32(version)],
    }
    return weights, opt


def save_version(path: Path, version: int, *, background: bool = False, **kw: Any) -> None:
    """Saves version ``version`` (with ``save_state_async`` when ``background``)."""
    weights, opt = make_state(version, scale=kw.pop("scale", 10))
    if background:
        future = ckptio.save_state_async(
            path, weights, opt, step=version, metadata={"version": version}, **kw
        )
        future.result()
    else:
        ckptio.save_state(path, weights, opt, step=version, metadata={"version": version}, **kw)


def snapshot(path: Path) -> dict[str, Any]:
    """Everything a load returns, as independent copies."""
    weights, opt, step, meta = ckptio.load_state_with_optimizer(path)
    return {
        "weights": {k: np.array(v, copy=True) for k, v in weights.items()},
        "opt": opt,
        "step": step,
        "meta": meta,
    }


def assert_tree_equal(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_tree_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{where}: bytes differ"
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_is_version(path: Path, version: int) -> None:
    """``path`` holds exactly the checkpoint ``save_version(path, version)`` wrote, and
    passes a full verify."""
    ckptio.verify(path)
    weights, opt = make_state(version, scale=_scale(path))
    got = snapshot(path)
    assert got["step"] == version and got["meta"] == {"version": version}, (got["step"], got["meta"])
    assert_tree_equal(got["weights"], weights, "weights")
    assert_tree_equal(got["opt"], opt, "optimizer")


def _scale(path: Path) -> int:
    return int(ckptio.open(path).info("embed").shape[0] * 64).bit_length() - 1


# -- leftovers ----------------------------------------------------------------------
def side_entries(parent: Path) -> list[Path]:
    """Hidden entries of ``parent`` (what interrupted saves may leave)."""
    return sorted(p for p in parent.iterdir() if p.name.startswith("."))


def visible_entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))


def assert_leftovers_harmless(parent: Path, name: str) -> list[Path]:
    """Every leftover is a hidden, tagged side directory of ``name``, and none can pass
    for a checkpoint: opening one either fails or gives a complete checkpoint that
    verifies (an old one swapped out, not yet removed). Returns the leftovers."""
    left = side_entries(parent)
    for p in left:
        m = SIDE_NAME.match(p.name)
        assert m is not None and m["name"] == name, f"unexpected entry {p.name}"
        assert p.is_dir() and not p.is_symlink(), p
        try:
            ck = ckptio.open(p)
        except ckptio.CkptioError:
            continue
        ck.verify()
    return left


# -- subprocesses -------------------------------------------------------------------
def run_python(
    code: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    preamble: str = "",
) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter (``preamble`` first, before any import)."""
    full_env = dict(os.environ)
    full_env.pop("CKPTIO_CRASH_AT", None)
    full_env.pop("CKPTIO_STOP_AT", None)
    full_env.pop("CKPTIO_FAIL_AT", None)
    full_env.update(env or {})
    script = textwrap.dedent(preamble) + "\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parent,
    )


# -- the test build with crash points --------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
FAULT_FEATURES = "python,pyo3/extension-module,fault-injection"


def build_fault_extension() -> Path:
    """Builds the extension with the ``fault-injection`` cargo feature (crash points,
    src/fault.rs) from this checkout into ``target/fault-injection`` and returns the
    library. Release wheels never have the feature; this test build is the only one
    that honours ``CKPTIO_CRASH_AT``. Thin LTO keeps the build quick (as in
    dev/build-ext.sh); cargo rebuilds only what changed."""
    target_dir = ROOT / "target" / "fault-injection"
    env = dict(os.environ)
    env.update(
        CARGO_TARGET_DIR=str(target_dir),
        CARGO_PROFILE_RELEASE_LTO="thin",
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS="16",
        PYO3_PYTHON=sys.executable,
    )
    cmd = ["cargo", "build", "--release", "--lib", "--features", FAULT_FEATURES]
    cmd += ["--manifest-path", str(ROOT / "Cargo.toml"), "--message-format=short"]
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise RuntimeError("the crash battery needs cargo to build its fault-injection extension") from e
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return target_dir / "release" / "libckptio.so"


def make_fault_package(dest: Path) -> dict[str, str]:
    """Puts a copy of python/ckptio with the fault-injection extension under ``dest``
    and returns the environment for a child to import it, checking that it does and
    that a crash point works there (a control: without it, every crash case would
    pass for the wrong reason or fail for one)."""
    library = build_fault_extension()
    pkg = dest / "ckptio"
    ignore = shutil.ignore_patterns("_core*.so", "__pycache__")
    shutil.copytree(ROOT / "python" / "ckptio", pkg, ignore=ignore)
    shutil.copy2(library, pkg / "_core.abi3.so")
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": str(dest) + (os.pathsep + path if path else "")}
    probe = "import ckptio; print(ckptio.__file__)"
    result = run_python(probe, env=env)
    assert result.stdout.strip() == str(pkg / "__init__.py"), (result.stdout, result.stderr)
    target = dest / "probe"
    save = f"import ckptio; ckptio.save_weights_for_sampler({str(target)!r}, {{}})"
    result = run_python(save, env={**env, "CKPTIO_CRASH_AT": "staged"})
    assert result.returncode == -9 and not target.exists(), (result.returncode, result.stderr)
    return env


# A fork server: one interpreter that has imported numpy and ckptio (and saved
# nothing, so no core thread pool exists and no crash point has read the environment
# yet) forks a child per request. A child starts in milliseconds instead of the ~0.3 s
# of a fresh interpreter, and a SIGKILL still ends only that child.
_ZYGOTE = r"""
import json, os, sys, time, traceback
import numpy, ckptio, _faults
proto = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            os.environ.update(req["env"])
            sys.argv = ["-c", *req["argv"]]
            g = {"__name__": "__main__"}
            exec(req["preamble"], g)
            exec(req["code"], g)
            sys.stdout.flush()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    deadline = time.monotonic() + req["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.002)
    rc = None if status is None else os.waitstatus_to_exitcode(status)
    proto.write(json.dumps({"rc": rc}) + "\n")
    proto.flush()
"""


class ForkServer:
    """Runs code in forked children of a warm interpreter; see ``_ZYGOTE``."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        """``env``: extra environment of the server and its children (``fault_env``
        for the test build with crash points)."""
        env = {**os.environ, **(env or {})}
        env.pop("CKPTIO_CRASH_AT", None)
        env.pop("CKPTIO_STOP_AT", None)
        env.pop("CKPTIO_FAIL_AT", None)
        self.log_dir = log_dir
        self.n = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).parent,
        )

    def run(
        self,
        code: str,
        *argv: str,
        env: dict[str, str] | None = None,
        preamble: str = "",
        timeout: float = 60,
    ) -> tuple[int | None, str]:
        """(exit code, negative for a signal, None on timeout; the child's output)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        log = self.log_dir / f"child-{self.n}.log"
        req = {
            "code": textwrap.dedent(code),
            "argv": list(argv),
            "env": env or {},
            "preamble": textwrap.dedent(preamble),
            "log": str(log),
            "timeout": timeout,
        }
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died ({self.proc.poll()})")
        return json.loads(line)["rc"], log.read_text() if log.exists() else ""

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# Makes renameat2 with flags fail with ENOSYS in this process (a seccomp filter), as on
# a filesystem without RENAME_EXCHANGE / RENAME_NOREPLACE: forces the core's two-rename
# fallback without a test hook in the core. x86_64 and aarch64 only.
NO_RENAMEAT2 = """
import ctypes as _c, errno as _e, platform as _p, struct as _s
def _install():
    nr = {"x86_64": 316, "aarch64": 276}[_p.machine()]
    ins = lambda code, k, jt=0, jf=0: _s.pack("HBBI", code, jt, jf, k)
    prog = b"".join([
        ins(0x20, 0),               # A = syscall number
        ins(0x15, nr, 0, 3),        # if A != renameat2: allow
        ins(0x20, 16 + 8 * 4),      # A = low word of args[4] (flags)
        ins(0x15, 0, 1, 0),         # flags == 0: allow (plain rename)
        ins(0x06, 0x00050000 | _e.ENOSYS),
        ins(0x06, 0x7FFF0000),
    ])
    buf = _c.create_string_buffer(prog)
    class Prog(_c.Structure):
        _fields_ = [("len", _c.c_ushort), ("filter", _c.c_void_p)]
    libc = _c.CDLL(None, use_errno=True)
    fprog = Prog(len(prog) // 8, _c.addressof(buf))
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER.
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, _c.byref(fprog), 0, 0):
        raise OSError(_c.get_errno(), "seccomp")
_install()
"""


# -- crafting files -----------------------------------------------------------------
def xxh3_hex(data: bytes) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def read_manifest(ckpt: Path) -> dict[str, Any]:
    """The ``manifest`` object of ``ckpt``'s ckptio.json."""
    return json.loads((ckpt / MANIFEST).read_bytes())["manifest"]


def write_manifest(ckpt: Path, manifest: Any, *, body: bytes | None = None) -> None:
    """Writes ckptio.json with a valid self-checksum over ``manifest`` (or the raw
    ``body`` bytes, for manifests json.dumps cannot express)."""
    if body is None:
        body = json.dumps(manifest).encode()
    (ckpt / MANIFEST).write_bytes(
        b'{"manifest":' + body + b',"manifest_xxh3":"' + xxh3_hex(body).encode() + b'"}'
    )


def safetensors_bytes(header: Any, data: bytes | int = b"") -> bytes:
    """A safetensors file: length prefix, JSON header (a str is used verbatim), data."""
    if isinstance(header, bytes):
        h = header
    else:
        h = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    body = data if isinstance(data, bytes) else bytes(data)
    return struct.pack("<Q", len(h)) + h + body


def resign(ckpt: Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Brings the manifest's record of every file (size, checksum) in line with the
    files as they now are, so only the structural checks can object. Tensor records
    are kept (a test edits them on purpose)."""
    m = manifest if manifest is not None else read_manifest(ckpt)
    for rec in m["files"]:
        path = ckpt / rec["name"]
        if not path.is_file() or path.is_symlink():
            continue
        size = path.stat().st_size
        with open(path, "rb") as f:
            if rec["role"] == "tensors":
                prefix = f.read(8)
                n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
                head = prefix + f.read(min(n, 1 << 27)) if n <= size - 8 else prefix
            else:
                head = f.read()
        rec["size"] = size
        rec["xxh3"] = xxh3_hex(head)
    write_manifest(ckpt, m)
    return m


def tensor_files(ckpt: Path) -> list[str]:
    return [r["name"] for r in read_manifest(ckpt)["files"] if r["role"] == "tensors"]


def flip_bit(path: Path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


if __name__ == "__main__":
    # .ci/run builds the test extension here first, so its time shows as a step of its own.
    t0 = time.monotonic()
    print(f"built {build_fault_extension()} in {time.monotonic() - t0:.0f} s")
