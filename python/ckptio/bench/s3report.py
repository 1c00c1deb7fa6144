"""The S3 suite's report: its targets (ckptio against the raw multipart put / ranged
get and against every peer, and the save's memory bound), the terminal table and the
markdown section; ``--json`` is :func:`report.to_json` with ``"suite": "s3"``."""

from __future__ import annotations

from typing import Any

from .library import SAVE
from .machine import describe_line
from .report import Report, _load_line, human_bytes, markdown_tables, table_lines, target_lines
from .runner import BenchResult
from .runners_s3 import LOAD, S3_LIBRARIES, S3_OPERATION_HELP, S3_OPERATIONS, S3_RAW, S3_REFERENCE
from .summary import Row, find, summarize
from .targets import TargetCheck, _check, _ratio

MIB = 1 << 20
#: The slack of the save's peak-RSS bound, beyond its parts in flight.
RSS_SLACK = 64 * MIB
TARGETS_TITLE = "targets (S3)"
_PEERS_EXCLUDED = {S3_REFERENCE, S3_RAW}


def save_rss_bound(part_size: int, parts_in_flight: int) -> int:
    """The most a save may grow the peak RSS: its parts in flight, plus 64 MiB.

    Example:
        >>> save_rss_bound(8 << 20, 8) // MIB
        128
    """
    return parts_in_flight * part_size + RSS_SLACK


def _vs_fastest_peer(rows: list[Row], workload: str, op: str, mine: Row | None) -> tuple[float | None, str]:
    peers = [
        r for r in rows if r.workload == workload and r.operation == op and r.library not in _PEERS_EXCLUDED
    ]
    if mine is None or not peers:
        return None, ""
    fastest = min(peers, key=lambda r: r.seconds)
    return _ratio(mine, fastest), fastest.library


def evaluate_s3(
    rows: list[Row], workloads: list[str], part_size: int, parts_in_flight: int
) -> list[TargetCheck]:
    """The S3 targets on every workload: S1 save ≥ 0.9x the raw put, S2 load ≥ 0.9x the
    raw get, S3 / S4 save / load ≥ 1.0x the fastest peer, SM the save's peak-RSS growth
    within (parts in flight x part size) + 64 MiB. Missing rows: not measured.

    Example:
        >>> [(c.number, c.met) for c in evaluate_s3([], ["llm"], 8 << 20, 8)]
        [('S1', None), ('S2', None), ('S3', None), ('S4', None), ('SM', None)]
    """
    checks = []
    bound = save_rss_bound(part_size, parts_in_flight)
    for w in workloads:
        save, load = find(rows, w, S3_REFERENCE, SAVE), find(rows, w, S3_REFERENCE, LOAD)
        raw_save, raw_load = find(rows, w, S3_RAW, SAVE), find(rows, w, S3_RAW, LOAD)
        checks.append(
            _check("S1", w, "save ≥ 0.9x raw multipart put", _ratio(save, raw_save), 0.9, "{:.2f}x")
        )
        checks.append(_check("S2", w, "load ≥ 0.9x raw ranged get", _ratio(load, raw_load), 0.9, "{:.2f}x"))
        for number, op, row in (("S3", SAVE, save), ("S4", LOAD, load)):
            value, peer = _vs_fastest_peer(rows, w, op, row)
            text = "{:.2f}x " + f"(fastest peer: {peer})"
            checks.append(_check(number, w, f"{op} ≥ 1.0x every peer", value, 1.0, text))
        goal = f"save peak RSS +≤ {parts_in_flight} x {part_size / MIB:g} MiB in flight + 64 MiB"
        if save is None:
            checks.append(TargetCheck("SM", w, goal, "not measured", None))
        else:
            measured = f"+{save.rss_peak / MIB:.0f} MiB (bound {bound / MIB:.0f} MiB)"
            checks.append(TargetCheck("SM", w, goal, measured, save.rss_peak <= bound))
    order = ["S1", "S2", "S3", "S4", "SM"]
    return sorted(checks, key=lambda c: (order.index(c.number), workloads.index(c.workload)))


def build_s3_report(
    result: BenchResult, machine: dict[str, Any], date: str, command: str, settings: dict[str, Any]
) -> Report:
    """Summarizes an S3 run (medians, ratios against ckptio and the raw row) and judges
    its targets; ``settings``: ``part_size``, ``parts_in_flight``, ``storage``.

    Example:
        ``build_s3_report(result, machine, "2026-01-01 00:00 UTC", "ckptio bench --s3", settings)``
    """
    rows = summarize(result, S3_LIBRARIES, S3_OPERATIONS, S3_OPERATIONS, S3_RAW)
    workloads = [w.name for w in result.workloads]
    targets = evaluate_s3(rows, workloads, settings["part_size"], settings["parts_in_flight"])
    return Report(result, machine, date, command, rows, targets, suite="s3", settings=settings)


