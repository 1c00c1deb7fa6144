"""The rules of a run, as pure functions: names, TTLs, times, which checkpoints
retention keeps, which have expired, and the ``run`` entry of a manifest's user
section. No storage access here (that is ``_run_store``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from ._tree import flatten, unflatten

KINDS = ("state", "sampler")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]{0,199}")


def check_name(name: object) -> str:
    """A checkpoint name: 1-200 letters, digits and ``. _ - + = @``, not starting with
    ``.`` or ``-`` and without ``..``; so never a path, a parent or a hidden name.

    Example:
        >>> check_name("step-000100")
        'step-000100'
        >>> check_name("../x")
        Traceback (most recent call last):
        ValueError: invalid checkpoint name '../x': ...
    """
    if not isinstance(name, str):
        raise TypeError(f"a checkpoint name is a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid checkpoint name {name!r}: use 1-200 letters, digits and . _ - + = @, not starting "
            "with '.' or '-' (no '/', no '..', no hidden names)"
        )
    return name


def check_kind(kind: object, *, allow_none: bool = False) -> str | None:
    if kind is None and allow_none:
        return None
    if kind not in KINDS:
        allowed = '"state", "sampler"' + (" or None" if allow_none else "")
        raise ValueError(f"kind must be {allowed}, got {kind!r}")
    return str(kind)


def check_keep(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int or None, got {value!r}")
    return value


def ttl_seconds(ttl: object) -> float | None:
    """Seconds from a TTL given as seconds (int or float), a ``timedelta``, or None.

    Example:
        >>> ttl_seconds(timedelta(hours=1)), ttl_seconds(90), ttl_seconds(None)
        (3600.0, 90.0, None)
    """
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"ttl must be seconds (int or float), a timedelta or None, got {type(ttl).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
    return seconds


def utc_now() -> datetime:
    return datetime.now(UTC)


def now_from(clock: Callable[[], datetime]) -> datetime:
    now = clock()
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise TypeError(f"the run's clock must return a timezone-aware datetime, got {now!r}")
    return now.astimezone(UTC)


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"a time is an ISO 8601 string, got {text!r:.60}")
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return t.astimezone(UTC)


# -- the manifest's "run" entry --------------------------------------------------------
def run_entry(created: datetime, expires_at: datetime | None, loop_state: Any) -> dict[str, Any]:
    """``{"created", "expires_at", "loop_state"}`` as stored in the manifest. The loop
    state is encoded like the optimizer tree (exact ints and floats, tuples, int keys)
    but must hold no arrays: it lives in the manifest.

    Example:
        >>> t = datetime(2026, 1, 2, tzinfo=UTC)
        >>> entry = run_entry(t, None, {"epoch": 1})
        >>> entry["created"], entry["expires_at"], entry["loop_state"]
        ('2026-01-02T00:00:00.000000+00:00', None, {'dict': [['epoch', {'int': '1'}]]})
    """
    try:
        skeleton, arrays = flatten(loop_state, prefix="loop_state")
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("optimizer state", "loop_state", 1)) from None
    if arrays:
        raise TypeError(
            f"loop_state: {arrays[0][0]!r} is an array or tensor; loop_state is a JSON-like tree "
            "(dict, list, tuple, str, int, float, bool, None). Put arrays in optimizer_state "
            "(with ckptio.torch: extra=)."
        )
    return {"created": iso(created), "expires_at": iso(expires_at), "loop_state": skeleton}


def _no_arrays(tag: str, name: str) -> Any:
    raise ValueError(f"loop_state refers to a tensor ({tag} {name!r})")


def read_run_entry(entry: Any) -> tuple[datetime, datetime | None, Any]:
    """(created, expires_at, loop_state) of a stored entry; ValueError if malformed."""
    if not isinstance(entry, dict):
        raise ValueError("the run entry is not an object")
    expires = entry.get("expires_at")
    return (
        parse_time(entry.get("created")),
        None if expires is None else parse_time(expires),
        unflatten(entry.get("loop_state"), _no_arrays),
    )


# -- retention and expiry --------------------------------------------------------------
class _Dated(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def step(self) -> int | None: ...
    @property
    def expires_at(self) -> datetime | None: ...


R = TypeVar("R", bound=_Dated)


def beyond_retention(
    records: Sequence[R], *, keep_last: int | None, keep_every: int | None, protect: Collection[str] = ()
) -> list[R]:
    """What retention deletes among ``records`` (one kind, oldest first): all but the
    newest ``keep_last``, the steps that are multiples of ``keep_every``, the newest one
    and the names in ``protect``. With neither limit set, nothing.

    Example:
        >>> from types import SimpleNamespace as R
        >>> recs = [R(name=f"s{i}", step=i, kind="state", expires_at=None) for i in range(1, 8)]
        >>> [r.name for r in beyond_retention(recs, keep_last=2, keep_every=3)]
        ['s1', 's2', 's4', 's5']
    """
    if keep_last is None and keep_every is None:
        return []
    keep = set(protect)
    if records:
        keep.add(records[-1].name)
    if keep_last is not None:
        keep.update(r.name for r in records[-keep_last:])
    if keep_every is not None:
        keep.update(r.name for r in records if r.step is not None and r.step % keep_every == 0)
    return [r for r in records if r.name not in keep]


def expired(records: Sequence[R], now: datetime, protect: Collection[tuple[str, str]] = ()) -> list[R]:
    """The records whose ``expires_at`` is at or before ``now``, but for the
    (kind, name) pairs in ``protect``."""
    return [
        r
        for r in records
        if r.expires_at is not None and r.expires_at <= now and (r.kind, r.name) not in protect
    ]
