"""``ckptio bench --workload dcp``: the code every rank runs.

Each rank is a process of one gloo process group (CPU only). It builds the seeded
``llm`` state, shards every tensor over a 1-d device mesh (``Shard(0)``; ``Replicate()``
when dim 0 is shorter than the mesh, or 0-d), then runs the rounds: every (operation,
library) pair, the library order alternating between rounds. Each operation starts
after a barrier and its figures are the maximum over the ranks (the wall time of the
slowest rank). Only rank 0 talks to the parent, through a queue: progress, then the
result (or the error).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
import signal
import sys
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .dcpcatalog import (
    ASYNC_SAVE,
    DCP_LIBRARIES,
    DCP_LOADS,
    DCP_OPERATIONS,
    LOAD_COLD,
    LOAD_HOT,
    LOAD_RESHARDED,
    SAVE,
    STAGE,
    DcpLibrary,
    fingerprint,
    placement_for,
)
from .measure import (
    drop_from_cache,
    files_under,
    memory_status,
    reset_peak_rss,
    resident_fraction,
    settle_memory,
    warm_cache,
)
from .runner import BenchConfig, BenchResult, Measurement, WorkloadInfo
from .workloads import build_state


@dataclass
class RankSetup:
    """What every rank needs: the run's config, the number of ranks, the run's directory
    (checkpoints, the process group's store, the logs) and how long an operation may take.

    Example:
        >>> RankSetup(BenchConfig(("llm",), 1 << 20, 1), 2, "/tmp/run", 60.0).libraries
        ['ckptio', 'DCP FileSystem', 'DCP HuggingFace']
    """

    config: BenchConfig
    world: int
    workdir: str
    timeout: float
    #: ``libraries`` to measure, by name (default: all of DCP_LIBRARIES)
    libraries: list[str] = field(default_factory=lambda: [lib.name for lib in DCP_LIBRARIES])


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _wait(value: Any) -> Any:
    return value.result() if isinstance(value, Future) else value


class _Rank:
    """One rank's state and rounds (see the module docstring)."""

    def __init__(self, setup: RankSetup, rank: int, send: Any) -> None:
        import torch.distributed as dist

        self.setup, self.rank, self.world, self.send = setup, rank, setup.world, send
        self.dist = dist
        self.work = Path(setup.workdir)
        self.result = BenchResult(setup.config)
        self.failed: set[tuple[str, str]] = set()

    # -- set-up ------------------------------------------------------------------------
    def start(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        store = f"file://{self.work / 'process-group'}"
        timeout = timedelta(seconds=self.setup.timeout + 60)
        self.dist.init_process_group(
            "gloo", init_method=store, rank=self.rank, world_size=self.world, timeout=timeout
        )
        self.mesh = init_device_mesh("cpu", (self.world,))
        libraries = {lib.name: lib for lib in DCP_LIBRARIES}
        self.libraries: dict[str, DcpLibrary] = {}
        for name in self.setup.libraries:
            library = libraries[name]()
            reasons: list[Any] = [None] * self.world
            self.dist.all_gather_object(reasons, library.unavailable())
            reason = next((r for r in reasons if r is not None), None)
            if reason is not None:
                self.result.skipped[name] = reason
            else:
                self.libraries[name] = library
                self.result.versions[name] = library.version()
        self.result.active = list(self.libraries)

    def build(self) -> None:
        import torch
        from torch.distributed.tensor import DTensor, distribute_tensor, zeros

        def shard(array: Any, dim: int = 0) -> DTensor:
            p = placement_for(array.shape, self.world, dim)
            whole = distribute_tensor(torch.from_numpy(array), self.mesh, [p], src_data_rank=None)
            local = whole.to_local().clone(memory_format=torch.contiguous_format)  # the full array can go
            return DTensor.from_local(
                local, self.mesh, [p], run_check=False, shape=whole.shape, stride=whole.stride()
            )

        size = self.setup.config.size
        state = build_state("llm", size, self.setup.config.seed)
        nbytes, count = state.nbytes, state.tensor_count + 1
        model, optim = {}, {}
        for name in list(state.weights):
            model[name] = shard(state.weights.pop(name))
            moments = state.optimizer["state"].pop(name)
            optim[name] = {k: shard(moments.pop(k)) for k in ("exp_avg", "exp_avg_sq")}
        self.state = {"model": model, "optim": {"state": optim}, "step": shard(np.asarray(state.step))}
        del state
        self.result.workloads.append(WorkloadInfo("llm", nbytes + 8, count))
        self.expected = self._fingerprints(self.state)

        def like(dim: int) -> Any:
            def empty(t: Any) -> Any:
                if not isinstance(t, DTensor):
                    return torch.zeros_like(t)
                p = placement_for(tuple(t.shape), self.world, dim)
                return zeros(t.shape, dtype=t.dtype, device_mesh=self.mesh, placements=[p])

            return _map(self.state, empty)

        self.destinations = {LOAD_HOT: like(0), LOAD_RESHARDED: like(1)}
        self.destinations[LOAD_COLD] = self.destinations[LOAD_HOT]
        self.sharding = _describe_sharding(self.state)

    def _fingerprints(self, state: dict[str, Any]) -> list[int]:
        mine = [fingerprint(t, self.rank, self.world) for t in _leaves(state)]
        every: list[Any] = [None] * self.world
        self.dist.all_gather_object(every, mine)
        return [sum(values) for values in zip(*every, strict=True)]

    # -- one operation -------------------------------------------------------------------
    def _place(self, name: str, op: str, rnd: int) -> Path:
        if op in DCP_LOADS or (op == SAVE and rnd < 0):
            return self.work / "sources" / _slug(name)
        return self.work / (f"round-{rnd + 1}" if rnd >= 0 else "warmup") / f"{_slug(name)}-{_slug(op)}"

    def _operate(self, library: DcpLibrary, op: str, path: Path) -> float | None:
        """Runs ``op``; returns the stall of an async save."""
        import torch.distributed.checkpoint as dcp

        if op == SAVE:
            dcp.save(self.state, storage_writer=library.writer(str(path)))
        elif op in DCP_LOADS:
            dcp.load(self.destinations[op], storage_reader=library.reader(str(path)))
        elif op == STAGE:
            stager = library.writer(str(path))
            staged = _wait(stager.stage(self.state)) if hasattr(stager, "stage") else _stage_copy(self.state)
            del staged
        elif op == ASYNC_SAVE:
            start = time.perf_counter()
            response: Any = dcp.async_save(self.state, storage_writer=library.writer(str(path)))
            upload = getattr(response, "upload_completion", response)
            with contextlib.suppress(AttributeError):
                response.staging_completion.result()
            stall = time.perf_counter() - start
            upload.result()
            return stall
        else:
            raise ValueError(f"unknown operation {op!r}")
        return None

    def measure(self, name: str, op: str, rnd: int) -> Measurement | None:
        """Times ``op`` of library ``name`` on every rank; the figures are the maximum
        over the ranks. None (and a failure recorded) when it raised anywhere, or when
        a load did not give back the saved values."""
        import torch

        library, path = self.libraries[name], self._place(name, op, rnd)
        resident = None
        if op in DCP_LOADS:
            for t in _leaves(self.destinations[op]):
                (t.to_local() if hasattr(t, "to_local") else t).zero_()
        settle_memory()
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            if op not in DCP_LOADS or op == LOAD_COLD:
                os.sync()  # no writeback of earlier operations meanwhile
            if op == LOAD_COLD:
                drop_from_cache(files_under(path))
            elif op in DCP_LOADS and resident_fraction(files_under(path)) < 0.99:
                warm_cache(files_under(path))
            if op in DCP_LOADS:
                resident = resident_fraction(files_under(path))
        self.dist.barrier()
        reset_peak_rss()
        before = memory_status()
        error, stall = "", None
        start = time.perf_counter()
        try:
            stall = self._operate(library, op, path)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            error = f"{type(e).__name__}: {e}".strip().splitlines()[0][:400]
        seconds = time.perf_counter() - start
        after = memory_status()
        figures = [
            seconds,
            stall or 0.0,
            after["VmHWM"] - before["VmHWM"],
            after.get("RssAnon", 0) - before.get("RssAnon", 0),
        ]
        worst = torch.tensor([*figures, 1.0 if error else 0.0], dtype=torch.float64)
        self.dist.all_reduce(worst, op=self.dist.ReduceOp.MAX)
        if worst[4] > 0:
            errors: list[Any] = [None] * self.world
            self.dist.all_gather_object(errors, error)
            self._fail(name, op, rnd, next(e for e in errors if e))
            return None
        if op in DCP_LOADS and self._fingerprints(self.destinations[op]) != self.expected:
            self._fail(name, op, rnd, "the loaded tensors differ from the saved ones")
            return None
        if self.rank == 0 and op not in DCP_LOADS and not (rnd < 0 and op == SAVE):
            shutil.rmtree(path, ignore_errors=True)
        s, stall_s, peak, anon = worst[:4].tolist()
        return Measurement(
            "llm", name, op, rnd, s, int(peak), int(anon), stall_s if stall is not None else None, resident
        )

    def _fail(self, name: str, op: str, rnd: int, error: str) -> None:
        self.failed.add((name, op))
        if op == SAVE and rnd < 0:  # the checkpoint its loads read: nothing to load
            self.failed.update((name, load) for load in DCP_LOADS)
        self.result.failures.append(f"llm / {name} / {op}: {error}")

    # -- the rounds -------------------------------------------------------------------
    def pairs(self) -> list[tuple[str, str]]:
        return [
            (op, n) for op in DCP_OPERATIONS for n in self.result.active if op in self.libraries[n].operations
        ]

    def run(self) -> None:
        config = self.setup.config
        total = 2 + len(self.result.active) + config.runs * len(self.pairs())
        done = 2
        self.send(("progress", done, total, "llm: state built and sharded"))
        for name in self.result.active:  # untimed: what the loads read; first-call costs
            for op in (SAVE, ASYNC_SAVE) if ASYNC_SAVE in self.libraries[name].operations else (SAVE,):
                m = self.measure(name, op, -1)
                if m is not None:
                    self.result.first_saves.append(m)
            done += 1
            self.send(("progress", done, total, f"llm: first saves of {name}"))
        for rnd in range(config.runs):
            order = self.result.active if rnd % 2 == 0 else self.result.active[::-1]
            for op in DCP_OPERATIONS:
                for name in order:
                    if op not in self.libraries[name].operations:
                        continue
                    if (name, op) not in self.failed:
                        m = self.measure(name, op, rnd)
                        if m is not None:
                            self.result.measurements.append(m)
                    done += 1
                    self.send(("progress", done, total, f"llm {rnd + 1}/{config.runs} {op}: {name}"))
            if self.rank == 0:
                shutil.rmtree(self.work / f"round-{rnd + 1}", ignore_errors=True)
        self.dist.barrier()


def _stage_copy(state: dict[str, Any]) -> Any:
    """What DCP's own staging does: a CPU copy of the state dict."""
    from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

    return _copy_state_dict(state, _create_cpu_state_dict(state))


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [leaf for key in tree for leaf in _leaves(tree[key])]
    return [tree]


def _map(tree: Any, fn: Any) -> Any:
    return {k: _map(v, fn) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def _describe_sharding(state: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in _leaves(state):
        p = t.placements[0] if hasattr(t, "placements") else None
        placement = "plain tensor" if p is None else f"Shard({p.dim})" if p.is_shard() else "Replicate()"
        counts[placement] = counts.get(placement, 0) + 1
    return counts


def rank_main(rank: int, setup: RankSetup, queue: Any) -> None:
    """Entry point of a rank process (``multiprocessing`` spawn): output to its log
    file in the run directory; rank 0 sends ``("progress", done, total, label)``, then
    ``("result", BenchResult, info)`` or ``("error", text)``. Exits 1 on an error.

    Example:
        ``ctx.Process(target=rank_main, args=(0, setup, ctx.Queue())).start()``
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    log = open(Path(setup.workdir) / f"rank-{rank}.log", "ab", buffering=0)  # noqa: SIM115 - the process's
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks of a hung operation
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

    def send(message: tuple[Any, ...]) -> None:
        if rank == 0:
            queue.put(message)

    try:
        worker = _Rank(setup, rank, send)
        worker.start()
        worker.build()
        worker.run()
        import torch

        info = {"sharding": worker.sharding, "ranks": setup.world, "torch": torch.__version__}
        send(("result", worker.result, info))
        worker.dist.destroy_process_group()
    except BaseException:
        text = traceback.format_exc()
        sys.stderr.write(text)
        send(("error", text.strip().splitlines()[-1]))
        sys.stderr.flush()
        if rank == 0:
            queue.close()
            queue.join_thread()  # the error reaches the parent before we exit
        os._exit(1)
