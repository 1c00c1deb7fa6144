"""Describing the machine a run happened on: CPU, cores, RAM, the filesystem under the
benchmark directory, and the software versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or what ``platform`` knows).

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "cpu model")):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo(key: str) -> int | None:
    """A ``/proc/meminfo`` field in bytes (``"MemTotal"``, ``"MemAvailable"``), or None.

    Example:
        >>> meminfo("MemTotal") > 0
        True
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == key:
                    return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def filesystem_of(path: str | os.PathLike[str]) -> dict[str, str]:
    """The mount holding ``path``: its mount point, type, device and options.

    Example:
        >>> filesystem_of("/")["mount_point"]
        '/'
    """
    target = os.path.realpath(path)
    best = {"mount_point": "/", "type": "unknown", "device": "unknown", "options": ""}
    best_len = -1
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 4:
                    continue
                device, mount_point, fs_type, options = fields[:4]
                mount_point = mount_point.replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= best_len:
                    best_len = len(mount_point)
                    best = {"mount_point": mount_point, "type": fs_type, "device": device, "options": options}
    except OSError:
        pass
    return best


def source_revision() -> str:
    """The git commit of the ckptio being measured, when it runs from a checkout
    (``"abc1234"``, ``"abc1234 + local changes"``), else ``""``.

    Example:
        >>> isinstance(source_revision(), str)
        True
    """
    import subprocess

    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src", "python"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit} + local changes" if commit and dirty else commit


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe_machine(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the report says about the machine and the benchmark directory.

    Example:
        >>> sorted(describe_machine("/"))[1:4]
        ['cores', 'cpu', 'directory']
    """
    return {
        "cpu": cpu_model(),
        "cores": _usable_cores(),
        "logical_cpus": os.cpu_count(),
        "ram_bytes": meminfo("MemTotal"),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "directory": str(Path(directory).resolve()),
        "filesystem": filesystem_of(directory),
        "load_average_before": _load_average(),
        "ckptio_revision": source_revision(),
    }


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: how busy the (shared) machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe_line(machine: dict[str, Any]) -> str:
    """A one-line summary: ``AMD EPYC, 2 cores, 23.4 GiB RAM, ext4 on /dev/vda``.

    Example:
        >>> describe_line({"cpu": "X", "cores": 2, "ram_bytes": 2**30,
        ...                "filesystem": {"type": "ext4", "device": "/dev/sda1"}})
        'X, 2 cores, 1.0 GiB RAM, ext4 on /dev/sda1'
    """
    ram = machine.get("ram_bytes")
    ram_text = f"{ram / 2**30:.1f} GiB RAM" if ram else "RAM unknown"
    fs = machine["filesystem"]
    return f"{machine['cpu']}, {machine['cores']} cores, {ram_text}, {fs['type']} on {fs['device']}"
