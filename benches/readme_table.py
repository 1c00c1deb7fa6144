"""Prints the README's benchmark excerpt from docs/benchmarks.json, so the numbers in
the README are copied by a program from a real run, never by hand.

Usage: python benches/readme_table.py [docs/benchmarks.json]
"""

from __future__ import annotations

import json
import sys

LIBRARIES = ["ckptio", "safetensors torch", "torch.save/load", "raw write/read"]
OPERATIONS = [
    ("save", "save (page cache)"),
    ("save durable", "save + fsync"),
    ("open", "open (lazy)"),
    ("load hot", "load + touch, hot"),
    ("load cold", "load + touch, cold"),
    ("verify", "verify"),
]
WORKLOADS = {"llm": "1.05 GiB, 171 tensors", "lora": "65 MiB, 2016 tensors"}


def cell(row: dict | None, operation: str) -> str:
    """One table cell: GB/s, or milliseconds for ``open``; a dash when not run."""
    if row is None:
        return "-"
    if operation == "open":
        ms = row["seconds"] * 1e3
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    return f"{row['gbps']:.2f} GB/s"


def main(path: str) -> None:
    with open(path) as f:
        run = json.load(f)
    rows = {(r["workload"], r["library"], r["operation"]): r for r in run["rows"]}
    for workload, size in WORKLOADS.items():
        print(f"**{workload}: {size}** (median of {run['config']['runs']}; {run['date'][:10]})\n")
        print("| operation | " + " | ".join(LIBRARIES) + " |")
        print("|---" * (len(LIBRARIES) + 1) + "|")
        for op, label in OPERATIONS:
            cells = (cell(rows.get((workload, lib, op)), op) for lib in LIBRARIES)
            print(f"| {label} | " + " | ".join(cells) + " |")
        print()
        stall = rows.get((workload, "ckptio async", "save durable"))
        sync = rows.get((workload, "ckptio", "save durable"))
        if stall and sync and stall.get("stall") is not None:
            print(
                f"Async save ({workload}): the caller waits {stall['stall'] * 1e3:.0f} ms, "
                f"against {sync['seconds'] * 1e3:.0f} ms for the same durable save done synchronously.\n"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks.json")
