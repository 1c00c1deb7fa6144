"""From raw measurements to the figures people read: the median of each (workload,
library, operation), its GB/s, and its speed relative to ckptio and to the raw row."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .catalog import LIBRARIES, RAW, REFERENCE
from .library import OPERATIONS, RATE_OPERATIONS, Library
from .runner import BenchResult

GB = 1e9


@dataclass
class Row:
    """The median figures of one (workload, library, operation).

    ``vs_ckptio`` and ``vs_raw`` are speed ratios (the other's time / this time):
    above 1 is faster than ckptio / the raw row. ``stall`` is the caller's blocked
    time of an async save. RSS figures are growth during the operation, in bytes.
    """

    workload: str
    library: str
    operation: str
    runs: int
    seconds: float
    gbps: float | None
    rss_peak: int
    rss_anon: int
    stall: float | None = None
    vs_ckptio: float | None = None
    vs_raw: float | None = None


def _median_int(values: list[int]) -> int:
    return int(statistics.median(values))


def summarize(
    result: BenchResult,
    libraries: tuple[type[Library], ...] = LIBRARIES,
    operations: tuple[str, ...] = OPERATIONS,
    rate_operations: tuple[str, ...] = RATE_OPERATIONS,
    raw: str = RAW,
) -> list[Row]:
    """One Row per measured (workload, library, operation), in table order: the order
    of ``operations``, then of ``libraries`` (the S3 suite passes its own); ``raw`` is
    the limit row the ``vs raw`` ratios divide by.

    Example:
        >>> from .runner import BenchConfig, Measurement, WorkloadInfo
        >>> r = BenchResult(BenchConfig(("llm",), 10**9, 1), [WorkloadInfo("llm", 10**9, 1)])
        >>> r.measurements = [Measurement("llm", "ckptio", "save", 0, 0.5, 0, 0),
        ...                   Measurement("llm", "raw write/read", "save", 0, 0.4, 0, 0)]
        >>> [(row.library, row.gbps, row.vs_raw) for row in summarize(r)]
        [('ckptio', 2.0, 0.8), ('raw write/read', 2.5, 1.0)]
    """
    nbytes = {w.name: w.nbytes for w in result.workloads}
    groups: dict[tuple[str, str, str], list] = {}
    for m in result.measurements:
        groups.setdefault((m.workload, m.library, m.operation), []).append(m)
    rows: dict[tuple[str, str, str], Row] = {}
    for (workload, library, op), ms in groups.items():
        seconds = statistics.median(m.seconds for m in ms)
        stalls = [m.stall for m in ms if m.stall is not None]
        rows[(workload, library, op)] = Row(
            workload=workload,
            library=library,
            operation=op,
            runs=len(ms),
            seconds=seconds,
            gbps=nbytes[workload] / seconds / GB if op in rate_operations and seconds > 0 else None,
            rss_peak=_median_int([m.rss_peak for m in ms]),
            rss_anon=_median_int([m.rss_anon for m in ms]),
            stall=statistics.median(stalls) if stalls else None,
        )
    for (workload, _library, op), row in rows.items():
        reference = rows.get((workload, REFERENCE, op))
        limit = rows.get((workload, raw, op))
        if reference is not None and row.seconds > 0:
            row.vs_ckptio = reference.seconds / row.seconds
        if limit is not None and row.seconds > 0:
            row.vs_raw = limit.seconds / row.seconds
    order = {lib.name: i for i, lib in enumerate(libraries)}
    workload_order = {w: i for i, w in enumerate(result.config.workloads)}
    return sorted(
        rows.values(),
        key=lambda r: (workload_order.get(r.workload, 99), operations.index(r.operation), order[r.library]),
    )


def find(rows: list[Row], workload: str, library: str, operation: str) -> Row | None:
    """The row of (workload, library, operation), or None.

    Example:
        >>> find([], "llm", "ckptio", "save") is None
        True
    """
    for row in rows:
        if (row.workload, row.library, row.operation) == (workload, library, operation):
            return row
    return None
