"""Shared by the run tests: a fake clock and small deterministic checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

import ckptio

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A clock for ``Run(clock=...)`` that moves only when told (or by ``tick`` per
    call, so saves made in a row get distinct, ordered times)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = T0
        self.tick = timedelta(seconds=tick)

    def __call__(self) -> datetime:
        now = self.now
        self.now += self.tick
        return now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def weights_for(step: int) -> dict[str, np.ndarray]:
    return {"w": np.full(8, step, np.float32), "b": np.arange(3, dtype=np.int64) + step}


def optimizer_for(step: int) -> dict[str, Any]:
    return {"m": np.full(8, step / 10, np.float64), "step": step}


def save(run: ckptio.Run, kind: str, name: str, step: int | None, **kw: Any) -> ckptio.CheckpointRecord:
    seed = step or 0
    if kind == "state":
        return run.save_state(name, weights_for(seed), optimizer_for(seed), step=step, **kw)
    return run.save_weights_for_sampler(name, weights_for(seed), step=step, **kw)


def names(run: ckptio.Run, kind: str | None = None) -> list[str]:
    return [r.name for r in run.list(kind)]


def visible(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def hidden(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("."))
