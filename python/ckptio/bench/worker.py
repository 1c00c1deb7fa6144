"""The measuring subprocess, and the parent's handle on it.

One long-lived worker per library family (``python -m ckptio.bench.worker``) holds one
copy of the seeded state and runs the operations it is sent, one at a time, over JSON
lines on stdin / stdout. Before each operation it resets its peak resident set
(``/proc/self/clear_refs``), so ``VmHWM`` afterwards is the peak of that operation
alone: no parent's peak carried across ``exec`` (as ``ru_maxrss`` would), and no torch
import per measurement. Output of the libraries goes to a log file, not the protocol.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from .library import LOAD_COLD, LOADS, OPEN, OPEN_REPEATS, SAVE_DURABLE, SAVES, VERIFY, Library
from .measure import (
    drop_from_cache,
    files_under,
    memory_status,
    reset_peak_rss,
    resident_fraction,
    settle_memory,
    touch,
    warm_cache,
)
from .workloads import build_state


class WorkerError(RuntimeError):
    """A worker answered with an error, or died."""


def _measure(library: Library, op: str, path: Path, keep: bool) -> dict[str, Any]:
    result: Any = None
    settle_memory()
    extra: dict[str, float] = {}
    if op in SAVES or op == LOAD_COLD:
        os.sync()  # no dirty pages of earlier operations being written back meanwhile
    if op == LOAD_COLD:
        drop_from_cache(files_under(path))
        extra["resident_before"] = resident_fraction(files_under(path))
    elif op not in SAVES:
        files = files_under(path)
        if resident_fraction(files) < 0.99:
            warm_cache(files)
        extra["resident_before"] = resident_fraction(files)
    reset_peak_rss()
    before = memory_status()
    start = time.perf_counter()
    if op in SAVES:
        extra.update(library.save(path, durable=op == SAVE_DURABLE))
    elif op == OPEN:
        result = library.open(path)
    elif op in LOADS:
        result = library.load(path)
        touch(result)
    elif op == VERIFY:
        library.verify(path)
    else:
        raise ValueError(f"unknown operation {op!r}")
    seconds = time.perf_counter() - start
    after = memory_status()
    del result
    settle_memory()
    if op in SAVES and not keep:
        shutil.rmtree(path)  # a page-cache save removed before writeback costs no IO later
    return {
        "seconds": seconds,
        "rss_peak": after["VmHWM"] - before["VmHWM"],
        "rss_anon": after.get("RssAnon", 0) - before.get("RssAnon", 0),
        **extra,
    }


def _measure_open(library: Library, path: Path) -> dict[str, Any]:
    """:func:`_measure` of ``open``, :data:`OPEN_REPEATS` times: the median time, and the
    largest peak RSS and anonymous-memory growth of any of them."""
    samples = [_measure(library, OPEN, path, keep=True) for _ in range(OPEN_REPEATS)]
    result = dict(samples[0])
    result["seconds"] = statistics.median(m["seconds"] for m in samples)
    for key in ("rss_peak", "rss_anon"):
        result[key] = max(m[key] for m in samples)
    return result


class _Server:
    def __init__(self) -> None:
        self.libraries: dict[str, Library] = {}
        self.settings: dict[str, Any] = {}

    def hello(
        self, names: list[str], suite: str = "local", settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        from .catalog import by_name

        catalog = by_name(suite)
        self.settings = settings or {}
        available: dict[str, str | None] = {}
        versions: dict[str, str] = {}
        for name in names:
            library = catalog[name]()
            library.configure(self.settings)
            reason = library.unavailable()
            available[name] = reason
            if reason is None:
                self.libraries[name] = library
                versions[name] = library.version()
        return {"available": available, "versions": versions}

    def build(self, workload: str, size: int, seed: int) -> dict[str, Any]:
        gc.unfreeze()
        for library in self.libraries.values():
            library.__dict__.clear()  # drop the previous workload's state first
            library.configure(self.settings)
        gc.collect()
        state = build_state(workload, size, seed)
        for library in self.libraries.values():
            library.prepare(state)
        gc.collect()
        gc.freeze()  # the state and the imported modules: skipped by every later collection
        return {"bytes": state.nbytes, "tensors": state.tensor_count}

    def run(self, library: str, op: str, path: str, keep: bool) -> dict[str, Any]:
        from .runners_s3 import RemoteLibrary

        lib = self.libraries[library]
        if isinstance(lib, RemoteLibrary):
            return lib.measure(op, path, keep)  # an s3:// URL, kept as text
        if op == OPEN:
            return _measure_open(lib, Path(path))
        return _measure(lib, op, Path(path), keep)


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Answers JSON-line requests until ``exit`` or end of input.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> serve(io.StringIO('{"cmd": "hello", "names": ["numpy.savez"]}\\n'), out)
        >>> json.loads(out.getvalue())["available"]
        {'numpy.savez': None}
    """
    server = _Server()
    for line in requests:
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "exit":
            break
        try:
            reply = {"ok": True, **getattr(server, cmd)(**request)}
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    """Entry point of the worker process: protocol on the original stdout, anything the
    libraries print goes to stderr (a log file the parent owns)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks of a hung operation
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, replies)


class WorkerProcess:
    """The parent's handle on one worker subprocess; ``env``: variables added to this
    process's environment for it (e.g. the S3 endpoint and keys).

    Example:
        >>> w = WorkerProcess("numpy", log_path=os.devnull)
        >>> w.request("hello", names=["numpy.savez"])["available"]
        {'numpy.savez': None}
        >>> w.close()
    """

    def __init__(
        self, family: str, log_path: str | os.PathLike[str], env: dict[str, str] | None = None
    ) -> None:
        self.family = family
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        # The worker imports the same ckptio as this process, installed or not.
        package_parent = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1", PYTHONPATH=path)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ckptio.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the parent only; it stops us
        )

    def send(self, cmd: str, **args: Any) -> None:
        """Sends a request without waiting for the reply (see :meth:`receive`)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(self._died(str(e))) from None

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """Waits for the reply to the oldest request; raises WorkerError on failure, or
        when no reply comes within ``timeout`` seconds (the worker is then stopped, after
        it has written its threads' stacks to its log)."""
        assert self.process.stdout is not None
        if timeout is not None:
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            if not ready:
                self._dump_stacks()
                self.kill()
                raise WorkerError(self._died(f"no reply within {timeout:.0f} s"))
        line = self.process.stdout.readline()
        if not line:
            raise WorkerError(self._died("no reply"))
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(reply["error"])
        return reply

    def request(self, cmd: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Sends a request and waits for its reply (see :meth:`receive`)."""
        self.send(cmd, **args)
        return self.receive(timeout)

    def _dump_stacks(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGUSR1)  # faulthandler writes to the log
            time.sleep(0.5)

    def _died(self, what: str) -> str:
        code = self.process.poll()
        tail = ""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            tail = " | ".join(line.strip() for line in lines[-6:])
        except OSError:
            pass
        state = f"exited with code {code}" if code is not None else "stopped answering"
        return f"{self.family} worker {state} ({what}){': ' + tail if tail else ''}"

    def close(self, timeout: float = 5.0) -> None:
        """Asks the worker to exit; kills it (by pid) if it does not within ``timeout``."""
        if self.process.poll() is None:
            try:
                self.send("exit")
                self.process.wait(timeout=timeout)
            except (WorkerError, subprocess.TimeoutExpired):
                self.kill()
        self._cleanup()

    def kill(self) -> None:
        """Stops the worker now (SIGKILL to its pid) and reaps it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


if __name__ == "__main__":
    main()
