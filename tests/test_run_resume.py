"""A training loop that saves into a ``Run`` every few steps, is SIGKILLed at random
steps, and resumes from the run each time, for numpy and for torch.

The loop walks epochs of shuffled batches. Its data loader's state (epoch, index of
the next batch, the shuffling generator's state at the start of the epoch) is the
checkpoint's ``loop_state``; the model's state counts how often it trained on each
batch and keeps an order-sensitive trace of the batch ids. After three kills at random
steps (the kill lands anywhere, a save included) and a final resume, the run must
have trained on every batch exactly once, in the same order, and end bit for bit
where an uninterrupted run ends: weights, optimizer state, counts and trace.

Run as a script, this file is the training process:
``python test_run_resume.py numpy|torch RUN_DIR OUT.npz``.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _resume import assert_bitwise_equal

import ckptio

EPOCHS, N, BATCH, FEATURES = 5, 48, 8, 4
PER_EPOCH = N // BATCH
STEPS = EPOCHS * PER_EPOCH  # 30
SAVE_EVERY, KEEP_LAST = 4, 2
LR, BETA1, BETA2, EPS = 0.05, 0.9, 0.999, 1e-8
TRACE_MOD = 2**61 - 1


def dataset() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((N, FEATURES))
    return x, x @ np.array([1.5, -2.0, 0.5, 3.0]) + 0.1 * rng.standard_normal(N)


class Loader:
    """Shuffled batches, epoch after epoch; ``state()`` is where to continue."""

    def __init__(self, loop_state: dict[str, Any] | None) -> None:
        self.gen = np.random.default_rng(7)
        self.epoch, self.next_batch = 0, 0
        if loop_state is not None:
            self.gen.bit_generator.state = loop_state["epoch_start_sampler"]
            self.epoch, self.next_batch = loop_state["epoch"], loop_state["next_batch"]
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch_start = self.gen.bit_generator.state
        self.perm = self.gen.permutation(N)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next_batch": self.next_batch, "epoch_start_sampler": self.epoch_start}

    def next(self) -> tuple[int, np.ndarray]:
        """(batch id, sample indices); the id is unique over the whole run."""
        batch_id = self.epoch * PER_EPOCH + self.next_batch
        idx = self.perm[self.next_batch * BATCH : (self.next_batch + 1) * BATCH]
        self.next_batch += 1
        if self.next_batch == PER_EPOCH:
            self.epoch, self.next_batch = self.epoch + 1, 0
            self._start_epoch()
        return batch_id, idx


def wait_for_go(step: int) -> None:
    """Tells the test which step starts, and waits until it says go (or kills us)."""
    print(f"step {step}", flush=True)
    sys.stdin.readline()


def _count(seen: Any, trace: int, batch_id: int) -> int:
    seen[batch_id] += 1
    return (trace * 1_000_003 + batch_id + 1) % TRACE_MOD


# -- numpy: hand-written Adam on a linear model --------------------------------------------
def train_numpy(run: ckptio.Run) -> dict[str, np.ndarray]:
    point = run.resume()
    if point is None:
        weights = {"w": np.zeros(FEATURES), "b": np.zeros(())}
        opt: dict[str, Any] = {"m": {k: np.zeros_like(v) for k, v in weights.items()}, "t": 0}
        opt["v"] = {k: np.zeros_like(v) for k, v in weights.items()}
        opt["seen"], opt["trace"], loader, step = np.zeros(STEPS, np.int64), 0, Loader(None), 0
    else:
        weights = {k: np.array(v) for k, v in point.weights.items()}  # own copies to train
        opt = point.optimizer_state
        opt["seen"] = np.array(opt["seen"])
        for k in ("m", "v"):
            opt[k] = {name: np.array(a) for name, a in opt[k].items()}
        loader, step = Loader(point.loop_state), point.step
    x, y = dataset()
    while step < STEPS:
        wait_for_go(step)
        batch_id, idx = loader.next()
        opt["trace"] = _count(opt["seen"], opt["trace"], batch_id)
        err = x[idx] @ weights["w"] + weights["b"] - y[idx]
        grads = {"w": 2 * x[idx].T @ err / BATCH, "b": 2 * err.mean()}
        opt["t"] += 1
        for k, g in grads.items():
            opt["m"][k] = np.asarray(BETA1 * opt["m"][k] + (1 - BETA1) * g)
            opt["v"][k] = np.asarray(BETA2 * opt["v"][k] + (1 - BETA2) * g * g)
            m_hat, v_hat = opt["m"][k] / (1 - BETA1 ** opt["t"]), opt["v"][k] / (1 - BETA2 ** opt["t"])
            weights[k] = np.asarray(weights[k] - LR * m_hat / (np.sqrt(v_hat) + EPS))
        step += 1
        if step % SAVE_EVERY == 0:
            run.save_state(f"step-{step:04d}", weights, opt, step=step, loop_state=loader.state())
    out = {f"weights.{k}": np.asarray(v) for k, v in weights.items()}
    out |= {f"opt.{k}.{n}": np.asarray(a) for k in ("m", "v") for n, a in opt[k].items()}
    return out | {"seen": opt["seen"], "trace": np.array(opt["trace"], np.uint64), "t": np.array(opt["t"])}


# -- torch: AdamW and a schedule on a small network ---------------------------------------
def train_torch(run: ckptio.Run) -> dict[str, np.ndarray]:
    import torch

    import ckptio.torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    seen, trace, loader, step = torch.zeros(STEPS, dtype=torch.int64), 0, Loader(None), 0
    latest = run.latest()
    if latest is not None:
        resumed = ckptio.torch.load_state(latest, model, opt, sched)
        seen, trace = resumed.extra["seen"].clone(), resumed.extra["trace"]
        loader, step = Loader(latest.loop_state), resumed.step
    x_all, y_all = (torch.from_numpy(a).float() for a in dataset())
    while step < STEPS:
        wait_for_go(step)
        batch_id, idx = loader.next()
        trace = _count(seen, trace, batch_id)
        noise = 0.01 * torch.randn(BATCH, FEATURES)  # the torch RNG state matters too
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x_all[idx] + noise).squeeze(1), y_all[idx])
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % SAVE_EVERY == 0:
            name, extra = f"step-{step:04d}", {"seen": seen, "trace": trace}
            ckptio.torch.save_state(
                run, model, opt, sched, name=name, step=step, loop_state=loader.state(), extra=extra
            )
    out = {f"model.{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        out |= {f"opt.{i}.{k}": v.detach().numpy().copy() for k, v in state.items()}
    out["lr"] = np.array([g["lr"] for g in opt.param_groups])
    return out | {"seen": seen.numpy(), "trace": np.array(trace, np.uint64)}


# -- the test -------------------------------------------------------------------------------
def _train(framework: str, root: Path, out: Path, kill_at: int | None, delay: float = 0.0) -> None:
    """Runs the loop in a new process; lets step ``kill_at`` start, then SIGKILLs it
    ``delay`` seconds later: in that step, in its save, or waiting for the next."""
    proc = subprocess.Popen(
        [sys.executable, __file__, framework, str(root), str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    assert proc.stdout is not None and proc.stdin is not None
    for line in proc.stdout:
        assert time.monotonic() < deadline, "the training process hangs"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if kill_at is not None and line.strip() == f"step {kill_at}":
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdin.close()
    proc.wait(timeout=120)
    proc.stdout.read()
    err = proc.stderr.read()  # type: ignore[union-attr]
    if kill_at is None:
        assert proc.returncode == 0, err
    else:
        assert proc.returncode == -signal.SIGKILL, f"not killed at step {kill_at}: {proc.returncode} {err}"


def _assert_run_whole(run: ckptio.Run) -> None:
    records = run.list()
    assert len(records) <= KEEP_LAST + 1, [r.name for r in records]  # +1: killed before retention ran
    for r in records:
        ckptio.verify(r)
        state = r.loop_state
        assert r.step == state["epoch"] * PER_EPOCH + state["next_batch"] and r.step % SAVE_EVERY == 0


@pytest.mark.parametrize(("framework", "seed"), [("numpy", 1), ("numpy", 2), ("torch", 3)])
def test_sigkill_and_resume_sees_every_batch_once(tmp_path: Path, framework: str, seed: int) -> None:
    _train(framework, tmp_path / "reference", tmp_path / "reference.npz", kill_at=None)
    with np.load(tmp_path / "reference.npz") as f:
        reference = {k: f[k] for k in f.files}
    assert reference["seen"].tolist() == [1] * STEPS

    rng = random.Random(seed)
    kills = sorted(rng.sample(range(1, STEPS), 3))
    root = tmp_path / "run"
    for kill_at in kills:
        _train(framework, root, tmp_path / "unused.npz", kill_at=kill_at, delay=rng.uniform(0, 0.01))
        _assert_run_whole(ckptio.Run(root))
    _train(framework, root, tmp_path / "resumed.npz", kill_at=None)
    with np.load(tmp_path / "resumed.npz") as f:
        resumed = {k: f[k] for k in f.files}
    assert resumed["seen"].tolist() == [1] * STEPS, f"kills at {kills}: batch counts {resumed['seen']}"
    assert_bitwise_equal(reference, resumed, f"{framework}, killed at steps {kills}")
    assert [r.step for r in ckptio.Run(root).list()] == [24, 28]  # keep_last=2 of every 4th step


def main(framework: str, root: str, out: str) -> None:
    run = ckptio.Run(root, keep_last=KEEP_LAST)
    result = train_numpy(run) if framework == "numpy" else train_torch(run)
    np.savez(out, **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
