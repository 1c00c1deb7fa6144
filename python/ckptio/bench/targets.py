"""The throughput targets of the engine (issues 5 and 15), judged from one run's rows.

Targets 1-8 and 12 are judged on every workload of the run, 9-11 and 13-15 on
``lora``, 16 on ``llm``. Loads are judged in the default mapped mode (``copy=True`` is
a row of its own). The memory bounds (M1-M3) are printed with them. A target whose rows are missing (a peer
not installed, an operation that failed) is listed as not measured, never as met.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import RAW, REFERENCE
from .library import LOAD_COLD, LOAD_HOT, OPEN, SAVE, SAVE_DURABLE, VERIFY
from .runner import Measurement
from .runners_ckptio import CkptioAsync, CkptioCopy
from .summary import Row, find

MIB = 1 << 20
_SAFETENSORS = ("safetensors numpy", "safetensors torch")
_NOT_PEERS = {REFERENCE, CkptioAsync.name, CkptioCopy.name, RAW}


@dataclass
class TargetCheck:
    """One target on one workload: the goal, the measured figure, met or not (None:
    not measured)."""

    number: str
    workload: str
    goal: str
    measured: str
    met: bool | None


def human_ms(seconds: float) -> str:
    """``0.0123`` -> ``'12.3 ms'``.

    Example:
        >>> human_ms(0.0123)
        '12.3 ms'
    """
    return f"{seconds * 1e3:.1f} ms"


def _ratio(a: Row | None, b: Row | None) -> float | None:
    """Speed of ``a`` relative to ``b`` (b's time / a's time)."""
    if a is None or b is None or a.seconds <= 0:
        return None
    return b.seconds / a.seconds


def _check(
    number: str, workload: str, goal: str, value: float | None, limit: float, text: str
) -> TargetCheck:
    if value is None:
        return TargetCheck(number, workload, goal, "not measured", None)
    return TargetCheck(number, workload, goal, text.format(value), value >= limit)


def _peers(rows: list[Row], workload: str, op: str) -> list[Row]:
    return [r for r in rows if r.workload == workload and r.operation == op and r.library not in _NOT_PEERS]


def _vs_every_peer(rows: list[Row], workload: str, op: str, mine: Row | None) -> tuple[float | None, str]:
    peers = _peers(rows, workload, op)
    if mine is None or not peers:
        return None, ""
    fastest = min(peers, key=lambda r: r.seconds)
    return _ratio(mine, fastest), fastest.library


def _per_workload(rows: list[Row], w: str, nbytes: int, first_saves: list[Measurement]) -> list[TargetCheck]:
    ck = REFERENCE
    out = []
    save, save_d = find(rows, w, ck, SAVE), find(rows, w, ck, SAVE_DURABLE)
    out.append(
        _check("1", w, "save ≥ 0.9x raw write()", _ratio(save, find(rows, w, RAW, SAVE)), 0.9, "{:.2f}x")
    )
    value, peer = _vs_every_peer(rows, w, SAVE, save)
    out.append(_check("2", w, "save ≥ 1.0x every peer", value, 1.0, "{:.2f}x " + f"(fastest peer: {peer})"))
    out.append(
        _check(
            "3",
            w,
            "durable save ≥ 0.9x raw write + fsync",
            _ratio(save_d, find(rows, w, RAW, SAVE_DURABLE)),
            0.9,
            "{:.2f}x",
        )
    )
    opened = find(rows, w, ck, OPEN)
    out.append(_open_within("4", w, opened, 0.005))
    hot = find(rows, w, ck, LOAD_HOT)
    st_hot = find(rows, w, "safetensors torch", LOAD_HOT)
    out.append(_check("5", w, "hot load ≥ 1.0x safetensors torch", _ratio(hot, st_hot), 1.0, "{:.2f}x"))
    cold = find(rows, w, ck, LOAD_COLD)
    value, peer = _vs_every_peer(rows, w, LOAD_COLD, cold)
    out.append(_check("6", w, "cold load ≥ 1.0x best peer", value, 1.0, "{:.2f}x " + f"(best peer: {peer})"))
    out.append(
        _check(
            "7", w, "cold load ≥ 0.9x raw read", _ratio(cold, find(rows, w, RAW, LOAD_COLD)), 0.9, "{:.2f}x"
        )
    )
    if w == "llm":
        out.append(_open_within("16", w, opened, 0.001))
    verify = find(rows, w, ck, VERIFY)
    out.append(_check("8", w, "verify (hot) ≥ 4 GB/s", verify.gbps if verify else None, 4.0, "{:.2f} GB/s"))
    for op, sync_row, label in ((SAVE_DURABLE, save_d, "durable, the default"), (SAVE, save, "page cache")):
        async_row = find(rows, w, CkptioAsync.name, op)
        goal = f"async save: caller's stall ≤ 0.25x sync save ({label})"
        if async_row is None or async_row.stall is None or sync_row is None:
            out.append(TargetCheck("12", w, goal, "not measured", None))
            continue
        share = async_row.stall / sync_row.seconds
        text = f"{share:.2f}x ({human_ms(async_row.stall)} of {human_ms(sync_row.seconds)})"
        out.append(TargetCheck("12", w, goal, text, share <= 0.25))
    out += _memory_bounds(rows, w, nbytes, first_saves)
    return out


def _memory_bounds(rows: list[Row], w: str, nbytes: int, first_saves: list[Measurement]) -> list[TargetCheck]:
    out = []
    save = find(rows, w, REFERENCE, SAVE_DURABLE) or find(rows, w, REFERENCE, SAVE)
    if save is not None:
        out.append(
            TargetCheck(
                "M1",
                w,
                "sync save peak RSS +≤ 64 MiB",
                f"+{save.rss_peak / MIB:.0f} MiB",
                save.rss_peak <= 64 * MIB,
            )
        )
    first = next((m for m in first_saves if m.workload == w and m.library == CkptioAsync.name), None)
    if first is not None:
        bound = nbytes + 64 * MIB
        out.append(
            TargetCheck(
                "M2",
                w,
                "first async save: peak RSS +≤ staging copy + 64 MiB",
                f"+{first.rss_peak / MIB:.0f} MiB (bound {bound / MIB:.0f} MiB)",
                first.rss_peak <= bound,
            )
        )
    opened = find(rows, w, REFERENCE, OPEN)
    if opened is not None:
        out.append(
            TargetCheck(
                "M3",
                w,
                "open: peak RSS +≤ 64 MiB (no data touched)",
                f"+{opened.rss_peak / MIB:.1f} MiB",
                opened.rss_peak <= 64 * MIB,
            )
        )
    return out


def _lora(rows: list[Row]) -> list[TargetCheck]:
    w, ck = "lora", REFERENCE
    save, hot = find(rows, w, ck, SAVE), find(rows, w, ck, LOAD_HOT)
    st_save, st_hot = find(rows, w, "safetensors torch", SAVE), find(rows, w, "safetensors torch", LOAD_HOT)
    t_save, t_hot = find(rows, w, "torch.save/load", SAVE), find(rows, w, "torch.save/load", LOAD_HOT)
    out = [
        _check("9", w, "lora save ≥ 2x safetensors torch", _ratio(save, st_save), 2.0, "{:.2f}x"),
        _check("10", w, "lora load (hot) ≥ 2x safetensors torch", _ratio(hot, st_hot), 2.0, "{:.2f}x"),
    ]
    ratios = [_ratio(save, t_save), _ratio(hot, t_hot)]
    both = None if None in ratios else min(r for r in ratios if r is not None)
    text = "{:.2f}x " + (f"(save {ratios[0]:.2f}x, load {ratios[1]:.2f}x)" if both is not None else "")
    out.append(_check("11", w, "lora save and load ≥ 4x torch.save/torch.load", both, 4.0, text))
    value, peer = _vs_every_peer(rows, w, SAVE, save)
    out.append(
        _check("13", w, "lora save ≥ 1.2x fastest peer", value, 1.2, "{:.2f}x " + f"(fastest peer: {peer})")
    )
    out.append(
        _check(
            "14", w, "lora save ≥ 1.0x raw write()", _ratio(save, find(rows, w, RAW, SAVE)), 1.0, "{:.2f}x"
        )
    )
    opened = find(rows, w, ck, OPEN)
    st_opens = [r for name in _SAFETENSORS if (r := find(rows, w, name, OPEN)) is not None]
    st_open = min(st_opens, key=lambda r: r.seconds) if st_opens else None
    out.append(_check("15", w, "lora open ≤ 1.0x safetensors' open", _ratio(opened, st_open), 1.0, "{:.2f}x"))
    return out


def _open_within(number: str, workload: str, opened: Row | None, limit: float) -> TargetCheck:
    goal = f"open ≤ {human_ms(limit)}"
    if opened is None:
        return TargetCheck(number, workload, goal, "not measured", None)
    return TargetCheck(number, workload, goal, human_ms(opened.seconds), opened.seconds <= limit)


def evaluate(
    rows: list[Row], sizes: dict[str, int], first_saves: list[Measurement] | None = None
) -> list[TargetCheck]:
    """Every target on every workload of the run, in target order. ``sizes`` maps each
    workload of the run, in run order, to its bytes; ``first_saves`` are the untimed
    first saves (the async one shows the staging allocation).

    Example:
        >>> [c.measured for c in evaluate([], {"llm": 10**9})][:2]
        ['not measured', 'not measured']
    """
    workloads = list(sizes)
    checks = [c for w in workloads for c in _per_workload(rows, w, sizes[w], first_saves or [])]
    if "lora" in workloads:
        checks += _lora(rows)
    order = [str(n) for n in range(1, 17)] + ["M1", "M2", "M3"]
    return sorted(checks, key=lambda c: (order.index(c.number), workloads.index(c.workload)))
