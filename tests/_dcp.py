"""Helpers of the torch.distributed.checkpoint tests (tests/test_dcp*.py): a training
state regenerated bit for bit from a version number, bitwise comparisons, a search of
DCP's wrapped exceptions, and ranks run by ``torch.multiprocessing`` over gloo.

The rank functions live here, at module top level, because ``torch.multiprocessing``
pickles them by module path: a rank process gets the parent's ``sys.path`` (pytest puts
``tests/`` on it), so it imports this module, never a test file. So do the
fault-injecting writers, which DCP may pickle (``async_save`` in a process).

Each rank runs a scenario as named steps and writes ``rank-N.json`` after each one:
``{step: "ok" or the traceback}``, plus the data a step reports. A step that fails on
one rank does not stop the others (DCP turns a failure on one rank into an error on
every rank), so each test checks the steps it is about and shows their tracebacks.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import struct
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor

from ckptio.torch.dcp import Reader, Writer

RANK_FILE = "rank_{:05d}.safetensors"  # the file of rank N in a checkpoint
GLOO_TIMEOUT = timedelta(seconds=30)  # a rank stuck in a collective fails instead of hanging

# -- the training state --------------------------------------------------------------
# (path in the state dict, global shape, dtype, kind); kind "shard": a DTensor sharded
# on dim 0 when saved, "replicate": a DTensor with Replicate(), "plain": the same plain
# tensor on every rank. Dims 10, 13, 5 and 6 do not divide by 4: ranks get uneven
# pieces, and rank 3 gets none of "head.weight" and "bias".
PARAMS: list[tuple[str, tuple[int, ...], torch.dtype, str]] = [
    ("embed.weight", (10, 6), torch.float32, "shard"),
    ("proj.weight", (8, 7), torch.bfloat16, "shard"),
    ("head.weight", (6, 5), torch.float16, "shard"),
    ("ids", (13, 3), torch.int64, "shard"),
    ("bias", (5,), torch.float32, "shard"),
    ("scale", (4,), torch.float64, "replicate"),
    ("buffer", (3, 2), torch.float32, "plain"),
]
OPTIMIZED = ["embed.weight", "proj.weight", "head.weight", "bias"]  # Adam: exp_avg, exp_avg_sq, step

# IEEE-754 bit patterns written into every float tensor: a NaN with a payload, -0.0,
# inf, -inf, the smallest subnormal. A comparison of values would miss the first two.
_SPECIALS = {
    torch.float16: [0x7E01, 0x8000, 0x7C00, 0xFC00, 0x0001],
    torch.bfloat16: [0x7FC1, 0x8000, 0x7F80, 0xFF80, 0x0001],
    torch.float32: [0x7FC00123, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001],
    torch.float64: [0x7FF8000000000123, 1 << 63, 0x7FF0000000000000, 0xFFF0000000000000, 1],
}
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def full_value(name: str, shape: tuple[int, ...], dtype: torch.dtype, version: int) -> torch.Tensor:
    """The global value of tensor ``name`` in state ``version``: the same bits in every
    process (seeded by crc32, not by Python's salted ``hash``)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{version}".encode()))
    if dtype.is_floating_point:
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
        bits = t.reshape(-1).view(_INT_OF_SIZE[t.element_size()])
        width = 8 * t.element_size()
        for i, pattern in enumerate(_SPECIALS[dtype][: bits.numel()]):
            bits[i] = pattern - (1 << width) if pattern >= 1 << (width - 1) else pattern
        return t
    t = torch.randint(-(1 << 62), 1 << 62, shape, generator=gen, dtype=dtype)
    flat = t.reshape(-1)
    flat[:2] = torch.tensor([-(1 << 63), (1 << 63) - 1], dtype=dtype)[: flat.numel()]
    return t


def non_tensors(version: int) -> tuple[Any, dict[str, Any]]:
    """The optimizer's param_groups and the loop state: floats (-0.0 included), tuples,
    strings, bools, None, lists of ints, a torch.Size."""
    groups = [
        {
            "lr": 1e-3 * (version + 1),
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.01,
            "amsgrad": False,
            "foreach": None,
            "name": "decay",
            "params": [0, 1, 2],
        },
        {
            "lr": 3e-4,
            "betas": (0.8, 0.95),
            "eps": 1e-6,
            "weight_decay": -0.0,
            "name": "no-decay",
            "params": [3],
        },
    ]
    loop = {
        "epoch": 3 + version,
        "run": f"exp-{version}",
        "sizes": [7, 11, 13],
        "loss_scale": 65536.0,
        "shape": torch.Size([3, version]),  # no JSON form: DCP's pickled bytes
    }
    return groups, loop


def _tensor_specs() -> Iterator[tuple[tuple[str, ...], tuple[int, ...], torch.dtype, str]]:
    for name, shape, dtype, kind in PARAMS:
        yield ("model", name), shape, dtype, kind
    for name, shape, dtype, kind in PARAMS:
        if name in OPTIMIZED:
            yield ("optim", "state", name, "exp_avg"), shape, dtype, kind
            yield ("optim", "state", name, "exp_avg_sq"), shape, torch.float32, kind
            yield ("optim", "state", name, "step"), (), torch.float32, "plain"


def placements(kind: str, ndim: int, layout: str) -> list[Placement] | None:
    """How a tensor of ``kind`` is laid out: ``"save"`` as saved (Shard(0) or
    Replicate()), ``"reshard"`` another way (Shard(1) for matrices, Shard(0) for
    vectors and for the saved Replicate()), ``"full"`` as a plain tensor (None)."""
    if kind == "plain" or layout == "full":
        return None
    if layout == "save":
        return [Shard(0)] if kind == "shard" else [Replicate()]
    return [Shard(1)] if ndim >= 2 else [Shard(0)]


def make_state(
    version: int, mesh: DeviceMesh | None, layout: str, *, sentinel: bool = False
) -> dict[str, Any]:
    """The state dict of ``version`` laid out by ``layout`` on ``mesh`` (see
    ``placements``). ``sentinel``: a load target instead, every tensor byte 0xAB and
    every other leaf the string "UNLOADED", so anything a load misses shows."""
    groups, loop = non_tensors(version)
    state: dict[str, Any] = {"model": {}, "optim": {"state": {}, "param_groups": groups}, "loop": loop}
    for path, shape, dtype, kind in _tensor_specs():
        value = full_value(".".join(path), shape, dtype, version)
        if sentinel:
            value = sentinel_tensor(value)
        where = placements(kind, len(shape), layout)
        if where is not None:
            assert mesh is not None
            value = distribute_tensor(value, mesh, where, src_data_rank=None)  # no communication
        set_element(state, path, value)
    return unloaded_leaves(state) if sentinel else state


def sentinel_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor like ``t`` (plain) whose every byte is 0xAB."""
    nbytes = t.numel() * t.element_size()
    return torch.full((nbytes,), 0xAB, dtype=torch.uint8).view(t.dtype).reshape(t.shape)


def unloaded_leaves(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (changed in place) with every leaf DCP stores as a value rather than a
    tensor replaced by the string "UNLOADED"."""
    flat, mapping = flatten_state_dict(state)
    for key, leaf in flat.items():
        if not isinstance(leaf, torch.Tensor):
            set_element(state, mapping[key], "UNLOADED")
    return state


def flat_names(state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """DCP's flattened names of ``state``: (tensors, other values)."""
    flat, _ = flatten_state_dict(state)
    tensors = [k for k, v in flat.items() if isinstance(v, torch.Tensor)]
    return tensors, [k for k in flat if k not in tensors]


def full_tensors(version: int) -> dict[str, torch.Tensor]:
    """Every tensor of state ``version`` as a global tensor, by DCP's flattened name."""
    flat, _ = flatten_state_dict(make_state(version, None, "full"))
    return {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}


# -- bitwise comparisons ---------------------------------------------------------------
def raw(t: torch.Tensor) -> bytes:
    """The bytes of a tensor (NaN payloads and -0.0 included)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """``got`` is ``want`` bit for bit: types, keys, shapes, dtypes, placements, bytes
    (of each rank's local piece for a DTensor); floats by their IEEE bits."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, DTensor):
        assert got.placements == want.placements, f"{where}: placements {got.placements} != {want.placements}"
        assert_same(got.to_local(), want.to_local(), f"{where} (local piece)")
        assert got.shape == want.shape, f"{where}: global shape {tuple(got.shape)} != {tuple(want.shape)}"
    elif isinstance(want, torch.Tensor):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), (
            f"{where}: {got.dtype}{tuple(got.shape)} != {want.dtype}{tuple(want.shape)}"
        )
        assert raw(got) == raw(want), f"{where}: bytes differ"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (x, y) in enumerate(zip(got, want, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(want, float):
        assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of each tensor's dtype, shape and bytes."""
    return {
        k: hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + raw(t)).hexdigest()
        for k, t in sorted(tensors.items())
    }


# -- DCP's errors ----------------------------------------------------------------------
def find_exception(exc: BaseException, cls: type[BaseException]) -> BaseException | None:
    """The first ``cls`` in ``exc``, its ``__cause__``/``__context__`` chain, the
    exceptions of an ExceptionGroup and the per-rank ``failures`` of DCP's
    CheckpointException (values ``(exception, stack)``), searched recursively."""
    todo: list[Any] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop(0)
        if isinstance(e, tuple):
            todo.extend(x for x in e if isinstance(x, BaseException))
            continue
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, cls):
            return e
        todo += [e.__cause__, e.__context__]
        if isinstance(e, CheckpointException):
            todo += list(e.failures.values())
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)
    return None


@contextlib.contextmanager
def expect_failure(*classes: type[BaseException]) -> Iterator[list[BaseException]]:
    """Asserts that the block raises something with each of ``classes`` in it (see
    ``find_exception``); yields a list that receives what was raised."""
    caught: list[BaseException] = []
    try:
        yield caught
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        caught.append(e)
        for cls in classes:
            assert find_exception(e, cls) is not None, f"no {cls.__name__} in {e!r}:\n{_format(e)}"
    else:
        raise AssertionError(f"no exception raised (wanted {', '.join(c.__name__ for c in classes)})")


def _format(e: BaseException) -> str:
    return "".join(traceback.format_exception(e))[-6000:]


# -- fault injection ---------------------------------------------------------------------
class InjectedFault(RuntimeError):
    """What ``FailingWriter`` raises."""


class FailingWriter(Writer):
    """Raises ``InjectedFault`` in ``write_data`` on rank 1."""

    def write_data(self, plan: Any, planner: Any) -> Any:
        if dist.get_rank() == 1:
            raise InjectedFault("injected failure in write_data on rank 1")
        return super().write_data(plan, planner)


class KillingWriter(Writer):
    """SIGKILLs rank ``victim`` once its ``write_data`` has written its file (into the
    save's staging directory: nothing is committed before every rank is done)."""

    victim = 2

    def write_data(self, plan: Any, planner: Any) -> Any:
        result = super().write_data(plan, planner)
        if dist.get_rank() == self.victim:
            result.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        return result


# -- running ranks ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Ranks are forked by multiprocessing's fork server: a fresh interpreter, like "spawn",
# started once per session with these imported (and no torch op run: nothing a fork
# could break), so a rank starts in 0.1 s instead of the 10 s of importing torch 4 times
# on a small machine. (Not tests/ modules: Python 3.11's fork server ignores the
# parent's sys.path while preloading; each rank imports this module when unpickling.)
PRELOAD = [
    "torch",
    "torch.distributed.checkpoint",
    "torch.distributed.tensor",
    "torch.distributed.device_mesh",
    "ckptio",
    "ckptio.torch.dcp",
    "safetensors",
    "torch._dynamo",  # DTensor imports it on first use: 3 s a rank
]


def run_ranks(
    scenario: str, world: int, out: Path, *args: Any, timeout: float = 240, expect_death: bool = False
) -> tuple[list[dict[str, Any]], list[int | None]]:
    """Runs ``SCENARIOS[scenario](report, mesh, out, *args)`` on ``world`` gloo ranks
    (``torch.multiprocessing``, fork server) and returns each rank's report and exit code. A
    rank that fails raises ``ProcessRaisedException`` or ``ProcessExitedException``
    here (once the others are ended), unless ``expect_death``: then one must fail. Past
    ``timeout`` seconds every rank is killed and ``TimeoutError`` raised."""
    out.mkdir(parents=True, exist_ok=True)
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    ctx = mp.start_processes(
        _rank_main,
        args=(world, free_port(), str(out), scenario, args),
        nprocs=world,
        join=False,
        start_method="forkserver",
    )
    deadline = time.monotonic() + timeout
    died = False
    try:
        while not ctx.join(timeout=0.2, grace_period=2):
            if time.monotonic() > deadline:
                raise TimeoutError(f"scenario {scenario!r}: ranks still running after {timeout} s")
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        if not expect_death:
            raise
        died = True
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
    if expect_death and not died:
        raise AssertionError(f"scenario {scenario!r}: every rank exited normally")
    return [read_report(out, r) for r in range(world)], [p.exitcode for p in ctx.processes]


def read_report(out: Path, rank: int) -> dict[str, Any]:
    path = out / f"rank-{rank}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def assert_steps(reports: list[dict[str, Any]], *steps: str) -> None:
    """Every rank reported "ok" for every step (else: the tracebacks of those that did not)."""
    bad = [
        f"rank {r} step {s!r}: {rep.get(s, 'not reached')}"
        for s in steps
        for r, rep in enumerate(reports)
        if rep.get(s) != "ok"
    ]
    assert not bad, "\n".join(bad)


class Report:
    """A rank's step results, rewritten to ``rank-N.json`` after each step."""

    def __init__(self, out: Path, rank: int) -> None:
        self.out, self.rank, self.data = out, rank, {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
            self.data[name] = "ok"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            self.data[name] = _format(e)
        finally:
            self.data.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 2)
            self.save()
            dist.barrier()

    def save(self) -> None:
        tmp = self.out / f".rank-{self.rank}.json.tmp"
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.out / f"rank-{self.rank}.json")


