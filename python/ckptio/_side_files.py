"""Side files: small files saved whole with a checkpoint (``config.json``, tokenizer
files, ``adapter_config.json``), checksummed in the manifest and committed with the
tensors. The core checks the names again; the checks here give the message first."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

MANIFEST_NAME = "ckptio.json"
MAX_SIDE_FILE_BYTES = 256 * 1024 * 1024  # the core's cap (manifest::MAX_SIDE_FILE_LEN)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")


def check_side_file_name(name: object) -> str:
    """Returns ``name`` if a checkpoint may hold a side file of that name: a plain,
    non-hidden name that is not the manifest and not a tensor file or shard index.

    Example:
        >>> check_side_file_name("tokenizer_config.json")
        'tokenizer_config.json'
        >>> check_side_file_name("../config.json")
        Traceback (most recent call last):
        ...
        ValueError: extra_files: '../config.json' is not a plain file name (letters, ...
    """
    if not isinstance(name, str):
        raise TypeError(f"extra_files: names must be str, got {type(name).__name__}")
    if not _PLAIN_NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(
            f"extra_files: {name!r} is not a plain file name (letters, digits, '.', '-', '_'; not hidden)"
        )
    if name == MANIFEST_NAME or name.endswith((".safetensors", ".safetensors.index.json")):
        raise ValueError(
            f"extra_files: {name!r} is reserved for ckptio's own files (the manifest, tensor files "
            "and shard indexes); tensors go in the weights"
        )
    return name


def _read_path(name: str, path: os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"extra_files[{name!r}]: {os.fspath(path)} is not a regular file")
        if st.st_size > MAX_SIDE_FILE_BYTES:
            raise ValueError(
                f"extra_files[{name!r}]: {os.fspath(path)} is {st.st_size} bytes, "
                f"over the {MAX_SIDE_FILE_BYTES}-byte cap for side files"
            )
        return f.read(MAX_SIDE_FILE_BYTES + 1)


def side_file_bytes(name: str, value: Any) -> bytes:
    """The bytes to store for one side file: ``bytes`` as they are, a ``str`` as UTF-8
    text, a path (``os.PathLike``, e.g. ``pathlib.Path``) as the file's contents, a
    mapping as JSON.

    Example:
        >>> side_file_bytes("config.json", {"model_type": "gpt2"})
        b'{\\n  "model_type": "gpt2"\\n}\\n'
    """
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, os.PathLike):
        data = _read_path(name, value)
    elif isinstance(value, Mapping):
        try:
            data = (json.dumps(value, indent=2, allow_nan=False) + "\n").encode("utf-8")
        except (TypeError, ValueError) as e:
            raise type(e)(f"extra_files[{name!r}]: the mapping is not JSON-serializable: {e}") from None
    else:
        raise TypeError(
            f"extra_files[{name!r}]: expected bytes, str (text), a path (os.PathLike) or a dict "
            f"(saved as JSON), got {type(value).__name__}"
        )
    if len(data) > MAX_SIDE_FILE_BYTES:
        raise ValueError(
            f"extra_files[{name!r}]: {len(data)} bytes, "
            f"over the {MAX_SIDE_FILE_BYTES}-byte cap for side files"
        )
    return data


def prepare_side_files(extra_files: Mapping[str, Any] | None) -> list[tuple[str, bytes]]:
    """``extra_files`` as checked ``(name, bytes)`` pairs, read now (in the caller's
    thread, so an async save reports a bad file at once and never reads it later).

    Example:
        >>> prepare_side_files({"generation_config.json": {"do_sample": False}, "notes.txt": "hi"})
        [('generation_config.json', b'{\\n  "do_sample": false\\n}\\n'), ('notes.txt', b'hi')]
    """
    if extra_files is None:
        return []
    if not isinstance(extra_files, Mapping):
        raise TypeError(
            f"extra_files must be a mapping of file name -> content, got {type(extra_files).__name__}"
        )
    return [(check_side_file_name(name), side_file_bytes(name, value)) for name, value in extra_files.items()]
