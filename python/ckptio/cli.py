"""The ``ckptio`` command: ``inspect``, ``verify``, ``cleanup``, ``export``, ``import``,
``bench``, and for runs ``ls``, ``rm``, ``ttl`` (in ``cli_run``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._location import as_location, is_url
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
    from .cli_run import find, open_run

    if args.name is not None:
        path = find(open_run(args.path), args.name, args.kind).path
    elif _is_run(args.path):
        raise ValueError(f"{args.path} is a run: name a checkpoint, ckptio inspect RUN NAME (ckptio ls RUN)")
    elif args.kind is not None:
        raise ValueError("--kind applies to RUN NAME, not to a checkpoint path")
    else:
        path = as_location(args.path)
    ckpt = Checkpoint(path, allow_foreign=True)
    if ckpt.kind == "dcp":
        return _inspect_dcp(ckpt, args.all)
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


def _inspect_dcp(ckpt: Checkpoint, show_all: bool) -> int:
    """A DCP checkpoint: its global tensors and, with ``--all``, every shard."""
    index = ckpt._dcp_index()
    infos = [ckpt.info(n) for n in ckpt.names]
    print(f"checkpoint  {ckpt.path}")
    print("kind        dcp (torch.distributed.checkpoint)")
    print(
        f"tensors     {len(infos)} ({human_bytes(sum(t.nbytes for t in infos))}) in {', '.join(ckpt.files)}"
    )
    print(f"values      {len(index.objects)} (non-tensor: {', '.join(list(index.objects)[:8])}"
          f"{' ...' if len(index.objects) > 8 else ''})")  # fmt: skip
    rows = infos if show_all or len(infos) <= 40 else infos[:40]
    name_w = max([len("name"), *(len(t.name) for t in rows)])
    print()
    print(f"{'name':<{name_w}} {'dtype':<8} {'shape':<20} {'size':>10} {'shards':>6}")
    for t in rows:
        shards = ckpt.shards(t.name)
        shape = "x".join(map(str, t.shape)) or "scalar"
        print(f"{t.name:<{name_w}} {t.dtype:<8} {shape:<20} {human_bytes(t.nbytes):>10} {len(shards):>6}")
        for s in shards if show_all else ():
            where = ",".join(f"{o}:{o + n}" for o, n in zip(s.offsets, s.sizes, strict=True)) or "scalar"
            print(f"{'':<{name_w}}   [{where}] in {s.file}")
    if len(rows) < len(infos):
        print(f"... {len(infos) - len(rows)} more (--all lists them and their shards)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .cli_run import checkpoint_paths, verify_one

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    failed = 0
    for label, path in checkpoint_paths(args.paths, args.kind):
        try:
            if isinstance(path, CkptioError):  # a run's checkpoint whose manifest is unreadable
                raise path
            uncovered = verify_one(path, progress)
            print(f"ok       {label}")
            for name in uncovered:
                print(f"         {name}: not covered by checksums (not part of the checkpoint)")
        except (CkptioError, OSError) as e:
            failed += 1
            print(f"FAILED   {label}: {e}")
    return 1 if failed else 0


def _is_run(path: str) -> bool:
    from ._run_store import is_run

    return not is_url(path) and is_run(Path(path))


def _cleanup(args: argparse.Namespace) -> int:
    if _is_run(args.directory):
        from .run import Run

        result = Run(args.directory).cleanup()
    else:
        result = cleanup(args.directory, older_than=args.older_than)
    for p in result:
        print(f"cleaned  {p}")
    for p, why in result.skipped:
        print(f"skipped  {p}: {why}")
    return 0


def _cp(args: argparse.Namespace) -> int:
    from .cli_run import copy_with_progress

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    copy_with_progress(args.src, args.dst, overwrite=args.overwrite, progress=progress)
    print(f"copied   {args.src} -> {args.dst}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckptio", description="Fast, verified, crash-safe checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    from .cli_run import add_parsers as add_run_parsers

    kinds = ("state", "sampler")
    p = sub.add_parser("inspect", help="summarize a checkpoint (PATH, or RUN NAME): kind, tensors, sizes")
    p.add_argument("path", metavar="PATH|RUN")
    p.add_argument("name", nargs="?", metavar="NAME", help="a checkpoint of the run RUN")
    p.add_argument("--kind", choices=kinds, help="of NAME: state or sampler (default: the one that exists)")
    p.add_argument("--all", action="store_true", help="list every tensor")
    p.set_defaults(func=_inspect)
    p = sub.add_parser(
        "verify", help="check every byte (PATH..., or RUN [NAME...]); exits 1 on any corruption"
    )
    p.add_argument("paths", nargs="+", metavar="PATH|RUN")
    p.add_argument("--kind", choices=kinds, help="of the run's checkpoints: state or sampler")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a TTY)"
    )
    p.set_defaults(func=_verify)
    p = sub.add_parser("cleanup", help="remove leftovers of interrupted saves in a directory or a run")
    p.add_argument("directory", metavar="DIRECTORY|URL")
    p.add_argument(
        "--older-than", type=float, default=3600.0, metavar="SECONDS",
        help="object stores: remove unreferenced data only once this old (default: 3600)",
    )  # fmt: skip
    p.set_defaults(func=_cleanup)
    p = sub.add_parser("cp", help="copy a checkpoint (local path <-> s3:// URL), checking every checksum")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint at DST")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a TTY)"
    )
    p.set_defaults(func=_cp)
    add_hf_parsers(sub)
    add_run_parsers(sub)
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
