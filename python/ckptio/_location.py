"""Paths and object-store URLs: a checkpoint lives at a local path or at an
``s3://bucket/prefix/name`` URL, which stays a string (``pathlib`` would fold its
``//``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]
#: What the API takes and returns for a checkpoint's place: a local path or a URL.
Location = Path | str


def is_url(place: object) -> bool:
    """True for ``scheme://...`` text (``s3://``; other schemes are refused by the core).

    Example:
        >>> is_url("s3://bucket/run/step-1"), is_url("/tmp/step-1")
        (True, False)
    """
    return isinstance(place, str) and "://" in place


def as_location(place: PathLike) -> Location:
    """A URL as given (without a trailing slash), anything else as a ``Path``.

    Example:
        >>> as_location("s3://bucket/ck/"), as_location("ck")
        ('s3://bucket/ck', PosixPath('ck'))
    """
    if is_url(place):
        return str(place).rstrip("/")
    return Path(place)


def storage_items(storage_options: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    """``storage_options`` as the core takes them: (key, text) pairs; booleans as
    ``"true"``/``"false"``.

    Example:
        >>> storage_items({"endpoint": "http://127.0.0.1:9000", "allow_http": True})
        [('endpoint', 'http://127.0.0.1:9000'), ('allow_http', 'true')]
    """
    if storage_options is None:
        return None
    if not isinstance(storage_options, Mapping):
        raise TypeError(f"storage_options must be a mapping, got {type(storage_options).__name__}")
    items = []
    for key, value in storage_options.items():
        if not isinstance(key, str):
            raise TypeError(f"storage_options keys must be str, got {key!r}")
        items.append((key, ("true" if value else "false") if isinstance(value, bool) else str(value)))
    return items
