"""The ``ckptio`` commands for runs: ``ls``, ``rm``, ``ttl``; how ``inspect`` and
``verify`` find a checkpoint given as ``RUN NAME``; verify's progress bar.

Human output is a table (rich); ``--json`` prints the records for scripts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from . import _retention as rules
from . import _run_store as store
from ._location import Location, as_location, is_url
from .checkpoint import Checkpoint
from .cli import human_bytes
from .errors import CheckpointNotFoundError, CkptioError
from .run import CheckpointRecord, Run

_DURATION = re.compile(r"(?P<n>\d+(\.\d+)?)\s*(?P<unit>s|m|h|d|w)?")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``90m``, ``12h``, ``7d`` or ``2w``.

    Example:
        >>> parse_duration("90m"), parse_duration("1.5h"), parse_duration("45")
        (5400.0, 5400.0, 45.0)
    """
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"invalid TTL {text!r}: give seconds, or a number with s, m, h, d or w (e.g. 7d)")
    return float(m["n"]) * _UNIT_SECONDS[m["unit"] or "s"]


def open_run(root: str) -> Run:
    """The run at ``root``; CheckpointNotFoundError if there is no such directory."""
    run = Run(root)
    if not store.exists(run.root):
        raise CheckpointNotFoundError(f"no run at {root}")
    return run


def find(run: Run, name: str, kind: str | None) -> CheckpointRecord:
    """The checkpoint ``name`` of ``kind``; without a kind, the one kind that has it."""
    rules.check_name(name)
    found = [r for r in run.list(kind) if r.name == name]
    if not found:
        where = f"{kind} checkpoint" if kind else "checkpoint"
        raise CheckpointNotFoundError(f"no {where} named {name!r} in run {run.root} (ckptio ls lists them)")
    if len(found) > 1:
        raise ValueError(f"{name!r} is both a state and a sampler checkpoint in {run.root}: pass --kind")
    return found[0]


def checkpoint_paths(targets: list[str], kind: str | None) -> list[tuple[str, Location | CkptioError]]:
    """(label, path or URL) of what ``inspect``/``verify`` were given: checkpoint paths
    or ``s3://`` URLs, or a run followed by names (no names: every checkpoint of the
    run). A run's damaged checkpoints come as (label, error) so verify reports them."""
    if is_url(targets[0]) or not store.is_run(Path(targets[0])):
        if kind is not None:
            raise ValueError("--kind applies to RUN NAME, not to checkpoint paths")
        return [(t, as_location(t)) for t in targets]
    run = open_run(targets[0])
    if len(targets) > 1:
        return [(f"{targets[0]} {n}", find(run, n, kind).path) for n in targets[1:]]
    records, problems = run.scan(kind)
    out: list[tuple[str, Location | CkptioError]] = [(str(r.path), r.path) for r in records]
    return out + [(str(path), CkptioError(why)) for path, why in problems]


# -- output -----------------------------------------------------------------------------
def _console(file: TextIO, *, terminal: bool = False) -> Any:
    from rich.console import Console

    if terminal:  # a progress bar asked for: drawn even where stderr is not a terminal
        return Console(file=file, force_terminal=True)
    # A pipe gets the whole table however wide (rich would wrap it at 80 columns).
    return Console(file=file, highlight=False, width=None if file.isatty() else 10_000)


def _when(t: Any, now: Any = None) -> str:
    if t is None:
        return "never"
    text = t.strftime("%Y-%m-%d %H:%M:%S")
    return text + (" (expired)" if now is not None and t <= now else "")


def print_records(records: Iterable[CheckpointRecord], now: Any, file: TextIO) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column, justify in (("name", "left"), ("kind", "left"), ("step", "right"), ("size", "right"),
                            ("created (UTC)", "left"), ("expires (UTC)", "left")):  # fmt: skip
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in records:
        step = "-" if r.step is None else str(r.step)
        table.add_row(
            r.name, r.kind, step, human_bytes(r.size_bytes), _when(r.created), _when(r.expires_at, now)
        )
    _console(file).print(table)


def print_json(records: Iterable[CheckpointRecord]) -> None:
    print(json.dumps([r.to_json() for r in records], indent=2, default=str))


