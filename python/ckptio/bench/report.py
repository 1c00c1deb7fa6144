"""Writing a run down: the terminal table, ``--json`` and ``--markdown``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .catalog import BY_NAME
from .library import OPERATION_HELP
from .machine import describe_line
from .runner import BenchResult
from .summary import Row, summarize
from .targets import TargetCheck, evaluate

_DESCRIPTIONS = {
    "llm": "fp32 transformer weights + Adam exp_avg and exp_avg_sq",
    "lora": "LoRA adapter (rank 8/16 A and B on every projection) + Adam state, fp32",
    "mixed": "bf16 weights + fp32 Adam exp_avg and exp_avg_sq",
}


_METHOD = [
    "- Every library saves and loads the same seeded state, built in one worker process per "
    "library family (`ckptio.bench.worker`); each operation is timed inside that worker.",
    "- Each library first saves once, untimed: that checkpoint is what its loads read, and "
    "first-call costs stay out of the figures. Saves in the rounds go to fresh paths and are "
    "removed right after.",
    "- Before every operation: garbage collected, `malloc_trim(0)`; before saves and cold loads "
    "also `sync()`, so no earlier writeback runs meanwhile. Cold loads then "
    "fsync and `posix_fadvise(DONTNEED)` every file and check with `mincore` that nothing stayed "
    "cached; hot loads and verify check that everything is cached.",
    "- Peak RSS: `/proc/self/clear_refs` resets `VmHWM` before the operation; the figure is "
    "`VmHWM` after it minus before.",
    "- Rounds rotate the library order (A B C, B C A, C A B, ...); every figure is the median over "
    "the rounds. Ratios are speed ratios against the `ckptio` row and the raw row.",
    "- Reproduce: `pip install '.[bench]' && ckptio bench` (add `--json`, `--markdown`, `--plot`).",
]


@dataclass
class Report:
    """A finished run with its summary rows and target checks, ready to print."""

    result: BenchResult
    machine: dict[str, Any]
    date: str
    command: str
    rows: list[Row] = field(default_factory=list)
    targets: list[TargetCheck] = field(default_factory=list)
    #: "local" (files in a directory) or "s3" (``ckptio bench --s3`` / ``--storage``)
    suite: str = "local"
    #: The S3 suite's part size, parts in flight and storage.
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, result: BenchResult, machine: dict[str, Any], date: str, command: str) -> Report:
        """Summarizes ``result`` and judges the targets.

        Example:
            ``Report.build(result, describe_machine(dir), "2026-01-01 00:00 UTC", "ckptio bench")``
        """
        rows = summarize(result)
        sizes = {w.name: w.nbytes for w in result.workloads}
        return cls(result, machine, date, command, rows, evaluate(rows, sizes, result.first_saves))


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``.

    Example:
        >>> human_bytes(3 * 1024**3)
        '3.00 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_seconds(s: float) -> str:
    """A duration with 3 significant digits: ``0.00042`` -> ``'0.42 ms'``.

    Example:
        >>> human_seconds(0.00042), human_seconds(0.1234), human_seconds(12.345)
        ('0.42 ms', '123 ms', '12.3 s')
    """
    if s < 0.01:
        return f"{s * 1e3:.2f} ms"
    if s < 1:
        return f"{s * 1e3:.0f} ms"
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def _rss(n: int) -> str:
    return f"{'+' if n >= 0 else '-'}{abs(n) / 2**20:.0f} MiB"


TABLE_COLUMNS = ("operation", "library", "time", "GB/s", "vs ckptio", "vs raw", "peak RSS", "notes")


def table_cells(row: Row) -> list[str]:
    """The cells of one row, as shown in the terminal and markdown tables.

    Example:
        >>> table_cells(Row("llm", "ckptio", "save", 3, 0.5, 2.0, 0, 0, None, 1.0, 0.9))
        ['save', 'ckptio', '500 ms', '2.00', '1.00x', '0.90x', '+0 MiB', '']
    """
    notes = []
    if row.stall is not None:
        notes.append(f"stall {human_seconds(row.stall)}")
    if row.rss_anon > 16 << 20:
        notes.append(f"anon {_rss(row.rss_anon)}")
    gbps = "" if row.gbps is None else f"{row.gbps:.2f}"
    return [
        row.operation,
        row.library,
        human_seconds(row.seconds),
        gbps,
        _ratio(row.vs_ckptio),
        _ratio(row.vs_raw),
        _rss(row.rss_peak),
        ", ".join(notes),
    ]


def _workload_title(report: Report, name: str) -> str:
    info = next(w for w in report.result.workloads if w.name == name)
    return f"{name}: {human_bytes(info.nbytes)} in {info.tensors} tensors ({_DESCRIPTIONS[name]})"


def _header_lines(report: Report) -> list[str]:
    r = report.result
    versions = ", ".join(f"{name} {v}" for name, v in _software(report).items())
    return [
        f"ckptio bench · {report.date} · {describe_line(report.machine)}",
        f"directory {report.machine['directory']} ({report.machine['filesystem']['type']}, "
        f"mount options {report.machine['filesystem']['options'] or '-'})",
        f"software: {versions}",
        _load_line(report),
        f"median of {r.config.runs} run{'s' if r.config.runs != 1 else ''}, library order rotating "
        "between runs; "
        "GB/s = 10^9 bytes/s; 'vs ckptio' and 'vs raw' are speed ratios (> 1 is faster)",
    ]


def _load_line(report: Report) -> str:
    before, after = report.machine.get("load_average_before"), report.machine.get("load_average_after")
    if not before:
        return "load average: unknown"
    text = f"load average (1/5/15 min) before the run {' '.join(f'{x:.2f}' for x in before)}"
    if after:
        text += f", after {' '.join(f'{x:.2f}' for x in after)}"
    return text + f" on {report.machine['cores']} cores (other work on the machine shows here)"


def _software(report: Report) -> dict[str, str]:
    v = report.result.versions
    ckptio_version = v.get("ckptio", "")
    if ckptio_version and report.machine.get("ckptio_revision"):
        ckptio_version += f" (git {report.machine['ckptio_revision']})"
    out = {"ckptio": ckptio_version, "python": report.machine.get("python", "")}
    for label, key in (
        ("numpy", "numpy.savez"),
        ("safetensors", "safetensors numpy"),
        ("torch", "torch.save/load"),
    ):
        if v.get(key):
            out[label] = v[key]
    out["os"] = report.machine.get("os", "")
    return {k: val for k, val in out.items() if val}


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6}
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _notes(report: Report) -> list[str]:
    out = [f"{op}: {text}" for op, text in OPERATION_HELP.items()]
    active = set(report.result.active)
    out += [f"{name}: {BY_NAME[name].note}" for name in BY_NAME if name in active and BY_NAME[name].note]
    out.append(
        "peak RSS: growth of VmHWM during the operation (file pages a mapping touches count too); "
        "anon: anonymous memory still held at its end (copies the library made)"
    )
    for m in report.result.first_saves:
        if m.stall is not None:
            out.append(
                f"first {m.workload} save of {m.library} (untimed, allocates the staging copy): stall "
                f"{human_seconds(m.stall)}, total {human_seconds(m.seconds)}, peak RSS {_rss(m.rss_peak)}"
            )
    warm = [
        m
        for m in report.result.measurements
        if m.operation == "load cold" and (m.resident_before or 0) > 0.05
    ]
    out += [
        f"warning: a cold load of {m.library} ({m.workload}, run {m.round + 1}) started with "
        f"{m.resident_before:.0%} of its files cached (posix_fadvise was not fully honored)"
        for m in warm
    ]
    out += [f"skipped {name}: {why}" for name, why in report.result.skipped.items()]
    out += [f"failed {what}" for what in report.result.failures]
    return out


def format_terminal(report: Report) -> str:
    """The human-readable result: header, one table per workload, targets, notes.

    Example:
        ``print(format_terminal(report))``
    """
    targets = target_lines(report, "targets (issues 5 and 15)")
    lines = [*_header_lines(report), "", *table_lines(report), *targets]
    lines += ["notes:", *(f"  {n}" for n in _notes(report))]
    lines.append(f"finished in {report.result.seconds:.0f} s")
    return "\n".join(lines)


def table_lines(report: Report) -> list[str]:
    """One aligned table per workload, each under its title and followed by a blank line.

    Example:
        ``print("\\n".join(table_lines(report)))``
    """
    lines = []
    for workload in report.result.config.workloads:
        rows = [r for r in report.rows if r.workload == workload]
        if not rows:
            continue
        lines.append(_workload_title(report, workload))
        cells = [list(TABLE_COLUMNS)]
        previous = None
        for row in rows:
            c = table_cells(row)
            if c[0] == previous:
                c[0] = ""
            else:
                previous = c[0]
            cells.append(c)
        lines += _aligned(cells)
        lines.append("")
    return lines


def target_lines(report: Report, title: str) -> list[str]:
    """The targets as an aligned table under ``title`` (nothing when there are none).

    Example:
        ``print("\\n".join(target_lines(report, "targets (issues 5 and 15)")))``
    """
    if not report.targets:
        return []
    cells = [["#", "workload", "target", "measured", "result"]]
    for t in report.targets:
        cells.append([t.number, t.workload, t.goal, t.measured, _verdict(t.met)])
    return [title, *_aligned_plain(cells), ""]


def _aligned_plain(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "MISSED")


def format_markdown(report: Report, plot_file: str | None = None) -> str:
    """The run as a markdown document (what ``docs/benchmarks.md`` holds).

    Example:
        ``Path("bench.md").write_text(format_markdown(report, "bench.png"))``
    """
    r = report.result
    lines = [
        "# ckptio bench results",
        "",
        f"Generated by `{report.command}` on {report.date}; numbers are copied from that run's "
        "output, never edited.",
        "",
        f"- Machine: {describe_line(report.machine)}",
        f"- Directory: `{report.machine['directory']}` ({report.machine['filesystem']['type']}, "
        f"`{report.machine['filesystem']['options']}`)",
        f"- Software: {', '.join(f'{k} {v}' for k, v in _software(report).items())}",
        f"- {_load_line(report).capitalize()}",
        f"- Median of {r.config.runs} run{'s' if r.config.runs != 1 else ''}, library order rotating "
        "between runs; the whole run "
        f"took {r.seconds:.0f} s. GB/s = 10^9 bytes/s; *vs ckptio* and *vs raw* are speed "
        "ratios (> 1 is faster).",
        "",
    ]
    if plot_file:
        lines += [f"![GB/s per operation and library]({plot_file})", ""]
    lines += markdown_tables(report, "##", "Targets (issues 5 and 15)")
    lines += ["## Notes", "", *(f"- {n}" for n in _notes(report)), ""]
    lines += ["## Method", "", *_METHOD, ""]
    return "\n".join(lines)


def markdown_tables(report: Report, level: str, targets_title: str) -> list[str]:
    """The workload tables and the target table in markdown, under ``level`` headings
    (``"##"``, ``"###"``).

    Example:
        ``"\\n".join(markdown_tables(report, "###", "Targets"))``
    """
    lines = []
    for workload in report.result.config.workloads:
        rows = [row for row in report.rows if row.workload == workload]
        if not rows:
            continue
        lines += [f"{level} {_workload_title(report, workload)}", ""]
        lines += _markdown_table(list(TABLE_COLUMNS), [table_cells(row) for row in rows])
        lines.append("")
    if report.targets:
        lines += [f"{level} {targets_title}", ""]
        lines += _markdown_table(
            ["#", "workload", "target", "measured", "result"],
            [[t.number, t.workload, t.goal, t.measured, _verdict(t.met)] for t in report.targets],
        )
        lines.append("")
    return lines


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)]


def to_json(report: Report) -> str:
    """Everything as JSON: machine, config, per-run measurements, medians, targets.

    Example:
        ``Path("bench.json").write_text(to_json(report))``
    """
    r = report.result
    data = {
        "format": "ckptio-bench/1",
        "suite": report.suite,
        "date": report.date,
        "command": report.command,
        "machine": report.machine,
        "software": _software(report),
        "config": asdict(r.config),
        "settings": report.settings,
        "seconds": r.seconds,
        "workloads": [asdict(w) for w in r.workloads],
        "rows": [asdict(row) for row in report.rows],
        "targets": [asdict(t) for t in report.targets],
        "measurements": [asdict(m) for m in r.measurements],
        "first_saves": [asdict(m) for m in r.first_saves],
        "skipped": r.skipped,
        "failures": r.failures,
        "versions": r.versions,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
