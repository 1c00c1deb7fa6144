"""The seeded training states the benchmark saves and loads.

Three workloads, all built the same way in every worker process from a seed, so each
library writes exactly the same bytes:

- ``llm``: fp32 weights of a decoder-only transformer (embedding, attention and MLP
  projections, norms, LM head) plus Adam ``exp_avg`` and ``exp_avg_sq`` per weight.
- ``lora``: a LoRA adapter over such a model (``lora_A`` / ``lora_B`` of rank 8 or 16
  on every projection), fp32, plus its Adam state: thousands of small tensors.
- ``mixed``: bf16 weights (numpy via ``ml_dtypes``) with an fp32 Adam state.

Values come from a seeded pool of N(0, 0.02) numbers (squared for ``exp_avg_sq``),
copied into each tensor at a seeded offset: realistic, incompressible floats at memcpy
speed, so building a 1 GiB state takes a fraction of a second.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

WORKLOADS = ("llm", "lora", "mixed")
DEFAULT_WORKLOADS = ("llm", "lora")
#: lora is this fraction of ``--size``: adapters are small, what matters is their count.
LORA_FRACTION = 16
_POOL_ELEMENTS = 1 << 22  # 16 MiB of fp32
_ADAM = {"lr": 3e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}


@dataclass
class TrainingState:
    """Weights and Adam state of one workload, as numpy arrays.

    ``optimizer`` is shaped like a torch optimizer state dict, keyed by weight name:
    ``{"state": {name: {"exp_avg": a, "exp_avg_sq": b}}, "param_groups": [...], "step": n}``.
    """

    workload: str
    weights: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    step: int

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (weights + optimizer)."""
        return sum(a.nbytes for _, a in self.flat())

    @property
    def tensor_count(self) -> int:
        """Number of tensors (weights + optimizer)."""
        return sum(1 for _ in self.flat())

    def flat(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every tensor under one flat name (what single-file formats store).

        Example:
            >>> [name for name, _ in build_state("llm", 4 << 20).flat()][:2]
            ['model.embed_tokens.weight', 'model.layers.0.input_layernorm.weight']
        """
        yield from self.weights.items()
        for name, moments in self.optimizer["state"].items():
            for moment, array in moments.items():
                yield f"optimizer.{moment}.{name}", array


def parse_workloads(text: str) -> tuple[str, ...]:
    """Parses ``--workload``: one name or a comma-separated list.

    Example:
        >>> parse_workloads("llm,lora")
        ('llm', 'lora')
    """
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError(f"no workload given; choose from {', '.join(WORKLOADS)}")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    return names


def workload_bytes(workload: str, size: int) -> int:
    """The target byte count of ``workload`` for ``--size`` (lora is a fraction).

    Example:
        >>> workload_bytes("lora", 1 << 30) == (1 << 30) // 16
        True
    """
    return size // LORA_FRACTION if workload == "lora" else size


def _pools(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(_POOL_ELEMENTS, dtype=np.float32) * np.float32(0.02)
    return values, values * values


def _fill(pool: np.ndarray, shape: tuple[int, ...], name: str, dtype: Any) -> np.ndarray:
    """A tensor of ``shape`` filled from ``pool`` at an offset derived from ``name``."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    offset = zlib.crc32(name.encode()) % len(pool)
    done = 0
    while done < flat.size:
        chunk = pool[offset : offset + flat.size - done]
        flat[done : done + chunk.size] = chunk  # casts to bf16 for the mixed workload
        done += chunk.size
        offset = 0
    return out


def _llm_shapes(param_budget: int) -> list[tuple[str, tuple[int, ...]]]:
    """Weight shapes of a decoder-only transformer with about ``param_budget`` params."""
    for hidden in (2048, 1024, 512, 256, 128, 64):
        vocab, ffn = 8 * hidden, hidden * 11 // 4
        per_layer = 4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden
        fixed = 2 * vocab * hidden + hidden
        layers = round((param_budget - fixed) / per_layer)
        if layers >= 4 or hidden == 64:
            break
    layers = max(layers, 1)
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (hidden, hidden)),
            (p + "self_attn.v_proj.weight", (hidden, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (ffn, hidden)),
            (p + "mlp.up_proj.weight", (ffn, hidden)),
            (p + "mlp.down_proj.weight", (hidden, ffn)),
        ]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return shapes


def _lora_shapes(param_budget: int) -> list[tuple[str, tuple[int, ...]]]:
    """LoRA A/B shapes (rank 8 on even layers, 16 on odd) over a hidden-512 model: about
    2000 tensors of 16 to 90 KiB in the default 64 MiB, where per-tensor costs dominate."""
    hidden, ffn = 512, 1408
    projections = [
        ("self_attn.q_proj", hidden, hidden),
        ("self_attn.k_proj", hidden, hidden),
        ("self_attn.v_proj", hidden, hidden),
        ("self_attn.o_proj", hidden, hidden),
        ("mlp.gate_proj", hidden, ffn),
        ("mlp.up_proj", hidden, ffn),
        ("mlp.down_proj", ffn, hidden),
    ]
    shapes: list[tuple[str, tuple[int, ...]]] = []
    params, layer = 0, 0
    while params < param_budget or layer == 0:
        rank = 8 if layer % 2 == 0 else 16
        for proj, fan_in, fan_out in projections:
            p = f"base_model.model.layers.{layer}.{proj}."
            shapes += [(p + "lora_A.weight", (rank, fan_in)), (p + "lora_B.weight", (fan_out, rank))]
            params += rank * (fan_in + fan_out)
        layer += 1
    return shapes


def build_state(workload: str, size: int, seed: int = 0) -> TrainingState:
    """Builds the seeded state of ``workload`` holding about ``size`` bytes in all
    (weights + optimizer; callers scale lora with :func:`workload_bytes`).

    The same (workload, size, seed) gives the same bytes in every process.

    Example:
        >>> state = build_state("llm", 8 << 20)
        >>> state.weights["lm_head.weight"].dtype, state.optimizer["step"]
        (dtype('float32'), 1000)
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    weight_dtype: Any = np.float32
    bytes_per_param = 12  # fp32 weight + two fp32 moments
    if workload == "mixed":
        import ml_dtypes

        weight_dtype, bytes_per_param = ml_dtypes.bfloat16, 10
    budget = max(size // bytes_per_param, 1)
    shapes = _lora_shapes(budget) if workload == "lora" else _llm_shapes(budget)
    values, squares = _pools(seed)
    weights: dict[str, np.ndarray] = {}
    state: dict[str, dict[str, np.ndarray]] = {}
    for name, shape in shapes:
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, dtype=weight_dtype)
        else:
            weights[name] = _fill(values, shape, name, weight_dtype)
        state[name] = {
            "exp_avg": _fill(values, shape, name + ".m", np.float32),
            "exp_avg_sq": _fill(squares, shape, name + ".v", np.float32),
        }
    step = 1000
    optimizer = {"state": state, "param_groups": [dict(_ADAM)], "step": step}
    return TrainingState(workload, weights, optimizer, step)
