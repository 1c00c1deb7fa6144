"""The DCP suite's report: its targets (ckptio against DCP's FileSystemWriter /
FileSystemReader, and the async save's stall against its staging copy), the terminal
table and the markdown document; ``--json`` is :func:`report.to_json` with
``"suite": "dcp"``."""

from __future__ import annotations

from typing import Any

from .dcpcatalog import (
    ASYNC_SAVE,
    DCP_BASELINE,
    DCP_LIBRARIES,
    DCP_OPERATION_HELP,
    DCP_OPERATIONS,
    DCP_REFERENCE,
    LOAD_COLD,
    LOAD_HOT,
    LOAD_RESHARDED,
    SAVE,
    STAGE,
)
from .machine import describe_line
from .report import (
    Report,
    _aligned,
    _load_line,
    _markdown_table,
    _verdict,
    human_bytes,
    human_seconds,
    table_cells,
)
from .runner import BenchResult
from .summary import Row, find, summarize
from .targets import TargetCheck, _check

MIB = 1 << 20
TARGETS_TITLE = "targets (DCP)"
COLUMNS = ("operation", "library", "time", "GB/s", "vs ckptio", "vs FileSystem", "peak RSS", "notes")
#: ckptio's speed against DCP's own FileSystemWriter / FileSystemReader, at least.
SPEEDUP = 1.2
#: The async save's stall may exceed its staging copy by this fraction, at most.
STALL_SLACK = 0.10
_STATE = (
    "fp32 transformer weights + Adam exp_avg and exp_avg_sq as DTensors (Shard(0); Replicate() when "
    "dim 0 is shorter than the mesh) + the step as a 0-d tensor"
)


def evaluate_dcp(rows: list[Row]) -> list[TargetCheck]:
    """The DCP targets: D1 save, D2-D4 loads (cold, hot, resharded) ≥ 1.2x DCP's
    FileSystemWriter / FileSystemReader; D5 async save: the caller's stall ≤ the staging
    copy alone + 10 %. Missing rows: not measured.

    Example:
        >>> [(c.number, c.met) for c in evaluate_dcp([])]
        [('D1', None), ('D2', None), ('D3', None), ('D4', None), ('D5', None)]
    """
    w, ck, fs = "llm", DCP_REFERENCE, DCP_BASELINE
    checks = []
    for number, op, against in (
        ("D1", SAVE, "FileSystemWriter"),
        ("D2", LOAD_COLD, "FileSystemReader"),
        ("D3", LOAD_HOT, "FileSystemReader"),
        ("D4", LOAD_RESHARDED, "FileSystemReader"),
    ):
        mine, theirs = find(rows, w, ck, op), find(rows, w, fs, op)
        value = None if mine is None or theirs is None or mine.seconds <= 0 else theirs.seconds / mine.seconds
        checks.append(_check(number, w, f"{op} ≥ {SPEEDUP}x DCP {against}", value, SPEEDUP, "{:.2f}x"))
    goal = f"async save: caller's stall ≤ staging copy + {STALL_SLACK:.0%}"
    async_row, stage_row = find(rows, w, ck, ASYNC_SAVE), find(rows, w, ck, STAGE)
    if async_row is None or async_row.stall is None or stage_row is None or stage_row.seconds <= 0:
        checks.append(TargetCheck("D5", w, goal, "not measured", None))
    else:
        share = async_row.stall / stage_row.seconds
        stall, staging = human_seconds(async_row.stall), human_seconds(stage_row.seconds)
        text = f"{share:.2f}x ({stall} stall, {staging} staging)"
        checks.append(TargetCheck("D5", w, goal, text, share <= 1 + STALL_SLACK))
    return checks


def build_dcp_report(
    result: BenchResult, machine: dict[str, Any], date: str, command: str, settings: dict[str, Any]
) -> Report:
    """Summarizes a DCP run (medians, ratios against ckptio and DCP's FileSystem layer)
    and judges its targets; ``settings``: ``ranks``, ``backend``, ``sharding``.

    Example:
        ``build_dcp_report(result, machine, "2026-01-01 00:00 UTC", "ckptio bench --workload dcp", settings)``
    """
    rows = summarize(result, DCP_LIBRARIES, DCP_OPERATIONS, DCP_OPERATIONS, DCP_BASELINE)
    return Report(result, machine, date, command, rows, evaluate_dcp(rows), suite="dcp", settings=settings)


def _software(report: Report) -> dict[str, str]:
    v = report.result.versions
    ckptio_version = v.get(DCP_REFERENCE, "")
    if ckptio_version and report.machine.get("ckptio_revision"):
        ckptio_version += f" (git {report.machine['ckptio_revision']})"
    torch_version = v.get(DCP_BASELINE) or v.get("DCP HuggingFace", "")
    out = {"ckptio": ckptio_version, "torch": torch_version}
    out["python"] = report.machine.get("python", "")
    out["os"] = report.machine.get("os", "")
    return {k: val for k, val in out.items() if val}


def _ranks_line(report: Report) -> str:
    s = report.settings
    sharding = ", ".join(f"{n} {kind}" for kind, n in s.get("sharding", {}).items())
    return (
        f"{s['ranks']} ranks, one process each ({s['backend']}, CPU, OMP_NUM_THREADS=1 as torchrun sets), "
        f"one process group for the whole run; tensors: {sharding or 'unknown'}"
    )


