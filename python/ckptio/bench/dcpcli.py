"""``ckptio bench --workload dcp --ranks N``: ckptio's ``torch.distributed.checkpoint``
storage layer against DCP's FileSystemWriter / FileSystemReader and torch's
HuggingFaceStorageWriter / HuggingFaceStorageReader, from N gloo ranks on this machine.

The parent starts the ranks (``multiprocessing`` spawn, one process group for the whole
run), shows rank 0's progress, stops every rank (by pid) when one fails, hangs or the
run is interrupted, and removes the run's directory whatever happens. The ranks' code
is ``dcprunner``; the table, targets and files are ``dcpreport``.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import queue as queue_module
import shutil
import signal
import sys
import tempfile
import time
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
from .dcpcatalog import DCP_LIBRARIES
from .dcprunner import RankSetup, rank_main
from .runner import OPERATION_TIMEOUT, SLOWEST_DEVICE, BenchConfig, BenchResult, Progress

DEFAULT_RANKS = 2
#: The ``--workload`` value that selects this suite (it saves the llm state).
DCP_WORKLOAD = "dcp"


class RankError(RuntimeError):
    """A rank failed, died or stopped answering; the message names it and quotes its log."""


def check_dcp_dependencies() -> None:
    """Raises ValueError with the install command when torch (with
    ``torch.distributed.checkpoint`` and gloo) is missing.

    Example:
        >>> check_dcp_dependencies()
    """
    if importlib.util.find_spec("torch") is None:
        raise ValueError("--workload dcp needs torch: pip install 'ckptio[bench]'")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        raise ValueError("--workload dcp needs torch.distributed with the gloo backend")


def estimate_memory_bytes_dcp(size: int, ranks: int) -> int:
    """Peak memory of a run: while building, every rank holds the whole state once; then
    the shards, two load destinations and two staging copies.

    Example:
        >>> estimate_memory_bytes_dcp(1 << 30, 2) // (1 << 30)
        5
    """
    return int((max(ranks, 4) + 1) * size * 1.1)


def estimate_disk_bytes_dcp(size: int) -> int:
    """Peak bytes on disk: a checkpoint per library (what the loads read) plus one in flight.

    Example:
        >>> estimate_disk_bytes_dcp(1 << 30) // (1 << 30)
        4
    """
    return int((len(DCP_LIBRARIES) + 1) * size * 1.1)


class DcpBenchmark:
    """One run of the DCP suite from ``ranks`` processes, files in ``workdir``; call
    :meth:`run` (it always stops the ranks). ``stop`` kills them by pid.

    Example:
        ``DcpBenchmark(BenchConfig(("llm",), 64 << 20, 1), 2, Path(tmp)).run()``
    """

    def __init__(
        self, config: BenchConfig, ranks: int, workdir: Path, progress: Progress | None = None
    ) -> None:
        self.config, self.ranks, self.workdir = config, ranks, workdir
        self.progress = progress or (lambda done, total, label: None)
        self.timeout = OPERATION_TIMEOUT + 2 * config.size / SLOWEST_DEVICE
        self.processes: list[Any] = []
        self.info: dict[str, Any] = {}

    def run(self) -> BenchResult:
        """Starts the ranks, follows rank 0 until its result; raises RankError when a
        rank fails, dies or is silent for longer than an operation may take."""
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        setup = RankSetup(self.config, self.ranks, str(self.workdir), self.timeout)
        env = {"OMP_NUM_THREADS": "1"}  # what torchrun sets for several ranks per machine
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            for rank in range(self.ranks):
                process = context.Process(target=rank_main, args=(rank, setup, messages), daemon=True)
                process.start()
                self.processes.append(process)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            result = self._follow(messages)
        finally:
            self.stop()
        result.seconds = time.perf_counter() - start
        return result

    def _follow(self, messages: Any) -> BenchResult:
        last = time.monotonic()
        limit = self.timeout + self.config.size / SLOWEST_DEVICE * self.ranks  # building comes first
        while True:
            try:
                message = messages.get(timeout=1.0)
            except queue_module.Empty:
                for rank, process in enumerate(self.processes):
                    if process.exitcode not in (None, 0):
                        raise RankError(self._died(rank, f"exited with code {process.exitcode}")) from None
                if time.monotonic() - last > limit:
                    self._dump_stacks()
                    raise RankError(self._died(0, f"no progress within {limit:.0f} s")) from None
                continue
            last, limit = time.monotonic(), self.timeout
            if message[0] == "progress":
                self.progress(*message[1:])
            elif message[0] == "result":
                _, result, self.info = message
                for process in self.processes:
                    process.join(timeout=30)
                return result
            else:
                raise RankError(self._died(0, message[1]))

    def _dump_stacks(self) -> None:
        for process in self.processes:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGUSR1)  # faulthandler writes to the rank's log
        time.sleep(0.5)

    def _died(self, rank: int, what: str) -> str:
        tail = ""
        try:
            lines = (self.workdir / f"rank-{rank}.log").read_text(errors="replace").strip().splitlines()
            tail = " | ".join(line.strip() for line in lines[-8:])
        except OSError:
            pass
        return f"rank {rank} of {self.ranks} {what}{': ' + tail if tail else ''}"

    def stop(self) -> None:
        """Kills every rank still running (SIGKILL to its pid) and reaps it; safe twice."""
        for process in self.processes:
            if process.exitcode is None:
                process.kill()
        for process in self.processes:
            process.join(timeout=10)
        self.processes.clear()


def check_dcp_arguments(args: argparse.Namespace) -> None:
    """Raises ValueError for the options the DCP suite does not take.

    Example:
        >>> ns = argparse.Namespace(s3=False, storage=None, part_size=None, parts_in_flight=None, plot=None)
        >>> check_dcp_arguments(ns)
    """
    if args.s3 or args.storage:
        raise ValueError("--workload dcp runs on local files; it does not take --s3 or --storage")
    if args.part_size or args.parts_in_flight:
        raise ValueError("--part-size and --parts-in-flight apply to S3 runs only (--s3 or --storage)")
    if args.plot:
        raise ValueError("--plot is not available with --workload dcp (use --json or --markdown)")


def run_dcp(args: argparse.Namespace, size: int, runs: int, command: str) -> int:
    """Runs the DCP suite with parsed arguments (``--size`` / ``--runs`` resolved);
    returns the exit code: 0, 1 when a rank failed, 130 when interrupted. Bad arguments
    raise ValueError, reported by the ``ckptio`` command.

    Example:
        ``ckptio bench --workload dcp --ranks 4 --json bench-dcp.json``
    """
    from .dcpreport import build_dcp_report, format_markdown_dcp, format_terminal_dcp
    from .machine import describe_machine

    check_dcp_arguments(args)
    check_dcp_dependencies()
    ranks = args.ranks or DEFAULT_RANKS
    config = BenchConfig(workloads=("llm",), size=size, runs=runs, seed=args.seed)
    directory = args.dir or tempfile.gettempdir()
    check_directory(directory, estimate_disk_bytes_dcp(size))
    check_memory(estimate_memory_bytes_dcp(size, ranks))
    check_outputs(args)

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 - readable
    machine = describe_machine(directory)
    progress = None if args.no_progress else ProgressBar()
    workdir = Path(tempfile.mkdtemp(prefix="ckptio-bench-", dir=directory))
    benchmark = DcpBenchmark(config, ranks, workdir, progress)
    try:
        with _terminate_as_interrupt():
            try:
                result = benchmark.run()
            except KeyboardInterrupt:
                benchmark.stop()
                if progress is not None:
                    progress.close()
                print(f"ckptio bench: interrupted; removed {workdir}", file=sys.stderr)
                return 130
            except RankError as e:
                if progress is not None:
                    progress.close()
                print(f"ckptio bench: the dcp run failed: {e}", file=sys.stderr)
                return 1
    finally:
        benchmark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if progress is not None:
        progress.close()

    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    settings = {
        "ranks": ranks,
        "backend": "gloo",
        "sharding": benchmark.info.get("sharding", {}),
        "torch": benchmark.info.get("torch", ""),
        "vs_raw": "the rows' vs_raw is the speed ratio against DCP FileSystem",
    }
    report = build_dcp_report(result, machine, date, command, settings)
    write_outputs(args, report, format_terminal_dcp(report), format_markdown_dcp)
    return 0
