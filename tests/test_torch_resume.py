"""Bit-exact resume with PyTorch across processes.

A small network with batch norm and dropout trains with AdamW and a warmup + cosine
schedule; each batch draws on all three RNGs (torch: dropout, numpy: input noise, Python
``random``: flips) and on the loop position (which permutation, which slice).

Reference: 20 steps straight. Resumed: 10 steps, ``ckptio.torch.save_state``, then a new
Python process, seeded differently, builds the model anew, calls
``ckptio.torch.load_state`` and trains 10 more. Every loss, learning rate, parameter,
buffer, optimizer tensor and the final RNG states must be equal bit for bit.

Run as a script, this file is that second process:
``python test_torch_resume.py CHECKPOINT OUT.npz``.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _resume import assert_bitwise_equal, resume_in_new_process

import ckptio.torch

STEPS, HALF, WARMUP = 20, 10, 5
N, BATCH, FEATURES, CLASSES = 64, 16, 8, 3
BATCHES_PER_EPOCH = N // BATCH


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(FEATURES, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.drop = torch.nn.Dropout(0.3)
        self.fc2 = torch.nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(seed: int) -> tuple[Net, torch.optim.Optimizer, Any]:
    """A fresh model, AdamW and warmup + cosine schedule; ``seed`` sets every RNG."""
    seed_everything(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-2)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / WARMUP)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - WARMUP)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[WARMUP])
    return model, opt, sched


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, FEATURES, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def train(model: Net, opt: torch.optim.Optimizer, sched: Any, start: int, stop: int) -> dict[str, list[Any]]:
    """Steps ``start`` .. ``stop - 1``; returns each step's loss and learning rate."""
    x_all, y_all = dataset()
    record: dict[str, list[Any]] = {"loss": [], "lr": []}
    model.train()
    for step in range(start, stop):
        epoch, batch = divmod(step, BATCHES_PER_EPOCH)
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(100 + epoch))
        idx = perm[batch * BATCH : (batch + 1) * BATCH]
        noise = np.random.standard_normal((BATCH, FEATURES)).astype(np.float32)
        x = x_all[idx] + 0.1 * torch.from_numpy(noise)
        if random.random() < 0.5:
            x = x.flip(1)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y_all[idx])
        loss.backward()
        opt.step()
        sched.step()
        record["loss"].append(loss.detach().numpy().copy())
        record["lr"].append(opt.param_groups[0]["lr"])
    return record


def snapshot(model: Net, opt: torch.optim.Optimizer, record: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """Everything compared, as arrays (written to .npz by the second process)."""
    out = {"loss": np.array(record["loss"], dtype=np.float32), "lr": np.array(record["lr"], np.float64)}
    for name, t in model.state_dict().items():
        out[f"model.{name}"] = t.detach().numpy().copy()
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"opt.{index}.{key}"] = value.detach().numpy().copy()
    out["opt.lr"] = np.array([g["lr"] for g in opt.param_groups], np.float64)
    out["rng.torch"] = torch.get_rng_state().numpy().copy()
    out["rng.numpy"] = np.random.get_state(legacy=False)["state"]["key"].copy()
    out["rng.python"] = np.array(random.getstate()[1], np.uint64)
    return out


def loop_position(step: int) -> dict[str, int]:
    epoch, batch = divmod(step, BATCHES_PER_EPOCH)
    return {"epoch": epoch, "batch": batch}


def resume_in_this_process(path: Path, seed: int, *, rng: bool = True) -> dict[str, np.ndarray]:
    model, opt, sched = build(seed)  # other initial weights, other RNG states
    resumed = ckptio.torch.load_state(path, model, opt, sched, rng=rng)
    assert resumed.step == HALF, resumed.step
    assert resumed.extra == loop_position(HALF), resumed.extra
    start = resumed.extra["epoch"] * BATCHES_PER_EPOCH + resumed.extra["batch"]
    return snapshot(model, opt, train(model, opt, sched, start, STEPS))


def _reference_and_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    model, opt, sched = build(0)
    reference = snapshot(model, opt, train(model, opt, sched, 0, STEPS))

    model, opt, sched = build(0)
    first = train(model, opt, sched, 0, HALF)
    ckptio.torch.save_state(path, model, opt, sched, extra=loop_position(HALF), step=HALF)
    assert np.array(first["loss"], np.float32).tobytes() == reference["loss"][:HALF].tobytes()
    return reference, _second_half(reference)


def _second_half(reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (v[HALF:] if k in ("loss", "lr") else v) for k, v in reference.items()}


def test_torch_resume_in_a_new_process_is_bit_exact(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference, expected = _reference_and_checkpoint(tmp_path / "step-10")
    finally:
        torch.set_num_threads(threads)
    assert len(set(reference["lr"].tolist())) > 5  # the schedule really moves the LR

    resumed = resume_in_new_process(__file__, tmp_path / "step-10", tmp_path / "resumed.npz")
    assert_bitwise_equal(expected, resumed, "resumed in a new process")


def test_torch_resume_is_bit_exact_in_process_and_fails_without_rng(tmp_path):
    """The same check in this process, plus the control that shows it can fail: without
    restoring the RNG states the resumed run diverges."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, expected = _reference_and_checkpoint(tmp_path / "step-10")
        assert_bitwise_equal(expected, resume_in_this_process(tmp_path / "step-10", seed=4242), "in process")
        without_rng = resume_in_this_process(tmp_path / "step-10", seed=4242, rng=False)
    finally:
        torch.set_num_threads(threads)
    assert without_rng["loss"].tobytes() != expected["loss"].tobytes()
    assert without_rng["lr"].tobytes() == expected["lr"].tobytes()  # the schedule is not random


def main(checkpoint: str, out: str) -> None:
    torch.set_num_threads(1)
    np.savez(out, **resume_in_this_process(Path(checkpoint), seed=12345))


if __name__ == "__main__":
    main(*sys.argv[1:])
