"""``ckptio bench``: argument checks, the run in a temporary directory that is removed
whatever happens (Ctrl-C and SIGTERM included), the progress bar, and the outputs.
``--s3`` / ``--storage`` hand over to ``s3cli``."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .workloads import DEFAULT_WORKLOADS, WORKLOADS, parse_workloads

DEFAULT_SIZE = "1G"
DEFAULT_RUNS = 3
QUICK_SIZE = "32M"
QUICK_RUNS = 1
MIN_SIZE = 1 << 20
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Parses ``--size``: a number of bytes with an optional binary unit
    (``K``, ``M``, ``G``, ``T``; ``KiB``, ``MB``... read the same way).

    Example:
        >>> parse_size("1G"), parse_size("512MiB"), parse_size("1.5m")
        (1073741824, 536870912, 1572864)
    """
    match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"invalid size {text!r}; use a number with an optional unit, e.g. 1G or 256M")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    if value < MIN_SIZE:
        raise ValueError(f"size {text!r} is too small; the smallest is 1M")
    return int(value)


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert


def _part_size(text: str) -> int:
    value = parse_size(text)
    if value < 5 << 20:
        raise ValueError(f"part size {text!r} is below S3's minimum of 5M")
    return value


def _workload_option(text: str) -> tuple[str, ...]:
    """``--workload``: workloads of the local suite, or ``dcp`` alone (``dcpcli``)."""
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    if "dcp" not in names:
        return parse_workloads(text)
    if len(names) > 1:
        raise ValueError("--workload dcp runs alone (it saves the llm state from --ranks processes)")
    return ("dcp",)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def add_parser(subparsers: Any, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Registers ``ckptio bench`` on the ``ckptio`` command's subparsers.

    Example:
        >>> parser = argparse.ArgumentParser(prog="ckptio")
        >>> p = add_parser(parser.add_subparsers(dest="command"), lambda args: 0)
        >>> parser.parse_args(["bench", "--quick"]).quick
        True
    """
    p = subparsers.add_parser(
        "bench",
        help="compare ckptio with safetensors, torch.save and numpy on this machine",
        description=(
            "Saves and loads the same seeded training state with ckptio, safetensors (numpy, "
            "torch), torch.save/torch.load (plain, mmap=True), numpy.savez and a raw "
            "write()/read() of the same bytes (the physical limit), rotating the order "
            "between runs, and prints medians, GB/s, ratios and peak-RSS growth."
        ),
    )
    p.add_argument(
        "--workload",
        type=_argument_type(_workload_option),
        default=DEFAULT_WORKLOADS,
        help=f"one or more of {', '.join(WORKLOADS)}, comma-separated (default: "
        f"{','.join(DEFAULT_WORKLOADS)}; llm is the headline, lora adds the per-tensor-overhead case); "
        "or dcp: the llm state through torch.distributed.checkpoint from --ranks processes",
    )
    p.add_argument(
        "--ranks", type=_argument_type(_positive_int), help="gloo ranks of --workload dcp (default 2)"
    )
    p.add_argument(
        "--size",
        type=_argument_type(parse_size),
        default=None,
        help=f"bytes of the llm and mixed states, weights + Adam state (default {DEFAULT_SIZE}; "
        "lora uses 1/16 of it); units K, M, G, T",
    )
    p.add_argument(
        "--runs",
        type=_argument_type(_positive_int),
        default=None,
        help=f"runs per figure; the median is reported (default {DEFAULT_RUNS})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run in seconds: --size {QUICK_SIZE} --runs {QUICK_RUNS} unless given",
    )
    p.add_argument(
        "--dir",
        default=None,
        help="where to write the checkpoints (a temporary directory is made inside it and "
        "removed at the end; default: the system temp dir). Its filesystem is what is measured.",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the training state (default 0)")
    s3 = p.add_argument_group(
        "S3",
        "compare ckptio with boto3, s3torchconnector (if installed) and a raw parallel multipart put / "
        "ranged get on S3-compatible storage, instead of local files",
    )
    where = s3.add_mutually_exclusive_group()
    where.add_argument(
        "--s3",
        action="store_true",
        help="start a local SeaweedFS (pip install 'ckptio[bench]') on 127.0.0.1 for the run, its data "
        "in --dir, and measure against it",
    )
    where.add_argument(
        "--storage",
        metavar="URL",
        help="measure against an existing server: s3://bucket[/prefix] (a prefix of the run's own is "
        "made below it and removed at the end); endpoint and keys from AWS_ENDPOINT_URL, AWS_REGION, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP=true",
    )
    s3.add_argument(
        "--part-size",
        type=_argument_type(_part_size),
        default=None,
        help="multipart part size of every S3 row (default 8M; at least 5M)",
    )
    s3.add_argument(
        "--parts-in-flight",
        type=_argument_type(_positive_int),
        default=None,
        help="parts (threads) in flight of every S3 row (default 8)",
    )
    p.add_argument("--json", metavar="FILE", help="write every measurement, median and target as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as markdown")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw GB/s per operation and library (needs matplotlib)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=func)
    return p


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per
    tenth of the run otherwise).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = ProgressBar(out, tty=False)
        >>> bar(5, 10, "llm save: ckptio")
        >>> out.getvalue()
        '[#############-------------]  50% llm save: ckptio\\n'
    """

    WIDTH = 26

    def __init__(self, stream: Any = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.last_tenth = -1
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, label: str) -> None:
        fraction = done / total if total else 1.0
        filled = round(self.WIDTH * fraction)
        line = f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {fraction:4.0%} {label}"
        if self.tty:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r\x1b[K{line[:100]}  {elapsed:.0f} s")
        elif int(fraction * 10) != self.last_tenth:
            self.last_tenth = int(fraction * 10)
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the in-place line."""
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def check_directory(directory: str, needed: int) -> None:
    """Raises ValueError unless ``directory`` exists, is writable and has ``needed``
    bytes free.

    Example:
        >>> check_directory(tempfile.gettempdir(), 1)
    """
    path = Path(directory)
    if not path.exists():
        raise ValueError(f"--dir {directory}: no such directory")
    if not path.is_dir():
        raise ValueError(f"--dir {directory}: not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".ckptio-bench-probe-", dir=path)
        os.rmdir(probe)
    except OSError as e:
        raise ValueError(f"--dir {directory} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(path).free
    if free < needed:
        from .report import human_bytes

        raise ValueError(
            f"--dir {directory} has {human_bytes(free)} free; this run needs about {human_bytes(needed)} "
            "(one checkpoint per library plus one in flight). Use a smaller --size or another --dir."
        )


def check_memory(needed: int) -> None:
    """Raises ValueError when the machine clearly lacks the memory the run needs.

    Example:
        >>> check_memory(1)
    """
    from .machine import meminfo
    from .report import human_bytes

    available = meminfo("MemAvailable")
    if available is not None and available < needed:
        raise ValueError(
            f"this run needs about {human_bytes(needed)} of memory (a copy of the state per "
            f"library process, plus a loaded copy) and only {human_bytes(available)} is available; "
            "use a smaller --size"
        )


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so cleanup runs for them too."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["ckptio bench"]
    if args.s3:
        parts.append("--s3")
    if args.quick:
        parts.append("--quick")
    flags = ("storage", "workload", "size", "runs", "part_size", "parts_in_flight", "dir", "json", "markdown")
    for flag in (*flags[:2], "ranks", *flags[2:], "plot"):
        if flag in args.explicit:
            parts.append(f"--{flag.replace('_', '-')} {args.explicit[flag]}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Runs ``ckptio bench`` with parsed arguments; returns the exit code (0, or 130
    when interrupted). Bad arguments raise ValueError, reported by the ``ckptio`` command.

    Example:
        ``ckptio bench --quick --json bench.json``
    """
    from .machine import describe_machine
    from .report import Report, format_markdown, format_terminal
    from .runner import BenchConfig, Benchmark, estimate_disk_bytes, estimate_memory_bytes

    args.explicit = {
        "workload": ",".join(args.workload) if args.workload != DEFAULT_WORKLOADS else None,
        "size": args.size and _size_text(args.size),
        "runs": args.runs,
        "dir": args.dir,
        "json": args.json,
        "markdown": args.markdown,
        "plot": args.plot,
        "storage": args.storage,
        "part_size": args.part_size and _size_text(args.part_size),
        "parts_in_flight": args.parts_in_flight,
        "ranks": args.ranks,
    }
    args.explicit = {k: v for k, v in args.explicit.items() if v is not None}
    size = args.size or parse_size(QUICK_SIZE if args.quick else DEFAULT_SIZE)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if args.workload == ("dcp",):
        from .dcpcli import run_dcp

        return run_dcp(args, size, runs, _command_line(args))
    if args.ranks:
        raise ValueError("--ranks applies to --workload dcp only")
    if "mixed" in args.workload:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            raise ValueError("the mixed workload needs ml_dtypes for bf16: pip install ml_dtypes") from None
    if args.plot:
        from .plot import check_matplotlib

        check_matplotlib()
    if args.s3 or args.storage:
        from .s3cli import run_s3

        return run_s3(args, size, runs, _command_line(args))
    if args.part_size or args.parts_in_flight:
        raise ValueError("--part-size and --parts-in-flight apply to S3 runs only (--s3 or --storage)")
    config = BenchConfig(workloads=args.workload, size=size, runs=runs, seed=args.seed)
    directory = args.dir or tempfile.gettempdir()
    check_directory(directory, estimate_disk_bytes(config))
    check_memory(estimate_memory_bytes(config))
    check_outputs(args)

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 - readable
    machine = describe_machine(directory)
    progress = None if args.no_progress else ProgressBar()
    workdir = Path(tempfile.mkdtemp(prefix="ckptio-bench-", dir=directory))
    benchmark = Benchmark(config, workdir, progress)
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
    finally:
        benchmark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if progress is not None:
        progress.close()

    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = Report.build(result, machine, date, _command_line(args))
    write_outputs(args, report, format_terminal(report), format_markdown)
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """Raises ValueError when an output file (``--json``, ``--markdown``, ``--plot``)
    could not be written, before the run starts.

    Example:
        >>> check_outputs(argparse.Namespace(json=None, markdown=None, plot=None))
    """
    for output in (args.json, args.markdown, args.plot):
        if output and not Path(output).resolve().parent.is_dir():
            raise ValueError(f"cannot write {output}: {Path(output).parent} is not a directory")


def write_outputs(
    args: argparse.Namespace, report: Any, terminal: str, to_markdown: Callable[[Any, str | None], str]
) -> None:
    """Writes ``--json``, ``--plot`` and ``--markdown`` (``to_markdown(report, plot_link)``)
    and prints ``terminal``, then the files written.

    Example:
        ``write_outputs(args, report, format_terminal(report), format_markdown)``
    """
    from .report import to_json

    if args.json:
        Path(args.json).write_text(to_json(report))
    if args.plot:
        from .plot import write_plot

        write_plot(report, args.plot)
    if args.markdown:
        markdown_dir = Path(args.markdown).resolve().parent
        plot_link = os.path.relpath(Path(args.plot).resolve(), markdown_dir) if args.plot else None
        Path(args.markdown).write_text(to_markdown(report, plot_link))
    print(terminal)
    written = [f for f in (args.json, args.markdown, args.plot) if f]
    if written:
        print(f"wrote {', '.join(written)}")


def _size_text(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)