def _runs_line(report: Report) -> str:
    runs = report.result.config.runs
    return (
        f"median of {runs} run{'s' if runs != 1 else ''}, library order alternating between runs; each "
        "operation starts after a barrier, its time and peak RSS are the largest over the ranks; "
        "GB/s = 10^9 bytes/s; 'vs ckptio' and 'vs FileSystem' are speed ratios (> 1 is faster)"
    )


def _title(report: Report) -> str:
    info = next((w for w in report.result.workloads if w.name == "llm"), None)
    if info is None:
        return "llm: not built"
    ranks = report.settings.get("ranks", "?")
    return f"llm: {human_bytes(info.nbytes)} in {info.tensors} tensors over {ranks} ranks ({_STATE})"


def _notes(report: Report) -> list[str]:
    out = [f"{op}: {text}" for op, text in DCP_OPERATION_HELP.items()]
    active = set(report.result.active)
    out += [f"{lib.name}: {lib.note}" for lib in DCP_LIBRARIES if lib.name in active and lib.note]
    out.append(
        "the state dict holds tensors only: HuggingFaceStorageWriter writes non-tensor entries (an "
        "optimizer's param_groups) in front of the safetensors header, a file its reader then rejects"
    )
    out.append(
        "loads are checked (untimed) against the saved values: a position-dependent checksum of every "
        "tensor, summed over the ranks"
    )
    out.append(
        "peak RSS: the largest growth of VmHWM on one rank during the operation (file pages a mapping "
        "touches count too); anon: anonymous memory still held at its end (copies the library made)"
    )
    for m in report.result.first_saves:
        stall = f", stall {human_seconds(m.stall)}" if m.stall is not None else ""
        read = ", what its loads read" if m.operation == SAVE else ""
        out.append(
            f"first {m.operation} of {m.library} (untimed{read}): "
            f"{human_seconds(m.seconds)}{stall}, peak RSS +{m.rss_peak / MIB:.0f} MiB"
        )
    warm = [
        m for m in report.result.measurements if m.operation == LOAD_COLD and (m.resident_before or 0) > 0.05
    ]
    out += [
        f"warning: a cold load of {m.library} (run {m.round + 1}) started with {m.resident_before:.0%} "
        "of its files cached (posix_fadvise was not fully honored)"
        for m in warm
    ]
    out += [f"skipped {name}: {why}" for name, why in report.result.skipped.items()]
    out += [f"failed {what}" for what in report.result.failures]
    return out


def _cells(report: Report) -> list[list[str]]:
    return [table_cells(row) for row in report.rows]


def _targets(report: Report) -> list[list[str]]:
    return [[t.number, t.workload, t.goal, t.measured, _verdict(t.met)] for t in report.targets]


def format_terminal_dcp(report: Report) -> str:
    """The human-readable DCP result: header, the table, targets, notes.

    Example:
        ``print(format_terminal_dcp(report))``
    """
    versions = ", ".join(f"{name} {v}" for name, v in _software(report).items())
    fs = report.machine["filesystem"]
    lines = [
        f"ckptio bench (DCP) · {report.date} · {describe_line(report.machine)}",
        f"directory {report.machine['directory']} ({fs['type']}, mount options {fs['options'] or '-'})",
        f"software: {versions}",
        _load_line(report),
        _ranks_line(report),
        _runs_line(report),
        "",
    ]
    if report.rows:
        lines += [_title(report), *_aligned(_blank_repeats([list(COLUMNS), *_cells(report)])), ""]
    header = ["#", "workload", "target", "measured", "result"]
    widths = [max(len(r[i]) for r in [header, *_targets(report)]) for i in range(len(header))]
    lines.append(TARGETS_TITLE)
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *_targets(report)]
    ]
    lines += ["", "notes:", *(f"  {n}" for n in _notes(report)), f"finished in {report.result.seconds:.0f} s"]
    return "\n".join(lines)


def _blank_repeats(cells: list[list[str]]) -> list[list[str]]:
    previous = None
    for row in cells[1:]:
        if row[0] == previous:
            row[0] = ""
        else:
            previous = row[0]
    return cells


def format_markdown_dcp(report: Report, plot_file: str | None = None) -> str:
    """The DCP run as a markdown document (``--markdown``); ``plot_file`` is unused (no
    ``--plot`` for this suite).

    Example:
        ``Path("bench-dcp.md").write_text(format_markdown_dcp(report))``
    """
    fs = report.machine["filesystem"]
    software = ", ".join(f"{k} {v}" for k, v in _software(report).items())
    lines = [
        "# ckptio bench results: torch.distributed.checkpoint storage layers",
        "",
        f"Generated by `{report.command}` on {report.date}; numbers are copied from that run's "
        "output, never edited.",
        "",
        f"- Machine: {describe_line(report.machine)}",
        f"- Directory: `{report.machine['directory']}` ({fs['type']}, `{fs['options']}`)",
        f"- Software: {software}",
        f"- {_cap(_load_line(report))}",
        f"- {_cap(_ranks_line(report))}",
        f"- {_cap(_runs_line(report))}; the whole run took {report.result.seconds:.0f} s.",
        "",
    ]
    if report.rows:
        lines += [f"## {_title(report)}", "", *_markdown_table(list(COLUMNS), _cells(report)), ""]
    lines += [f"## {_cap(TARGETS_TITLE)}", ""]
    lines += _markdown_table(["#", "workload", "target", "measured", "result"], _targets(report))
    lines += ["", "## Notes", "", *(f"- {n}" for n in _notes(report)), ""]
    return "\n".join(lines)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
