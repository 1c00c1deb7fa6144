"""Measures what a just-saved checkpoint costs to map: the first touch of every page of
a fresh mapping of its files, in a new process, with nothing dropped from the cache.

The page cache keeps a written file in folios as large (and as aligned) as the writes
that made them, and mapping a file costs about one fault per folio, so the same bytes
fault in 3-15x faster after large aligned writes than after 1 MiB ones. Per workload
and round, in rotated order, this saves the seeded state of ``ckptio.bench.workloads``
with ckptio (and with a ``--baseline`` build, if given), then rewrites the very same
bytes as new files in other ways:

- ``one write``: each file with a single ``write()`` (the floor for these bytes);
- ``1 MiB writes``: 1 MiB ``pwrite``s at file offsets 0, 1 MiB, ... (aligned);
- ``2 MiB from data``: 2 MiB ``pwrite``s aligned to the data section, not the file (what
  pieces aligned to tensor offsets would give without a header padded to 2 MiB);

and, for each, has fresh processes map every tensor file ``MAP_PRIVATE`` (as ``ckptio``
loads do) and read one byte per 4 KiB page. Prints per variant the median and best wall
time, the page faults and the share of the bytes mapped by 2 MiB (PMD) entries; the
last two do not depend on the load of the machine, the times do.

    PYTHONPATH=python python dev/faultin_probe.py [--size-mib 512] [--rounds 5]
        [--touches 5] [--workloads llm,lora] [--baseline DIR] [--save-speed]

``--baseline DIR``: a directory holding another build's ``ckptio`` package (e.g. a copy
of ``python/ckptio`` with the ``_core`` of an older commit); its saves run in child
processes with ``PYTHONPATH=DIR``, so both builds are compared in one run.
``--save-speed`` (with ``--baseline``): instead, times ``save_state(durable=False)`` of
the state by both builds, each in one process that holds the state, saving in turns
(``--rounds`` saves each), and prints throughput, CPU time and the ratios of the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20
PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"

SAVE_CHILD = """
import sys
import ckptio
from ckptio.bench.workloads import build_state
state = build_state(sys.argv[2], int(sys.argv[3]))
ckptio.save_state(sys.argv[1], state.weights, state.optimizer, step=state.step, durable=False)
print(ckptio.__file__)
"""

SPEED_CHILD = """
import os, shutil, sys, time
import ckptio
from ckptio.bench.workloads import build_state
state = build_state(sys.argv[2], int(sys.argv[3]))
print(ckptio.__file__, state.nbytes, flush=True)
for line in sys.stdin:
    path = os.path.join(sys.argv[1], line.strip())
    wall, cpu = time.perf_counter(), time.process_time()
    ckptio.save_state(path, state.weights, state.optimizer, step=state.step, durable=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    shutil.rmtree(path)
    print(wall, cpu, flush=True)
"""

TOUCH_CHILD = """
import mmap, resource, sys, time
import numpy as np
maps = []
for name in sys.argv[1:]:
    with open(name, "rb") as f:
        maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))  # MAP_PRIVATE
views = [np.frombuffer(m, dtype=np.uint8)[::4096] for m in maps]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cpu, wall = time.thread_time(), time.perf_counter()
for v in views:
    v.sum()  # the first touch of every page
cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
with open("/proc/self/smaps_rollup") as f:
    pmd = next(int(line.split()[1]) for line in f if line.startswith("FilePmdMapped"))
