"""``--plot FILE.png``: GB/s per operation and library, one panel per workload, drawn
with matplotlib (an optional dependency: ``pip install 'ckptio[bench]'``)."""

from __future__ import annotations

import os

from .catalog import SUITES
from .library import RATE_OPERATIONS
from .machine import describe_line
from .report import Report, human_bytes

MISSING_MATPLOTLIB = (
    "--plot needs matplotlib, which is not installed: pip install 'ckptio[bench]' (or matplotlib)"
)


def check_matplotlib() -> None:
    """Raises ValueError with an install hint when matplotlib is missing (checked before
    the run starts, so a long run does not end in that error).

    Example:
        >>> try:
        ...     check_matplotlib()
        ... except ValueError as e:
        ...     print("matplotlib" in str(e))
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(MISSING_MATPLOTLIB) from None


def write_plot(report: Report, path: str | os.PathLike[str]) -> None:
    """Draws a grouped bar chart of GB/s (operations on the x axis, one bar per library)
    for every workload of the run, with the machine and date in the title.

    Example:
        ``write_plot(report, "docs/benchmarks.png")``
    """
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runners_s3 import S3_OPERATIONS

    catalog = SUITES[report.suite]
    operations = S3_OPERATIONS if report.suite == "s3" else RATE_OPERATIONS
    raw = next(lib.name for lib in catalog if lib.is_raw)
    workloads = [w for w in report.result.config.workloads if any(r.workload == w for r in report.rows)]
    libraries = [lib.name for lib in catalog if any(r.library == lib.name for r in report.rows)]
    cmap = plt.get_cmap("tab10")
    color = {name: cmap(i % 10) for i, name in enumerate(libraries)}
    fig, axes = plt.subplots(len(workloads), 1, figsize=(12, 4.2 * len(workloads)), squeeze=False)
    for ax, workload in zip(axes[:, 0], workloads, strict=True):
        rows = {(r.library, r.operation): r for r in report.rows if r.workload == workload and r.gbps}
        ops = [op for op in operations if any(key[1] == op for key in rows)]
        for j, op in enumerate(ops):
            present = [name for name in libraries if (name, op) in rows]
            width = 0.84 / len(present)
            for i, name in enumerate(present):
                gbps = rows[(name, op)].gbps
                x = j - 0.42 + width * (i + 0.5)
                ax.bar(x, gbps, width * 0.92, color=color[name], hatch="//" if name == raw else None)
                ax.annotate(f"{gbps:.2g}", (x, gbps), ha="center", va="bottom", fontsize=6.5)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops)
        ax.set_ylabel("GB/s (higher is better)")
        info = next(w for w in report.result.workloads if w.name == workload)
        ax.set_title(f"{workload}: {human_bytes(info.nbytes)}, {info.tensors} tensors", loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.12)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=color[name], hatch="//" if name == raw else None)
        for name in libraries
    ]
    fig.legend(handles, libraries, loc="lower center", ncol=min(len(libraries), 5), fontsize="small")
    runs = report.result.config.runs
    title = "ckptio bench --s3" if report.suite == "s3" else "ckptio bench"
    fig.suptitle(
        f"{title}, {report.date}: {describe_line(report.machine)}, "
        f"median of {runs} run{'s' if runs != 1 else ''}",
        fontsize="medium",
    )
    fig.tight_layout(rect=(0, 0.06 if len(libraries) > 5 else 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
