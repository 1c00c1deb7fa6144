"""``ckptio export`` and ``ckptio import``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import parse_size
from .keymaps import PRESETS

EXPORT_EPILOG = """examples:
  ckptio export ckpts/final --to hf hf-model --config base/config.json --dtype bf16
  ckptio export ckpts/lora --to peft adapter --config adapter_config.json
  ckptio export tinker-ckpt --to peft adapter --key-map tinker

The result is a ckptio checkpoint too: `ckptio verify DST` checks it."""

IMPORT_EPILOG = """sources:
  a Hugging Face model directory (*.safetensors, sharded with an index, or
  pytorch_model*.bin), a PEFT adapter directory, one .safetensors/.pt/.bin file,
  or a Tinker checkpoint archive (directory or .tar/.tar.gz).

.bin/.pt files are read with torch.load(weights_only=True) only; archives are
checked member by member before anything is unpacked."""


def _describe(path: Path) -> str:
    from ..checkpoint import Checkpoint

    ckpt = Checkpoint(path)
    n = len(ckpt.tensors)
    files = ", ".join([*ckpt.files, *ckpt.side_files])
    return f"{n} tensors; {files}"


def _export(args: argparse.Namespace) -> int:
    from .export import export

    try:
        out = export(
            args.src, args.dst, to=args.to, config=args.config, dtype=args.dtype,
            max_shard_bytes=args.max_shard_size, key_map=args.key_map, overwrite=args.overwrite,
        )  # fmt: skip
    except ImportError as e:  # e.g. transformers or torch missing for this source
        raise ValueError(str(e)) from None
    print(f"exported {args.src} -> {out} ({args.to}: {_describe(out)})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .importer import import_checkpoint

    try:
        out = import_checkpoint(
            args.src, args.dst, kind=args.kind, dtype=args.dtype, key_map=args.key_map,
            max_shard_bytes=args.max_shard_size, overwrite=args.overwrite,
        )  # fmt: skip
    except ImportError as e:
        raise ValueError(str(e)) from None
    print(f"imported {args.src} -> {out} ({_describe(out)})")
    return 0


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers ``export`` and ``import`` on the ``ckptio`` command.

    Example:
        >>> parser = argparse.ArgumentParser(prog="ckptio")
        >>> add_parsers(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["export", "ck", "--to", "hf", "out", "--max-shard-size", "5GB"])
        >>> args.src, args.to, args.dst, args.max_shard_size
        ('ck', 'hf', 'out', 5000000000)
    """
    fmt = argparse.RawDescriptionHelpFormatter
    presets = ", ".join(sorted(PRESETS))
    p = sub.add_parser(
        "export", help="write a checkpoint's weights as a Hugging Face model or a PEFT adapter",
        description="Write the weights of checkpoint SRC to the new directory DST as a Hugging Face model "
        "(--to hf) or a PEFT adapter (--to peft), atomically, with a ckptio manifest.",
        epilog=EXPORT_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    p.add_argument("src", metavar="SRC", help="a ckptio checkpoint (or a plain safetensors directory)")
    p.add_argument(
        "--to", required=True, choices=["hf", "peft"], help="hf: model directory; peft: LoRA adapter"
    )
    p.add_argument("dst", metavar="DST", help="the directory to create")
    p.add_argument("--config", metavar="FILE", help="config.json (hf) or adapter_config.json (peft) to write")
    p.add_argument("--dtype", metavar="DTYPE", help="cast floating-point tensors: bf16, fp16, fp32")
    p.add_argument(
        "--max-shard-size", metavar="SIZE", type=_size, help="shard the weights, e.g. 5GB (hf only)"
    )
    p.add_argument("--key-map", metavar="PRESET", choices=sorted(PRESETS), help=f"rename tensors: {presets}")
    p.add_argument("--overwrite", action="store_true", help="replace DST atomically if it is a checkpoint")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "import", help="make a verified ckptio checkpoint from a Hugging Face/PEFT/Tinker directory or file",
        description="Read the weights of SRC and save them as the ckptio checkpoint DST, keeping config "
        "and tokenizer files as checksummed side files.",
        epilog=IMPORT_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    p.add_argument("src", metavar="SRC", help="directory, file or archive to import")
    p.add_argument("dst", metavar="DST", help="the checkpoint to create")
    p.add_argument(
        "--kind", choices=["sampler", "state"], default="sampler", help="checkpoint kind (default sampler)"
    )
    p.add_argument("--dtype", metavar="DTYPE", help="cast floating-point tensors: bf16, fp16, fp32")
    p.add_argument("--max-shard-size", metavar="SIZE", type=_size, help="shard the weights, e.g. 5GB")
    p.add_argument("--key-map", metavar="PRESET", choices=sorted(PRESETS), help=f"rename tensors: {presets}")
    p.add_argument("--overwrite", action="store_true", help="replace DST atomically if it is a checkpoint")
    p.set_defaults(func=_import)
