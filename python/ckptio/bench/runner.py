"""Runs the comparison: starts one worker per library family, builds the same seeded
state in each, then runs N rounds of every (operation, library) pair, rotating
the library order between rounds (A B C, B C A, C A B, ...) so the drift of a shared
machine falls on every library alike, and no library is the first of a round twice
before every library has been (the first save of a round runs slow, see
:func:`round_order`). Files live in one directory the caller owns and removes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import LIBRARIES, families
from .library import OPERATIONS, SAVE, SAVES, Library
from .worker import WorkerError, WorkerProcess
from .workloads import workload_bytes

#: A worker that has not answered after this long plus the state size at
#: SLOWEST_DEVICE bytes/s is taken as hung: its stacks are logged and it is stopped.
OPERATION_TIMEOUT = 60.0
SLOWEST_DEVICE = 50e6
#: progress(done, total, label)
Progress = Callable[[int, int, str], None]


@dataclass
class BenchConfig:
    """What to run. ``size`` is in bytes (lora uses a fraction of it)."""

    workloads: tuple[str, ...]
    size: int
    runs: int
    seed: int = 0


@dataclass
class Measurement:
    """One timed operation of one round."""

    workload: str
    library: str
    operation: str
    round: int
    seconds: float
    rss_peak: int
    rss_anon: int
    stall: float | None = None
    #: Fraction of the files in the page cache when a cold load started (should be 0).
    resident_before: float | None = None


@dataclass
class WorkloadInfo:
    """The state a workload built: its bytes and tensor count."""

    name: str
    nbytes: int
    tensors: int


@dataclass
class BenchResult:
    """Everything a run measured, plus what it could not run and why."""

    config: BenchConfig
    workloads: list[WorkloadInfo] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    #: The first, untimed save of each library in each workload (round -1): not in the
    #: medians; it shows first-call costs, e.g. an async save allocating its staging.
    first_saves: list[Measurement] = field(default_factory=list)
    #: library -> why it was skipped (not installed, ...)
    skipped: dict[str, str] = field(default_factory=dict)
    #: "workload / library / operation: error" of operations that failed
    failures: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _measurement(workload: str, library: str, op: str, rnd: int, reply: dict[str, Any]) -> Measurement:
    return Measurement(
        workload,
        library,
        op,
        rnd,
        reply["seconds"],
        reply["rss_peak"],
        reply["rss_anon"],
        reply.get("stall"),
        reply.get("resident_before"),
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def round_order(libraries: list[str], rnd: int) -> list[str]:
    """The order the libraries run in, in round ``rnd`` (from 0): rotated by one per
    round. The first save of a round is slow whoever makes it: in one default run the
    first 1 GiB save of the three rounds took 2.0 s (ckptio), 3.0 s (raw write) and
    0.56 s (ckptio), where the same two rows took 0.11 s and 0.26-0.67 s in the rounds
    they were not first. So each library takes that place once in as many rounds as
    there are libraries; reversing the order every other round put the two ends of the
    list there twice in three rounds.

    Example:
        >>> [round_order(["a", "b", "c"], r) for r in range(4)]
        [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    if not libraries:
        return []
    shift = rnd % len(libraries)
    return libraries[shift:] + libraries[:shift]


def pairs_of(
    libraries: list[str],
    catalog: tuple[type[Library], ...] = LIBRARIES,
    operations: tuple[str, ...] = OPERATIONS,
) -> list[tuple[str, str]]:
    """(operation, library) pairs one round runs, in order, for the given libraries of
    ``catalog``.

    Example:
        >>> pairs_of(["raw write/read"])[:2]
        [('save', 'raw write/read'), ('save durable', 'raw write/read')]
    """
    by_name = {lib.name: lib for lib in catalog}
    return [(op, name) for op in operations for name in libraries if op in by_name[name].operations]


class Benchmark:
    """One run of the local suite (files in ``workdir``): owns its workers; call
    :meth:`run`, which always stops them. Subclasses (the S3 suite) set the class
    attributes and the places their saves go to.

    Example:
        ``Benchmark(BenchConfig(("llm",), 64 << 20, 1), Path(tmp)).run()``
    """

    suite = "local"
    libraries: tuple[type[Library], ...] = LIBRARIES
    operations: tuple[str, ...] = OPERATIONS
    #: Bytes/s below which an operation is taken as hung (with OPERATION_TIMEOUT).
    slowest = SLOWEST_DEVICE

    def __init__(self, config: BenchConfig, workdir: Path, progress: Progress | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.progress = progress or (lambda done, total, label: None)
        self.workers: dict[str, WorkerProcess] = {}
        self.result = BenchResult(config)
        self.by_name = {lib.name: lib for lib in self.libraries}
        #: Sent to every worker's libraries (``Library.configure``).
        self.settings: dict[str, Any] = {}
        #: Added to the workers' environment.
        self.worker_env: dict[str, str] = {}
        self._failed: set[tuple[str, str]] = set()
        self._done = 0
        self._total = 0
        self._timeout = OPERATION_TIMEOUT

    def source_of(self, name: str) -> str:
        """The library whose saved checkpoint ``name`` loads."""
        return self.by_name[name].reads_from or name

    # -- workers -------------------------------------------------------------------
    def _start_workers(self) -> None:
        groups = families(self.libraries)
        for family in groups:
            log = self.workdir / f"worker-{family}.log"
            self.workers[family] = WorkerProcess(family, log, env=self.worker_env)
        for family, worker in self.workers.items():
            worker.send("hello", names=groups[family], suite=self.suite, settings=self.settings)
        for family, worker in list(self.workers.items()):
            try:
                reply = worker.receive(timeout=OPERATION_TIMEOUT)
            except WorkerError as e:
                for name in groups[family]:
                    self.result.skipped[name] = str(e)
                worker.kill()
                del self.workers[family]
                continue
            for name, reason in reply["available"].items():
                if reason is not None:
                    self.result.skipped[name] = reason
            self.result.versions.update(reply["versions"])
            if not any(reason is None for reason in reply["available"].values()):
                worker.close()
                del self.workers[family]
        self.result.active = [
            lib.name
            for lib in self.libraries
            if lib.family in self.workers and lib.name not in self.result.skipped
        ]

    def stop(self) -> None:
        """Stops every worker (by pid); safe to call twice."""
        for worker in self.workers.values():
            worker.kill()
        self.workers.clear()

    # -- one workload --------------------------------------------------------------
    def _build(self, workload: str) -> None:
        size = workload_bytes(workload, self.config.size)
        for worker in self.workers.values():
            worker.send("build", workload=workload, size=size, seed=self.config.seed)
        infos = set()
        for family, worker in list(self.workers.items()):
            try:
                reply = worker.receive(timeout=OPERATION_TIMEOUT + size / SLOWEST_DEVICE)
            except WorkerError as e:
                self._family_failed(workload, family, f"building the state: {e}")
                continue
            infos.add((reply["bytes"], reply["tensors"]))
        if len(infos) > 1:
            raise RuntimeError(f"workers built different {workload} states: {sorted(infos)}")
        nbytes, tensors = infos.pop() if infos else (0, 0)
        self.result.workloads.append(WorkloadInfo(workload, nbytes, tensors))
        self._timeout = OPERATION_TIMEOUT + nbytes / self.slowest
        self._advance(f"{workload}: state built")

    def _family_failed(self, workload: str, family: str, error: str) -> None:
        for lib in self.libraries:
            if lib.family == family and lib.name in self.result.active:
                for op in lib.operations:
                    self._failed.add((lib.name, op))
                self.result.failures.append(f"{workload} / {lib.name}: {error}")
        worker = self.workers.pop(family, None)
        if worker is not None:
            worker.kill()

    def _advance(self, label: str) -> None:
        self._done += 1
        self.progress(self._done, self._total, label)

    def _request(self, workload: str, name: str, op: str, path: str, keep: bool) -> dict[str, Any] | None:
        lib = self.by_name[name]
        worker = self.workers.get(lib.family)
        if worker is None or (name, op) in self._failed:
            return None
        try:
            return worker.request("run", timeout=self._timeout, library=name, op=op, path=path, keep=keep)
        except WorkerError as e:
            if worker.process.poll() is not None:
                self._family_failed(workload, lib.family, str(e))
            else:
                self._failed.add((name, op))
                self.result.failures.append(f"{workload} / {name} / {op}: {e}")
            return None

    # -- where checkpoints go (the S3 suite overrides these) ------------------------
    def _source_place(self, workload: str, name: str) -> str:
        """Where ``name``'s untimed first save goes (what its loads read)."""
        return str(self.workdir / workload / "sources" / name)

    def _round_place(self, workload: str, rnd: int, name: str) -> str:
        """Where a timed save of round ``rnd`` goes (``name`` says which library and
        operation; the worker removes it right after the save)."""
        return str(self.workdir / workload / f"round-{rnd + 1}" / name)

    def _begin_workload(self, workload: str) -> None:
        (self.workdir / workload / "sources").mkdir(parents=True)

    def _begin_round(self, workload: str, rnd: int) -> None:
        (self.workdir / workload / f"round-{rnd + 1}").mkdir(parents=True)

    def _end_round(self, workload: str, rnd: int) -> None:
        shutil.rmtree(self.workdir / workload / f"round-{rnd + 1}")

    def _end_workload(self, workload: str) -> None:
        shutil.rmtree(self.workdir / workload)

    # -- rounds --------------------------------------------------------------------
    def _save_sources(self, workload: str) -> None:
        """Untimed: every saving library writes the checkpoint its loads will read (and
        warms up: first-call costs stay out of the figures)."""
        for name in self.result.active:
            lib = self.by_name[name]
            if SAVE not in lib.operations:
                continue
            keep = lib.reads_from is None
            path = self._source_place(workload, _slug(name) if keep else _slug(name) + "-warmup")
            reply = self._request(workload, name, SAVE, path, keep)
            if reply is not None:
                self.result.first_saves.append(_measurement(workload, name, SAVE, -1, reply))
            elif keep:
                for reader in self.result.active:  # nothing to load: skip its readers
                    for op in self.operations:
                        if op not in SAVES and self.source_of(reader) == name:
                            self._failed.add((reader, op))
        self._advance(f"{workload}: checkpoints to load written")

    def _run_pair(self, workload: str, rnd: int, op: str, name: str) -> None:
        if op in SAVES:
            path = self._round_place(workload, rnd, f"{_slug(name)}-{_slug(op)}")
        else:
            path = self._source_place(workload, _slug(self.source_of(name)))
        reply = self._request(workload, name, op, path, keep=False)
        if reply is not None:
            self.result.measurements.append(_measurement(workload, name, op, rnd, reply))

    def _run_workload(self, workload: str) -> None:
        self._failed = set()  # an operation failing on one workload may run on the next
        self._build(workload)
        self._begin_workload(workload)
        self._save_sources(workload)
        pairs = set(pairs_of(self.result.active, self.libraries, self.operations))
        for rnd in range(self.config.runs):
            order = round_order(self.result.active, rnd)
            self._begin_round(workload, rnd)
            for op in self.operations:
                for name in order:
                    if (op, name) not in pairs:
                        continue
                    self._run_pair(workload, rnd, op, name)
                    self._advance(f"{workload} {rnd + 1}/{self.config.runs} {op}: {name}")
            self._end_round(workload, rnd)
        self._end_workload(workload)

    # -- the run -------------------------------------------------------------------
    def run(self) -> BenchResult:
        """Runs every workload; stops the workers whatever happens."""
        start = time.perf_counter()
        try:
            self._start_workers()
            per_round = len(pairs_of(self.result.active, self.libraries, self.operations))
            self._total = len(self.config.workloads) * (2 + self.config.runs * per_round)
            for workload in self.config.workloads:
                self._run_workload(workload)
        finally:
            self.stop()
        self.result.seconds = time.perf_counter() - start
        return self.result


def estimate_disk_bytes(config: BenchConfig) -> int:
    """Peak bytes a run keeps on disk: the checkpoint of each saving library (what the
    loads read) plus one save in flight, for the largest workload.

    Example:
        >>> estimate_disk_bytes(BenchConfig(("llm",), 1 << 30, 3)) // (1 << 30)
        8
    """
    saving = sum(1 for lib in LIBRARIES if SAVE in lib.operations and lib.reads_from is None)
    largest = max(workload_bytes(w, config.size) for w in config.workloads)
    return int((saving + 1) * largest * 1.1)


def estimate_memory_bytes(config: BenchConfig) -> int:
    """Peak memory a run needs: one state per worker family, plus a loaded copy and an
    async staging copy.

    Example:
        >>> estimate_memory_bytes(BenchConfig(("lora",), 16 << 30, 1)) // (1 << 30)
        7
    """
    largest = max(workload_bytes(w, config.size) for w in config.workloads)
    return int((len(families()) + 2) * largest * 1.1)


def result_to_dict(result: BenchResult) -> dict[str, Any]:
    """The raw measurements as plain data (for ``--json``).

    Example:
        >>> result_to_dict(BenchResult(BenchConfig(("llm",), 1, 1)))["config"]["runs"]
        1
    """
    from dataclasses import asdict

    return asdict(result)