# -- commands ---------------------------------------------------------------------------
def _ls(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    records, problems = run.scan(args.kind)
    if args.json:
        print_json(records)
    elif records:
        print_records(records, run.now(), sys.stdout)
    else:
        print(f"no checkpoints in {args.run}")
    for path, why in problems:
        print(f"ckptio ls: not listed: {path}: {why}", file=sys.stderr)
    return 0


def _confirm(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _rm(args: argparse.Namespace) -> int:
    if not args.names and args.before is None and not args.expired:
        raise ValueError("name what to delete: NAME..., --before STEP or --expired")
    run = open_run(args.run)
    records = run.list(args.kind)
    chosen = {(r.kind, r.name): r for r in (find(run, n, args.kind) for n in args.names)}
    if args.before is not None:
        chosen |= {(r.kind, r.name): r for r in records if r.step is not None and r.step < args.before}
    if args.expired:
        chosen |= {(r.kind, r.name): r for r in rules.expired(records, run.now())}
    doomed = sorted(chosen.values(), key=lambda r: (r.created, r.name))
    if not doomed:
        print("nothing to delete")
        return 0
    total = human_bytes(sum(r.size_bytes for r in doomed))
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"ckptio rm: refusing to delete {len(doomed)} checkpoint(s) without confirmation: "
                "stdin is not a terminal; pass -y to delete without asking",
                file=sys.stderr,
            )
            return 2
        print_records(doomed, run.now(), sys.stderr)
        if not _confirm(f"Delete these {len(doomed)} checkpoint(s), {total}? [y/N] "):
            print("nothing deleted", file=sys.stderr)
            return 1
    for r in doomed:
        try:
            run.delete(r.name, r.kind)
            print(f"deleted  {r.kind} {r.name}")
        except CheckpointNotFoundError:
            print(f"gone     {r.kind} {r.name} (deleted meanwhile)")
    return 0


def _ttl(args: argparse.Namespace) -> int:
    if (args.seconds is None) == (not args.remove):
        raise ValueError("give the TTL (e.g. 3600, 12h, 7d) or --remove")
    run = open_run(args.run)
    rec = find(run, args.name, args.kind)
    rec = run.set_ttl(rec.name, None if args.remove else parse_duration(args.seconds), rec.kind)
    if args.json:
        print_json([rec])
    else:
        print(f"{rec.kind} {rec.name}: expires {_when(rec.expires_at)}" + (" UTC" if rec.expires_at else ""))
    return 0


def verify_one(path: Location, progress: bool) -> list[str]:
    """Verifies one checkpoint, with a progress bar on stderr when ``progress`` (local
    checkpoints); returns the files in its directory that the manifest does not cover."""
    if not progress or isinstance(path, str):
        return Checkpoint(path).verify()
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from . import _core

    columns = (TextColumn("verify {task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console(sys.stderr, terminal=True), transient=True) as bar:
        task = bar.add_task(path.name, total=None)
        return _core.verify_with_progress(
            path, lambda done, total: bar.update(task, completed=done, total=total)
        )


def copy_with_progress(src: str, dst: str, *, overwrite: bool, progress: bool) -> None:
    """``ckptio.copy``, with a progress bar on stderr when ``progress``."""
    from .transfer import copy

    if not progress:
        copy(src, dst, overwrite=overwrite)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("copy"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console(sys.stderr, terminal=True), transient=True) as bar:
        task = bar.add_task("copy", total=None)
        copy(
            src,
            dst,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def add_parsers(sub: Any) -> None:
    """Registers ``ls``, ``rm`` and ``ttl`` on the ``ckptio`` command's subparsers."""
    kind_help = "state or sampler (default: both)"
    p = sub.add_parser("ls", help="list a run's checkpoints: name, kind, step, size, created, expires")
    p.add_argument("run")
    p.add_argument("--kind", choices=rules.KINDS, help=kind_help)
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=_ls)
    p = sub.add_parser("rm", help="delete checkpoints of a run (asks first unless -y)")
    p.add_argument("run")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--kind", choices=rules.KINDS, help=kind_help)
    p.add_argument("--before", type=int, metavar="STEP", help="also every checkpoint whose step is < STEP")
    p.add_argument("--expired", action="store_true", help="also every checkpoint whose TTL has passed")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=_rm)
    p = sub.add_parser("ttl", help="set or remove a checkpoint's time to live (from now)")
    p.add_argument("run")
    p.add_argument("name")
    p.add_argument("seconds", nargs="?", metavar="TTL", help="seconds, or with a unit: 90m, 12h, 7d, 2w")
    p.add_argument("--remove", action="store_true", help="never expire")
    p.add_argument("--kind", choices=rules.KINDS, help=kind_help)
    p.add_argument("--json", action="store_true", help="print the new record as JSON")
    p.set_defaults(func=_ttl)
