"""``ckptio bench --s3`` and ``ckptio bench --storage s3://...``: the S3 suite's run, with
a SeaweedFS started for it (``--s3``) or an existing server, everything the run wrote
removed whatever happens (Ctrl-C and SIGTERM included), and the same outputs as the
local suite (table, ``--json``, ``--markdown``, ``--plot``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .cli import (
    ProgressBar,
    _terminate_as_interrupt,
    check_directory,
    check_memory,
    check_outputs,
    write_outputs,
)
from .runner import BenchConfig
from .runners_s3 import DEFAULT_PART_SIZE, DEFAULT_PARTS_IN_FLIGHT, split_url
from .s3runner import (
    S3Benchmark,
    S3Target,
    check_reachable,
    environment,
    estimate_memory_bytes_s3,
    estimate_server_bytes,
)
from .s3server import INSTALL_HINT

#: The bucket ``--s3`` creates on its own server.
BUCKET = "ckptio-bench"


def check_s3_dependencies(start_server: bool) -> None:
    """Raises ValueError with the install command when boto3 (used by the boto3 and raw
    rows, and to delete the timed saves) or, for ``--s3``, SeaweedFS is missing.

    Example:
        >>> check_s3_dependencies(start_server=False)
    """
    if importlib.util.find_spec("boto3") is None:
        raise ValueError(f"S3 runs need boto3: {INSTALL_HINT}")
    if start_server:
        from .s3server import weed_binary

        try:
            weed_binary()
        except RuntimeError as e:
            raise ValueError(f"--s3 starts a local SeaweedFS: {e}") from None


def _start_server(workdir: Path) -> tuple[Any, dict[str, str], S3Target]:
    """A SeaweedFS for the run, its data in ``workdir``: (server, its AWS_* variables, target)."""
    from .s3server import SeaweedS3

    try:
        server = SeaweedS3(BUCKET, parent=workdir)
    except RuntimeError as e:
        raise ValueError(f"--s3: the local SeaweedFS did not start: {e}") from None
    version = server.version()
    description = f"SeaweedFS {version or '(version unknown)'} weed mini on 127.0.0.1, started by the bench"
    target = S3Target.under(f"s3://{BUCKET}", server.endpoint, server.region, description)
    return server, server.env(), target


def run_s3(args: argparse.Namespace, size: int, runs: int, command: str) -> int:
    """Runs the S3 suite with parsed arguments (``--size`` / ``--runs`` already resolved);
    returns the exit code (0, or 130 when interrupted). Bad arguments and an unreachable
    server raise ValueError, reported by the ``ckptio`` command.

    Example:
        ``ckptio bench --s3 --quick --json bench-s3.json``
    """
    from .machine import describe_machine
    from .s3report import build_s3_report, format_markdown_s3, format_terminal_s3

    check_s3_dependencies(start_server=args.s3)
    if args.storage:
        split_url(args.storage)  # a clear error for a malformed URL
    part_size = args.part_size or DEFAULT_PART_SIZE
    parts_in_flight = args.parts_in_flight or DEFAULT_PARTS_IN_FLIGHT
    config = BenchConfig(workloads=args.workload, size=size, runs=runs, seed=args.seed)
    directory = args.dir or tempfile.gettempdir()
    check_directory(directory, estimate_server_bytes(config) if args.s3 else 64 << 20)
    check_memory(estimate_memory_bytes_s3(config))
    check_outputs(args)

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 - readable
    machine = describe_machine(directory)
    progress = None if args.no_progress else ProgressBar()
    workdir = Path(tempfile.mkdtemp(prefix="ckptio-bench-", dir=directory))
    server: Any = None
    benchmark: S3Benchmark | None = None
    try:
        with _terminate_as_interrupt():
            try:
                if args.s3:
                    server, env, target = _start_server(workdir)
                else:
                    env, target = {}, S3Target.from_env(args.storage)
                with environment(env):
                    check_reachable(target)
                benchmark = S3Benchmark(config, workdir, target, part_size, parts_in_flight, progress, env)
                result = benchmark.run()
            except KeyboardInterrupt:
                if progress is not None:
                    progress.close()
                print(f"ckptio bench: interrupted; removing {workdir} and the run's objects", file=sys.stderr)
                return 130
            finally:
                _clean_up(benchmark, server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if progress is not None:
        progress.close()

    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    settings = {"part_size": part_size, "parts_in_flight": parts_in_flight, "storage": target.describe()}
    report = build_s3_report(result, machine, date, command, settings)
    write_outputs(args, report, format_terminal_s3(report), format_markdown_s3)
    return 0


def _clean_up(benchmark: S3Benchmark | None, server: Any) -> None:
    """Stops the workers, deletes the run's objects (on an existing server: a local one
    goes away whole) and stops the local server."""
    if benchmark is not None:
        benchmark.stop()
        if server is None:
            try:
                benchmark.remove()
            except Exception as e:
                print(
                    f"ckptio bench: could not delete {benchmark.target.base}/: {type(e).__name__}: {e}",
                    file=sys.stderr,
                )
    if server is not None:
        server.stop()
