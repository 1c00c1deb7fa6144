"""Optimizer state dicts through the core API: ``ckptio.save_state(path,
model.state_dict(), optimizer.state_dict())`` keeps int keys, ``betas`` tuples, ``step``
tensors and ``param_groups`` exactly, and ``optimizer.load_state_dict`` then continues
bit for bit."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
import torch

import ckptio


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_identical(a: Any, b: Any, where: str = "<root>") -> None:
    """Same types all the way down, same key order, tensors and floats equal bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert type(k) is type(next(kb for kb in b if kb == k)), f"{where}: key type of {k!r}"
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), where
        assert _bits(a) == _bits(b), f"{where}: tensor bits differ"
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 12)
        self.fc2 = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "Adam": lambda groups: torch.optim.Adam(groups, lr=1e-2, betas=(0.8, 0.99)),
    "AdamW": lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.05, amsgrad=True),
    "SGD-momentum": lambda groups: torch.optim.SGD(groups, lr=5e-2, momentum=0.9, nesterov=True),
}


def _build(name: str, seed: int) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Net()
    groups = [
        {"params": [model.fc1.weight, model.fc2.weight]},
        {"params": [model.fc1.bias, model.fc2.bias], "lr": 3e-3, "weight_decay": 0.0},
    ]
    return model, OPTIMIZERS[name](groups)


def _train(model: Net, opt: torch.optim.Optimizer, steps: range) -> list[torch.Tensor]:
    losses = []
    for step in steps:
        g = torch.Generator().manual_seed(1000 + step)  # the data depends on the step only
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
    return losses


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_state_dict_round_trips_exactly_and_training_continues_bit_exactly(ckpt_path, name):
    model, opt = _build(name, seed=0)
    _train(model, opt, range(4))
    saved = opt.state_dict()
    ckptio.save_state(ckpt_path, model.state_dict(), saved, step=4)

    weights, opt_state, step, _ = ckptio.load_state_with_optimizer(ckpt_path, framework="torch")
    assert step == 4
    assert_identical(opt_state, saved)  # int keys, betas tuple, step tensors, param_groups
    assert all(type(k) is int for k in opt_state["state"])
    if name.startswith("Adam"):
        assert type(opt_state["param_groups"][0]["betas"]) is tuple
        assert opt_state["state"][0]["step"].dtype == torch.float32
    else:
        assert opt_state["state"][0]["momentum_buffer"].shape == model.fc1.weight.shape

    fresh, fresh_opt = _build(name, seed=1)  # different initial weights
    assert not torch.equal(fresh.fc1.weight, model.fc1.weight)
    fresh.load_state_dict(weights)
    fresh_opt.load_state_dict(opt_state)
    assert_identical(fresh_opt.state_dict(), opt.state_dict())

    reference = _train(model, opt, range(4, 9))
    resumed = _train(fresh, fresh_opt, range(4, 9))
    for i, (a, b) in enumerate(zip(reference, resumed, strict=True)):
        assert _bits(a) == _bits(b), f"loss {4 + i} differs: {a.item()!r} != {b.item()!r}"
    assert_identical(dict(fresh.state_dict()), dict(model.state_dict()))
    assert_identical(fresh_opt.state_dict(), opt.state_dict())


def test_the_comparison_sees_a_one_ulp_difference(ckpt_path):
    """The bit-exact checks above can fail: one ulp in one Adam moment is detected."""
    model, opt = _build("Adam", seed=0)
    _train(model, opt, range(2))
    ckptio.save_state(ckpt_path, model.state_dict(), opt.state_dict())
    weights, opt_state, _, _ = ckptio.load_state_with_optimizer(ckpt_path, framework="torch")
    exp_avg = opt_state["state"][1]["exp_avg"]
    exp_avg.view(torch.int32)[0] += 1  # the loaded view is copy-on-write: the file keeps its bytes
    fresh, fresh_opt = _build("Adam", seed=1)
    fresh.load_state_dict(weights)
    fresh_opt.load_state_dict(opt_state)
    with pytest.raises(AssertionError, match=r"\[1\]\['exp_avg'\]: tensor bits differ"):
        assert_identical(fresh_opt.state_dict(), opt.state_dict())
    with pytest.raises(AssertionError, match=r"\['betas'\]: list != tuple"):
        assert_identical({"betas": [0.9, 0.999]}, {"betas": (0.9, 0.999)})
    with pytest.raises(AssertionError, match="key type"):
        assert_identical({0: 1}, {0.0: 1})


def test_optimizer_state_comes_back_as_torch_tensors_that_can_be_written(ckpt_path):
    model, opt = _build("SGD-momentum", seed=0)
    _train(model, opt, range(2))
    ckptio.save_state(ckpt_path, model.state_dict(), opt.state_dict())
    first = ckptio.load_state_with_optimizer(ckpt_path).optimizer_state
    buf = first["state"][0]["momentum_buffer"]
    assert isinstance(buf, torch.Tensor)
    before = buf.clone()
    buf.zero_()
    again = ckptio.load_state_with_optimizer(ckpt_path).optimizer_state["state"][0]["momentum_buffer"]
    assert torch.equal(again, before)
