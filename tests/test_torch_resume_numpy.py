"""Bit-exact resume without torch: the seed's tiny sentiment model.

``score = happy * weight_happy + sad * weight_sad + bias``, a logistic loss, and a
hand-written Adam whose state is the seed's own shape::

    {"weight_happy": {"m": ..., "v": ...}, "weight_sad": {...}, "bias": {...}, "step": 1200}

with Python-float moments, plus the batch sampler's ``np.random.Generator`` state
(128-bit ints) and the loop position. Reference: 20 steps straight. Resumed: 10 steps,
``ckptio.save_state``, then a new process loads with ``ckptio.load_state_with_optimizer``
and trains 10 more. Weights, moments, step, losses and the generator state must be
equal bit for bit. No torch is imported here.

Run as a script, this file is that second process:
``python test_torch_resume_numpy.py CHECKPOINT OUT.npz``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _resume import assert_bitwise_equal, resume_in_new_process

import ckptio

STEPS, HALF, BATCH = 20, 10, 8
LR, BETA1, BETA2, EPS = 0.05, 0.9, 0.999, 1e-8
NAMES = ("weight_happy", "weight_sad", "bias")


def reviews() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(happy word counts, sad word counts, label 1 = positive); fixed."""
    rng = np.random.default_rng(2026)
    happy, sad = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    label = ((happy - sad + rng.normal(0, 1.0, 200)) > 0).astype(np.float64)
    return happy.astype(np.float64), sad.astype(np.float64), label


def fresh_state(seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any], np.random.Generator]:
    weights = {"weight_happy": np.array(2.0), "weight_sad": np.array(-3.5), "bias": np.array(0.1)}
    adam: dict[str, Any] = {name: {"m": 0.0, "v": 0.0} for name in NAMES}
    adam["step"] = 0
    return weights, adam, np.random.default_rng(seed)


def train(
    weights: dict[str, np.ndarray], adam: dict[str, Any], rng: np.random.Generator, steps: int
) -> list[float]:
    happy, sad, label = reviews()
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(label), BATCH, replace=False)
        h, s, y = happy[idx], sad[idx], label[idx]
        score = h * weights["weight_happy"] + s * weights["weight_sad"] + weights["bias"]
        p = 1.0 / (1.0 + np.exp(-score))
        losses.append(float(np.mean(np.logaddexp(0.0, score) - y * score)))
        dscore = (p - y) / BATCH
        grads = {
            "weight_happy": float(dscore @ h),
            "weight_sad": float(dscore @ s),
            "bias": float(dscore.sum()),
        }
        adam["step"] += 1
        t = adam["step"]
        for name in NAMES:
            g, st = grads[name], adam[name]
            st["m"] = BETA1 * st["m"] + (1 - BETA1) * g
            st["v"] = BETA2 * st["v"] + (1 - BETA2) * g * g
            m_hat, v_hat = st["m"] / (1 - BETA1**t), st["v"] / (1 - BETA2**t)
            weights[name][...] = weights[name] - LR * m_hat / (math.sqrt(v_hat) + EPS)
    return losses


def snapshot(
    weights: dict[str, np.ndarray], adam: dict[str, Any], rng: np.random.Generator, losses: list[float]
):
    out = {name: np.array(weights[name]) for name in NAMES}
    out.update({f"{name}.{k}": np.array(adam[name][k], np.float64) for name in NAMES for k in ("m", "v")})
    out["step"] = np.array(adam["step"], np.int64)
    out["loss"] = np.array(losses, np.float64)
    state = rng.bit_generator.state["state"]
    out["rng"] = np.array([state["state"] >> 64, state["state"] & (2**64 - 1), state["inc"] >> 64], np.uint64)
    return out


def save(path: Path, weights, adam, rng, step: int) -> None:
    tree = {**adam, "rng": rng.bit_generator.state, "loop": {"next_step": step}}
    ckptio.save_state(path, weights, tree, step=step, metadata={"model": "tiny sentiment"})


def resume(path: Path, *, restore_rng: bool = True) -> dict[str, np.ndarray]:
    weights, tree, step, metadata = ckptio.load_state_with_optimizer(path)
    assert metadata == {"model": "tiny sentiment"} and step == HALF
    assert tree["loop"] == {"next_step": HALF}
    assert type(tree["step"]) is int and all(type(tree[n]["m"]) is float for n in NAMES)
    weights = {name: np.array(weights[name]) for name in NAMES}  # own copies to train
    adam = {name: tree[name] for name in NAMES} | {"step": tree["step"]}
    rng = np.random.default_rng(999)
    if restore_rng:
        rng.bit_generator.state = tree["rng"]
    losses = train(weights, adam, rng, STEPS - tree["loop"]["next_step"])
    return snapshot(weights, adam, rng, losses)


def _reference_and_checkpoint(path: Path) -> dict[str, np.ndarray]:
    weights, adam, rng = fresh_state(seed=0)
    losses = train(weights, adam, rng, STEPS)
    expected = snapshot(weights, adam, rng, losses[HALF:])
    weights, adam, rng = fresh_state(seed=0)
    first = train(weights, adam, rng, HALF)
    assert first == losses[:HALF]
    save(path, weights, adam, rng, HALF)
    return expected


def test_numpy_resume_in_a_new_process_is_bit_exact(tmp_path):
    expected = _reference_and_checkpoint(tmp_path / "step-10")
    resumed = resume_in_new_process(__file__, tmp_path / "step-10", tmp_path / "resumed.npz")
    assert_bitwise_equal(expected, resumed, "resumed in a new process")


def test_numpy_resume_fails_without_the_generator_state(tmp_path):
    """The control: the check above can fail. Without the sampler's RNG state the
    resumed run sees other batches and diverges."""
    expected = _reference_and_checkpoint(tmp_path / "step-10")
    assert_bitwise_equal(expected, resume(tmp_path / "step-10"), "in process")
    diverged = resume(tmp_path / "step-10", restore_rng=False)
    assert diverged["loss"].tobytes() != expected["loss"].tobytes()
    assert diverged["weight_happy"].tobytes() != expected["weight_happy"].tobytes()


def main(checkpoint: str, out: str) -> None:
    np.savez(out, **resume(Path(checkpoint)))
    assert "torch" not in sys.modules, "the numpy resume must not need torch"


if __name__ == "__main__":
    main(*sys.argv[1:])
