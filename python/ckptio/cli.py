"""The ``ckptio`` command: ``inspect``, ``verify``, ``cleanup``, ``export``, ``import``,
``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .api import cleanup
from .checkpoint import Checkpoint
from .errors import CkptioError
from .hf.cli import add_parsers as add_hf_parsers


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``.

    Example:
        >>> human_bytes(3 * 1024**3)
        '3.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _inspect(args: argparse.Namespace) -> int:
    ckpt = Checkpoint(args.path, allow_foreign=True)
    infos = ckpt.tensors
    total = sum(t.nbytes for t in infos)
    print(f"checkpoint  {ckpt.path}")
    print(f"kind        {ckpt.kind}")
    print(f"step        {ckpt.step}")
    print(f"tensors     {len(infos)} ({human_bytes(total)}) in {', '.join(ckpt.files)}")
    print(f"metadata    {json.dumps(ckpt.metadata)}")
    rows = infos if args.all or len(infos) <= 40 else infos[:40]
    name_w = max([len("name"), *(len(t.name) for t in rows)])
    print()
    print(f"{'group':<10} {'name':<{name_w}} {'dtype':<8} {'shape':<20} {'size':>10}")
    for t in rows:
        shape = "x".join(map(str, t.shape)) or "scalar"
        print(f"{t.group:<10} {t.name:<{name_w}} {t.dtype:<8} {shape:<20} {human_bytes(t.nbytes):>10}")
    if len(rows) < len(infos):
        print(f"... {len(infos) - len(rows)} more (--all lists them)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.paths:
        try:
            uncovered = Checkpoint(path).verify()
            print(f"ok       {path}")
            for name in uncovered:
                print(f"         {name}: not covered by checksums (not part of the checkpoint)")
        except (CkptioError, OSError) as e:
            failed += 1
            print(f"FAILED   {path}: {e}")
    return 1 if failed else 0


def _cleanup(args: argparse.Namespace) -> int:
    result = cleanup(args.directory)
    for p in result:
        print(f"cleaned  {p}")
    for p, why in result.skipped:
        print(f"skipped  {p}: {why}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckptio", description="Fast, verified, crash-safe checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="summarize a checkpoint: kind, tensors, sizes, metadata")
    p.add_argument("path")
    p.add_argument("--all", action="store_true", help="list every tensor")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("verify", help="check every byte; exits 1 on any corruption")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=_verify)
    p = sub.add_parser("cleanup", help="remove leftovers of interrupted saves in a directory")
    p.add_argument("directory")
    p.set_defaults(func=_cleanup)
    add_hf_parsers(sub)
    try:
        from .bench.cli import add_parser as add_bench
    except ImportError:  # pragma: no cover - the bench ships with the package
        add_bench = None
    if add_bench is not None:
        add_bench(sub, _bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ckptio`` command.

    Example:
        >>> main(["cleanup", "."])
        0
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CkptioError, OSError, ValueError) as e:
        print(f"ckptio {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