def _rank_main(rank: int, world: int, port: int, out: str, scenario: str, args: tuple[Any, ...]) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"  # DCP's checkpoint process (async_save PROCESS) reads it
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    t0 = time.monotonic()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=GLOO_TIMEOUT
    )
    try:
        mesh = init_device_mesh("cpu", (world,))
        report = Report(Path(out), rank)
        report.data["seconds"] = {"init": round(time.monotonic() - t0, 2)}
        SCENARIOS[scenario](report, mesh, Path(out), *args)
    finally:
        dist.destroy_process_group()


def hidden(parent: Path) -> list[str]:
    """Hidden entries of ``parent`` that saves make (``.NAME.ckptio-tmp-...``): not the
    ranks' own ``.rank-N.json.tmp`` reports, which other ranks may be writing."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and ".ckptio-" in p.name)


def load_into(path: Path, version: int, mesh: DeviceMesh | None, layout: str) -> dict[str, Any]:
    """Loads ``path`` through ckptio's Reader into a sentinel-filled state laid out by
    ``layout`` and asserts it is state ``version``, bit for bit. Returns the state."""
    state = make_state(version, mesh, layout, sentinel=True)
    dcp.load(state, storage_reader=Reader(path), no_dist=mesh is None)
    assert_same(state, make_state(version, mesh, layout), "state")
    return state


# -- scenarios -------------------------------------------------------------------------
def scenario_save(rep: Report, mesh: DeviceMesh, out: Path) -> None:
    """4 ranks: save state 1 as ``ck``; load it back; overwrites of ``ck`` refused
    (exists) and failing (rank 1 raises), after which ``ck`` is still state 1; a
    successful overwrite of ``over`` (state 3 by state 1)."""
    ck = out / "ck"
    with rep.step("save"):
        dcp.save(make_state(1, mesh, "save"), storage_writer=Writer(ck))
    with rep.step("load"):
        load_into(ck, 1, mesh, "save")
    with rep.step("overwrite_refused"), expect_failure(FileExistsError):
        dcp.save(make_state(2, mesh, "save"), storage_writer=Writer(ck))
    with rep.step("failed_overwrite"):
        with expect_failure(InjectedFault) as caught:
            dcp.save(make_state(2, mesh, "save"), storage_writer=FailingWriter(ck, overwrite=True))
        # the staging directory lives as long as the coordinator's writer (docs/DCP.md),
        # which the error's traceback holds
        del caught
        gc.collect()
        dist.barrier()  # every rank's writer collected (the coordinator's held the staging directory)
        rep.data["hidden_after_gc"] = hidden(out)
    with rep.step("load_after_failures"):
        load_into(ck, 1, mesh, "save")
    with rep.step("overwrite"):
        dcp.save(make_state(3, mesh, "save"), storage_writer=Writer(out / "over"))
        dist.barrier()
        dcp.save(make_state(1, mesh, "save"), storage_writer=Writer(out / "over", overwrite=True))
        dist.barrier()
        load_into(out / "over", 1, mesh, "save")


def scenario_two_ranks(rep: Report, mesh: DeviceMesh, out: Path, ck: str) -> None:
    """2 ranks: load ``ck`` (saved by 4) resharded and report the global digests; save
    state 5 with torch's FileSystemWriter (for ``convert``); ``async_save`` state 4 in a
    thread and in a process, mutating the state in place before waiting."""
    with rep.step("reshard_load"):
        state = make_state(1, mesh, "reshard", sentinel=True)
        dcp.load(state, storage_reader=Reader(ck))
        flat, _ = flatten_state_dict(state)  # gathered (collectives) before any rank may fail a check
        full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in flat.items()}
        rep.data["digests"] = digests({k: v for k, v in full.items() if isinstance(v, torch.Tensor)})
        assert_same(state, make_state(1, mesh, "reshard"), "state")
    with rep.step("torch_fs_save"):
        dcp.save(make_state(5, mesh, "reshard"), storage_writer=dcp.FileSystemWriter(out / "torch-fs"))
    for mode in (AsyncCheckpointerType.THREAD, AsyncCheckpointerType.PROCESS):
        with rep.step(f"async_{mode.name.lower()}"):
            _async_round(mesh, out / f"async-{mode.name.lower()}", mode)


def _async_round(mesh: DeviceMesh, path: Path, mode: AsyncCheckpointerType) -> None:
    state = make_state(4, mesh, "reshard")
    result = dcp.async_save(state, storage_writer=Writer(path), async_checkpointer_type=mode)
    if hasattr(result, "upload_completion"):  # AsyncSaveResponse: staged once staging_completion is done
        result.staging_completion.result(timeout=120)
        result = result.upload_completion
    # what was saved is the state when async_save returned: mutate it in place now
    weight = state["model"]["embed.weight"]
    weight.to_local().fill_(7.0)
    state["optim"]["state"]["embed.weight"]["step"].add_(1)
    state["loop"]["epoch"] = -1
    assert bool((weight.to_local() == 7.0).all()), "the mutation did not reach the DTensor"
    result.result(timeout=120)
    dist.barrier()
    load_into(path, 4, mesh, "reshard")


def scenario_kill(rep: Report, mesh: DeviceMesh, out: Path, ck: str, victim: int) -> None:
    """4 ranks save state 2 as ``ck`` (overwrite=True); rank ``victim`` is SIGKILLed
    once it has written its file."""
    with rep.step("started"):
        writer = KillingWriter(Path(ck), overwrite=True)
        writer.victim = victim
    dcp.save(make_state(2, mesh, "save"), storage_writer=writer)
    rep.data["not_killed"] = "ok"  # unreachable: a rank raises, or spawn ends it once the victim died
    rep.save()


def scenario_s3(rep: Report, mesh: DeviceMesh, out: Path, url: str, env: dict[str, str]) -> None:
    """2 ranks, an object store at ``url`` (its client settings in ``env``): save state 1;
    an overwrite refused, then one failing (rank 1 raises); load it back resharded."""
    os.environ.update(env)  # the fork server's ranks do not inherit the test's variables
    with rep.step("save"):
        dcp.save(make_state(1, mesh, "save"), storage_writer=Writer(url))
    with rep.step("overwrite_refused"), expect_failure(FileExistsError):
        dcp.save(make_state(2, mesh, "save"), storage_writer=Writer(url))
    with rep.step("failed_overwrite"):
        with expect_failure(InjectedFault) as caught:
            dcp.save(make_state(2, mesh, "save"), storage_writer=FailingWriter(url, overwrite=True))
        del caught  # its traceback holds the coordinator's writer, which removes the parts
        gc.collect()
        dist.barrier()
    with rep.step("load"):
        load_into(url, 1, mesh, "reshard")  # type: ignore[arg-type]  # a URL, as Reader takes


SCENARIOS: dict[str, Callable[..., None]] = {
    "s3": scenario_s3,
    "save": scenario_save,
    "two_ranks": scenario_two_ranks,
    "kill": scenario_kill,
}