print(wall * 1e3, cpu * 1e3, pmd * 1024 / sum(len(m) for m in maps), faults)
"""


def _save_ckptio(dst: Path, workload: str, size: int, pythonpath: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run(
        [sys.executable, "-c", SAVE_CHILD, str(dst), workload, str(size)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if not out.strip().startswith(str(pythonpath)):
        raise RuntimeError(f"the save imported {out.strip()}, not the build under {pythonpath}")


def _save_speed(work: Path, workload: str, size: int, builds: dict[str, Path], rounds: int) -> None:
    """Both builds in long-lived processes holding the state, saving alternately."""
    procs = {}
    for b, pythonpath in builds.items():
        cmd = [sys.executable, "-c", SPEED_CHILD, str(work), workload, str(size)]
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        procs[b] = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        nbytes = 0
        for b, proc in procs.items():
            assert proc.stdout is not None
            module, nbytes_text = proc.stdout.readline().split()
            if not module.startswith(str(builds[b])):
                raise RuntimeError(f"{b} imported {module}, not the build under {builds[b]}")
            nbytes = int(nbytes_text)
        runs: dict[str, list[tuple[float, float]]] = {b: [] for b in builds}
        names = list(builds)
        for r in range(rounds):
            for b in names[r % 2 :] + names[: r % 2]:
                proc = procs[b]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"save-{b.replace(' ', '-')}\n")
                proc.stdin.flush()
                wall, cpu = map(float, proc.stdout.readline().split())
                runs[b].append((nbytes / wall / 1e9, cpu * 1e3))
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    print(f"{workload}: save_state(durable=False) of {nbytes / MIB:.0f} MiB, {rounds} saves per build")
    for b, xs in runs.items():
        speed = statistics.median(x[0] for x in xs)
        cpu = statistics.median(x[1] for x in xs)
        print(
            f"  {b:<16} median {speed:5.2f} GB/s, best {max(x[0] for x in xs):5.2f} GB/s, CPU {cpu:6.0f} ms"
        )
    ckptio, base = runs["ckptio"], runs["ckptio baseline"]
    for k, what in ((0, "throughput"), (1, "CPU time")):
        ratios = sorted(a[k] / b[k] for a, b in zip(ckptio, base, strict=True))
        q = len(ratios) // 4
        print(
            f"  ckptio / baseline {what}: median of the pairs {statistics.median(ratios):.2f}x "
            f"(middle half {ratios[q]:.2f}-{ratios[-1 - q]:.2f}x)"
        )


def _rewrite(src: Path, dst: Path, how: str) -> None:
    """Writes every file of ``src`` as a new file in ``dst`` with the same bytes."""
    dst.mkdir()
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        fd = os.open(dst / f.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if how == "one write":
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                continue
            if how == "1 MiB writes":
                cuts = list(range(0, len(data), MIB))
            else:  # "2 MiB from data": pieces aligned to the data section's start
                start = 8 + int.from_bytes(data[:8], "little") if f.suffix == ".safetensors" else 0
                cuts = [0, *range(start, len(data), 2 * MIB)] if start else list(range(0, len(data), 2 * MIB))
            for a, b in zip(cuts, [*cuts[1:], len(data)], strict=True):
                if b > a:
                    os.pwrite(fd, data[a:b], a)
        finally:
            os.close(fd)


def _touch(ckpt: Path) -> list[float]:
    """[wall ms, CPU ms, share of the bytes mapped by PMD entries, page faults] of one
    first touch of every page."""
    files = [str(p) for p in sorted(ckpt.glob("*.safetensors"))]
    out = subprocess.run(
        [sys.executable, "-c", TOUCH_CHILD, *files], check=True, capture_output=True, text=True
    ).stdout
    return [float(x) for x in out.split()]


def _report(workload: str, nbytes: int, samples: dict[str, list[list[float]]]) -> None:
    n = len(samples["one write"])
    print(f"{workload}: {nbytes / MIB:.0f} MiB of tensor files, first touch of a fresh mapping, {n} samples")
    print("  (wall ms: median and best; ratios to one write; PMD: share mapped by 2 MiB entries)")
    ref_med = statistics.median(x[0] for x in samples["one write"])
    ref_min = min(x[0] for x in samples["one write"])
    for v, xs in samples.items():
        med, best = statistics.median(x[0] for x in xs), min(x[0] for x in xs)
        cpu = statistics.median(x[1] for x in xs)
        pmd, faults = statistics.median(x[2] for x in xs), statistics.median(x[3] for x in xs)
        print(
            f"  {v:<16} median {med:7.2f} ms {med / ref_med:5.2f}x   best {best:6.2f} ms "
            f"{best / ref_min:5.2f}x   cpu {cpu:6.2f} ms   faults {faults:6.0f}   PMD {pmd:4.0%}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512, help="bytes of tensor data per workload")
    ap.add_argument("--rounds", type=int, default=5, help="saves of each variant")
    ap.add_argument("--touches", type=int, default=3, help="fresh processes touching each save")
    ap.add_argument("--workloads", default="llm,lora")
    ap.add_argument("--baseline", type=Path, help="a directory holding another build's ckptio package")
    ap.add_argument("--json", type=Path, help="also write every sample here")
    ap.add_argument("--save-speed", action="store_true", help="time saves of both builds instead")
    args = ap.parse_args()
    size = args.size_mib * MIB
    if args.save_speed:
        if not args.baseline:
            ap.error("--save-speed compares with --baseline")
        builds = {"ckptio": PYTHON_DIR, "ckptio baseline": args.baseline.resolve()}
        work = Path(tempfile.mkdtemp(prefix="ckptio-savespeed-"))
        try:
            for workload in args.workloads.split(","):
                _save_speed(work, workload, size, builds, args.rounds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    variants = ["ckptio"]
    if args.baseline:
        variants.append("ckptio baseline")
    variants += ["one write", "1 MiB writes", "2 MiB from data"]
    work = Path(tempfile.mkdtemp(prefix="ckptio-faultin-"))
    samples: dict[str, dict[str, list[list[float]]]] = {}
    try:
        for workload in args.workloads.split(","):
            samples[workload] = {v: [] for v in variants}
            for r in range(args.rounds):
                order = variants[r % len(variants) :] + variants[: r % len(variants)]
                reference = work / "reference"
                _save_ckptio(reference, workload, size, PYTHON_DIR)
                nbytes = sum(p.stat().st_size for p in reference.glob("*.safetensors"))
                dirs = {}
                for v in order:
                    d = work / v.replace(" ", "-")
                    if v == "ckptio":
                        _save_ckptio(d, workload, size, PYTHON_DIR)
                    elif v == "ckptio baseline":
                        _save_ckptio(d, workload, size, args.baseline.resolve())
                    else:
                        _rewrite(reference, d, v)
                    dirs[v] = d
                shutil.rmtree(reference)
                for _ in range(args.touches):
                    for v in order:
                        samples[workload][v].append(_touch(dirs[v]))
                for d in dirs.values():
                    shutil.rmtree(d)
            _report(workload, nbytes, samples[workload])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))


if __name__ == "__main__":
    main()