def _software(report: Report) -> dict[str, str]:
    v = report.result.versions
    ckptio_version = v.get(S3_REFERENCE, "")
    if ckptio_version and report.machine.get("ckptio_revision"):
        ckptio_version += f" (git {report.machine['ckptio_revision']})"
    out = {"ckptio": ckptio_version}
    out.update({name: v[name] for name in ("boto3", "s3torchconnector") if v.get(name)})
    out["python"] = report.machine.get("python", "")
    out["os"] = report.machine.get("os", "")
    return {k: val for k, val in out.items() if val}


def _storage_line(report: Report) -> str:
    st = report.settings["storage"]
    return f"storage: {st['url']} at {st['endpoint']} ({st['server']})"


def _transfer_line(report: Report) -> str:
    s = report.settings
    return (
        f"every row: part size {human_bytes(s['part_size'])}, {s['parts_in_flight']} parts in flight "
        "(ckptio parts_in_flight, boto3 max_concurrency, raw threads)"
    )


def _runs_line(report: Report) -> str:
    runs = report.result.config.runs
    return (
        f"median of {runs} run{'s' if runs != 1 else ''}, library order alternating between runs; "
        "GB/s = 10^9 bytes/s; 'vs ckptio' and 'vs raw' are speed ratios (> 1 is faster)"
    )


def _notes(report: Report) -> list[str]:
    out = [f"{op}: {text}" for op, text in S3_OPERATION_HELP.items()]
    active = set(report.result.active)
    out += [f"{lib.name}: {lib.note}" for lib in S3_LIBRARIES if lib.name in active and lib.note]
    out.append(
        "peak RSS: growth of VmHWM during the operation (reset before it); anon: anonymous memory "
        "still held at its end"
    )
    for w in report.result.config.workloads:
        firsts = [
            f"{m.library} {m.seconds:.2f} s, +{m.rss_peak / MIB:.0f} MiB"
            for m in report.result.first_saves
            if m.workload == w
        ]
        if firsts:
            out.append(f"first {w} saves (untimed; what the loads read; time, peak RSS): {'; '.join(firsts)}")
    out += [f"skipped {name}: {why}" for name, why in report.result.skipped.items()]
    out += [f"failed {what}" for what in report.result.failures]
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def format_terminal_s3(report: Report) -> str:
    """The human-readable S3 result: header, a table per workload, targets, notes.

    Example:
        ``print(format_terminal_s3(report))``
    """
    versions = ", ".join(f"{name} {v}" for name, v in _software(report).items())
    lines = [
        f"ckptio bench (S3) · {report.date} · {describe_line(report.machine)}",
        _storage_line(report),
        f"software: {versions}",
        _load_line(report),
        _transfer_line(report),
        _runs_line(report),
        "",
        *table_lines(report),
        *target_lines(report, TARGETS_TITLE),
        "notes:",
        *(f"  {n}" for n in _notes(report)),
        f"finished in {report.result.seconds:.0f} s",
    ]
    return "\n".join(lines)


def format_markdown_s3(report: Report, plot_file: str | None = None) -> str:
    """The S3 run as a markdown document (``--markdown``).

    Example:
        ``Path("bench-s3.md").write_text(format_markdown_s3(report))``
    """
    lines = [
        "# ckptio bench results: S3-compatible storage",
        "",
        f"Generated by `{report.command}` on {report.date}; numbers are copied from that run's "
        "output, never edited.",
        "",
        f"- Machine: {describe_line(report.machine)}",
        f"- {_cap(_storage_line(report))}",
        f"- Software: {', '.join(f'{k} {v}' for k, v in _software(report).items())}",
        f"- {_cap(_load_line(report))}",
        f"- {_cap(_transfer_line(report))}",
        f"- {_cap(_runs_line(report))}; the whole run took {report.result.seconds:.0f} s.",
        "",
    ]
    if plot_file:
        lines += [f"![GB/s per operation and library]({plot_file})", ""]
    lines += markdown_tables(report, "##", "Targets (S3)")
    lines += ["## Notes", "", *(f"- {n}" for n in _notes(report)), ""]
    return "\n".join(lines)
