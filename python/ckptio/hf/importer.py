"""``ckptio.import_checkpoint``: models and adapters from elsewhere, as verified ckptio
checkpoints (see ``sources.py`` for what is read and how)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from .._location import is_url
from .._plan import SavePlan, save_options
from . import archive
from ._common import Caster, PathLike, check_target, parse_dtype
from .keymaps import KeyMap, rename
from .sources import read_source


def import_checkpoint(
    src: PathLike,
    dst: PathLike,
    *,
    kind: str = "sampler",
    dtype: Any = None,
    key_map: KeyMap = None,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    durable: bool = True,
    max_archive_bytes: int = archive.MAX_ARCHIVE_BYTES,
) -> Path:
    """Makes a ckptio checkpoint at ``dst`` from weights saved elsewhere:

    - a Hugging Face model directory: ``model.safetensors``, shards with their
      ``*.safetensors.index.json``, or ``pytorch_model.bin`` (or its shards);
    - a PEFT adapter directory (``adapter_model.safetensors`` / ``.bin``), kept under
      that file name so PEFT still loads the result;
    - a single ``.safetensors``, ``.pt``, ``.pth`` or ``.bin`` file;
    - a downloaded Tinker checkpoint (``adapter_model.safetensors``,
      ``adapter_config.json``, ``checkpoint_complete``): a directory or a tar archive.

    Every source is hostile input: safetensors headers are validated as ckptio's own;
    pickles are read with ``torch.load(weights_only=True)`` only (no code runs); archive
    members that are links, devices, absolute or ``..`` paths are refused before
    anything is unpacked, and their total size is capped by ``max_archive_bytes``.
    Config and tokenizer files (``*.json``, ``*.txt``, ``*.model``, ``*.jinja``,
    ``*.md``) become checksummed side files. ``kind="state"`` makes a state checkpoint
    with no optimizer state. ``dtype`` casts floating-point tensors, ``key_map`` renames
    (see ``ckptio.export``). ``dst`` appears atomically.

    Example:
        >>> import numpy as np, ckptio, tempfile, os
        >>> from safetensors.numpy import save_file
        >>> d = tempfile.mkdtemp()
        >>> os.mkdir(os.path.join(d, "hf"))
        >>> save_file({"w": np.ones(2, np.float32)}, os.path.join(d, "hf", "model.safetensors"))
        >>> with open(os.path.join(d, "hf", "config.json"), "w") as f:
        ...     _ = f.write('{"model_type": "x"}')
        >>> ck = ckptio.import_checkpoint(os.path.join(d, "hf"), os.path.join(d, "ck"))
        >>> ckptio.verify(ck), ckptio.open(ck).side_files, ckptio.load_state(ck)["w"]
        ([], ['config.json'], array([1., 1.], dtype=float32))
    """
    if kind not in ("sampler", "state"):
        raise ValueError(f"kind must be 'sampler' or 'state', got {kind!r}")
    if is_url(src) or is_url(dst):
        raise ValueError(
            "import reads and writes local paths (ckptio.copy moves checkpoints to and from s3://)"
        )
    src, dst = Path(src), Path(dst)
    st_dtype = parse_dtype(dtype)
    check_target(dst, overwrite)
    unpacked = None
    try:
        if archive.is_archive(src):
            unpacked = _unpack_dir(dst)
            archive.extract(src, unpacked, max_bytes=max_archive_bytes)
            source = read_source(unpacked)
        else:
            source = read_source(src)
        renamed = rename(source.weights, key_map)
        cast = Caster(st_dtype)
        weights = {new: cast(source.weights[old]) for old, new in renamed.items()}
        metadata = {"imported_from": {"path": os.fspath(src), "format": source.format}}
        options = save_options(overwrite=overwrite, durable=durable, max_shard_bytes=max_shard_bytes)
        return SavePlan(
            dst, kind, weights, None, metadata=metadata, options=options, extra_files=source.side_files,
            weights_group=source.weights_group,
        ).write()  # fmt: skip
    finally:
        if unpacked is not None:
            archive.remove(unpacked)


def _unpack_dir(dst: Path) -> Path:
    """Where an archive is unpacked: beside ``dst``, hidden, named like a save's staging
    directory (``.NAME.ckptio-tmp-PID-NONCE``), so ``ckptio.cleanup`` removes it if the
    process dies before it does."""
    return dst.parent / f".{dst.name}.import.ckptio-tmp-{os.getpid()}-{secrets.token_hex(8)}"
