"""``ckptio.torch`` helpers: sampler checkpoints for inference, strict loading, errors,
tied embeddings, RNG and loop state, checkpoints written by the core API."""

from __future__ import annotations

import doctest
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckptio
import ckptio.torch
from ckptio.torch import StateDictMismatchError


class Net(torch.nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(5, hidden)
        self.bn = torch.nn.BatchNorm1d(hidden)
        self.drop = torch.nn.Dropout(0.25)
        self.fc2 = torch.nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


class TinyLM(torch.nn.Module):
    """An embedding tied to the output projection, as in most language models."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.mix = torch.nn.Linear(6, 6)
        self.lm_head = torch.nn.Linear(6, 11, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.mix(self.embed(tokens))))


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(
        sa[k].dtype == sb[k].dtype and _bits(sa[k]) == _bits(sb[k]) for k in sa
    )


def _trained(seed: int = 0, steps: int = 3) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(6, 5)).logsumexp(1).mean().backward()
        opt.step()
    return model, opt


def _is_mapped_from(address: int, directory: Path) -> bool:
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi and len(parts) == 6 and str(directory) in parts[5]:
            return True
    return False


# -- inference -----------------------------------------------------------------------
def test_sampler_checkpoint_in_a_fresh_model_gives_identical_outputs(ckpt_path):
    model, _ = _trained()
    model.eval()
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
    expected = model(x)
    ckptio.torch.save_weights_for_sampler(ckpt_path, model)

    ckpt = ckptio.open(ckpt_path)
    assert ckpt.kind == "sampler"
    assert ckpt.names == list(model.state_dict())  # parameters and buffers, nothing else
    assert {t.group for t in ckpt.tensors} == {"model"}

    torch.manual_seed(99)
    fresh = Net()
    assert not _same_state(fresh, model)
    loaded = ckptio.torch.load_state(ckpt_path, fresh)
    assert (loaded.step, loaded.extra, loaded.missing_keys) == (None, None, [])
    fresh.eval()
    assert _same_state(fresh, model)
    assert _bits(fresh(x)) == _bits(expected)


def test_sampler_checkpoint_cast_to_bfloat16_keeps_integer_buffers(ckpt_path):
    model, _ = _trained()
    ckptio.torch.save_weights_for_sampler(ckpt_path, model, dtype=torch.bfloat16)
    weights = ckptio.torch.load_weights(ckpt_path)
    assert weights["fc1.weight"].dtype == torch.bfloat16
    assert weights["bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(weights["fc2.bias"], model.fc2.bias.detach().to(torch.bfloat16))
    assert model.fc1.weight.dtype == torch.float32  # the model is not changed


# -- errors --------------------------------------------------------------------------
def test_optimizer_or_scheduler_from_a_sampler_checkpoint_is_a_clear_error(ckpt_path):
    model, _ = _trained()
    ckptio.torch.save_weights_for_sampler(ckpt_path, model)
    fresh, fresh_opt = _trained(seed=1, steps=0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ckptio.CheckpointKindError, match=r"'sampler' checkpoint .*no optimizer state"):
        ckptio.torch.load_state(ckpt_path, fresh, fresh_opt)
    sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=2)
    with pytest.raises(ckptio.CheckpointKindError, match="no scheduler state"):
        ckptio.torch.load_state(ckpt_path, fresh, scheduler=sched)
    with pytest.raises(ckptio.CheckpointKindError, match="sampler"):
        ckptio.load_state_with_optimizer(ckpt_path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # untouched


def test_strict_load_lists_every_mismatch_in_one_error_and_changes_nothing(ckpt_path):
    model, opt = _trained()
    ckptio.torch.save_state(ckpt_path, model, opt)

    class Other(Net):
        def __init__(self) -> None:
            super().__init__(hidden=8)
            self.fc2 = torch.nn.Linear(8, 3)  # mis-shaped: weight and bias
            self.head = torch.nn.Linear(2, 2)  # missing from the checkpoint
            del self.drop
            self.bn = torch.nn.LayerNorm(8)  # no running stats: unexpected in the checkpoint

    other = Other()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as info:
        ckptio.torch.load_state(ckpt_path, other)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ckptio.CkptioError)
    assert err.missing_keys == ["head.weight", "head.bias"]
    assert err.unexpected_keys == ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert err.mismatched_keys == ["fc2.weight", "fc2.bias"]
    message = str(err)
    for name in [*err.missing_keys, *err.unexpected_keys, *err.mismatched_keys]:
        assert name in message, name
    assert "checkpoint: shape (2, 8), model: shape (3, 8)" in message
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())

    loaded = ckptio.torch.load_state(ckpt_path, other, strict=False)
    assert (loaded.missing_keys, loaded.unexpected_keys, loaded.mismatched_keys) == (
        err.missing_keys,
        err.unexpected_keys,
        err.mismatched_keys,
    )
    assert torch.equal(other.fc1.weight, model.fc1.weight)  # what matches is loaded
    assert torch.equal(other.fc2.bias, before["fc2.bias"])  # the rest is left alone


def test_optimizer_with_other_param_groups_is_rejected_before_the_model_changes(ckpt_path):
    model, opt = _trained()
    ckptio.torch.save_state(ckpt_path, model, opt)
    fresh = Net()
    before = fresh.fc1.weight.detach().clone()
    wrong = torch.optim.AdamW(
        [
            {"params": [fresh.fc1.weight]},
            {"params": [p for n, p in fresh.named_parameters() if n != "fc1.weight"]},
        ]
    )
    with pytest.raises(StateDictMismatchError, match=r"saved \[6\], optimizer has \[1, 5\]"):
        ckptio.torch.load_state(ckpt_path, fresh, wrong)
    assert torch.equal(fresh.fc1.weight, before)


def test_unsupported_scheduler_state_names_where_it_is(ckpt_path):
    class Custom:
        def state_dict(self) -> dict[str, Any]:
            return {"decay": lambda step: 0.5**step}

    model, opt = _trained(steps=0)
    with pytest.raises(TypeError, match=r"\['scheduler'\]\['decay'\]"):
        ckptio.torch.save_state(ckpt_path, model, opt, Custom())
    assert not ckpt_path.exists()


# -- tied weights ----------------------------------------------------------------------
def test_tied_embeddings_are_stored_once_and_load_tied(ckpt_path):
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 11, (4, 5))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        opt.step()
    ckptio.torch.save_state(ckpt_path, model, opt)

    ckpt = ckptio.open(ckpt_path)
    assert ckpt.names == list(model.state_dict())  # both names listed ...
    stored = [t.name for t in ckpt.tensors if t.group == "model"]
    assert len(stored) == len(ckpt.names) - 1  # ... one of them stored
    weights = ckptio.torch.load_weights(ckpt_path)
    assert weights["lm_head.weight"] is weights["embed.weight"]

    torch.manual_seed(1)
    fresh = TinyLM()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    ckptio.torch.load_state(ckpt_path, fresh, fresh_opt, strict=True)
    assert fresh.lm_head.weight is fresh.embed.weight  # still tied, not re-assigned
    assert fresh.lm_head.weight.data_ptr() == fresh.embed.weight.data_ptr()
    assert _same_state(fresh, model)
    fresh.load_state_dict(model.state_dict(), strict=True)  # the state dict round trip

    for m, o in ((model, opt), (fresh, fresh_opt)):  # and training continues identically
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(tokens).flatten(0, 1), tokens.flatten()).backward()
        o.step()
    assert _same_state(fresh, model)
    assert fresh.lm_head.weight is fresh.embed.weight


def test_sampler_bfloat16_cast_keeps_tied_weights_stored_once(ckpt_path):
    model = TinyLM()
    ckptio.torch.save_weights_for_sampler(ckpt_path, model, dtype=torch.bfloat16)
    weights = ckptio.torch.load_weights(ckpt_path)
    assert weights["lm_head.weight"] is weights["embed.weight"]
    assert weights["embed.weight"].dtype == torch.bfloat16


# -- RNG, extra, scheduler -------------------------------------------------------------
def _draws() -> tuple[float, float, bytes]:
    return random.random(), float(np.random.random()), _bits(torch.rand(3))


def test_rng_states_are_restored_only_when_asked(ckpt_path):
    model, opt = _trained(steps=0)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckptio.torch.save_state(ckpt_path, model, opt)
    expected = _draws()

    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckptio.torch.load_state(ckpt_path, model, opt)
    assert _draws() == expected

    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    unseeded = _draws()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckptio.torch.load_state(ckpt_path, model, opt, rng=False)
    assert _draws() == unseeded != expected


def test_extra_loop_state_and_scheduler_round_trip_exactly(ckpt_path):
    model, opt = _trained(steps=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    for _ in range(7):
        opt.step()
        sched.step()
    loader_gen = torch.Generator().manual_seed(5)
    extra = {
        "epoch": 3,
        "batch": 118,
        "seen": [1, 2, 3],
        "best": (0.25, -0.0, float("inf")),
        "run": "a",
        "note": None,
        7: True,
        "loader_rng": loader_gen.get_state(),
        "scores": np.arange(4, dtype=np.float16),
    }
    ckptio.torch.save_state(ckpt_path, model, opt, sched, extra=extra, step=7, metadata={"lr": 0.1})

    fresh, fresh_opt = _trained(seed=1, steps=0)
    fresh_sched = torch.optim.lr_scheduler.OneCycleLR(fresh_opt, max_lr=0.1, total_steps=50)
    loaded = ckptio.torch.load_state(ckpt_path, fresh, fresh_opt, fresh_sched)
    assert (loaded.step, loaded.metadata) == (7, {"lr": 0.1})
    got = loaded.extra
    assert list(got) == list(extra)
    assert {k: v for k, v in got.items() if k not in ("loader_rng", "scores")} == {
        k: v for k, v in extra.items() if k not in ("loader_rng", "scores")
    }
    assert type(got["best"]) is tuple and str(got["best"][1]) == "-0.0"
    assert torch.equal(got["loader_rng"], extra["loader_rng"])
    assert got["scores"].dtype == np.float16 and got["scores"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert fresh_sched.state_dict() == sched.state_dict()
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(3):
        sched.step()
        fresh_sched.step()
        assert fresh_sched.get_last_lr() == sched.get_last_lr()


def test_loaded_optimizer_state_and_extra_do_not_pin_the_checkpoint_files(ckpt_path):
    model, opt = _trained()
    ckptio.torch.save_state(ckpt_path, model, opt, extra={"t": torch.ones(64)})
    fresh, fresh_opt = _trained(seed=1, steps=0)
    loaded = ckptio.torch.load_state(ckpt_path, fresh, fresh_opt)
    tensors = [loaded.extra["t"], *(v for s in fresh_opt.state.values() for v in s.values())]
    assert len(tensors) == 1 + 3 * len(list(model.parameters()))
    assert not any(_is_mapped_from(t.data_ptr(), ckpt_path) for t in tensors)


def test_model_extra_state_round_trips(ckpt_path):
    class WithVocab(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)
            self.vocab: dict[str, Any] = {"tokens": ["<s>", "a"], "version": 1}

        def get_extra_state(self) -> dict[str, Any]:
            return self.vocab

        def set_extra_state(self, state: dict[str, Any]) -> None:
            self.vocab = state

    model = WithVocab()
    model.vocab = {"tokens": ["<s>", "a", "b"], "version": 2}
    ckptio.torch.save_state(ckpt_path, model, None)
    fresh = WithVocab()
    ckptio.torch.load_state(ckpt_path, fresh)
    assert fresh.vocab == {"tokens": ["<s>", "a", "b"], "version": 2}
    assert torch.equal(fresh.proj.weight, model.proj.weight)
    with pytest.raises(ckptio.CheckpointKindError, match="without optimizer state"):
        ckptio.torch.load_state(ckpt_path, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))


def test_checkpoint_written_by_the_core_api_loads_into_model_and_optimizer(ckpt_path):
    model, opt = _trained()
    ckptio.save_state(ckpt_path, model.state_dict(), opt.state_dict(), step=3)
    fresh, fresh_opt = _trained(seed=1, steps=0)
    with pytest.warns(RuntimeWarning, match="no RNG state"):
        loaded = ckptio.torch.load_state(ckpt_path, fresh, fresh_opt)
    assert loaded.step == 3 and _same_state(fresh, model)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=2)
    with pytest.raises(ckptio.CheckpointKindError, match="without scheduler state"):
        ckptio.torch.load_state(ckpt_path, fresh, fresh_opt, sched, rng=False)


def test_async_save_keeps_the_state_of_the_call_while_training_goes_on(ckpt_path):
    model, opt = _trained()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    at_call = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}
    rng_at_call = ckptio.torch.rng_state()
    future = ckptio.torch.save_state_async(ckpt_path, model, opt, sched, extra={"epoch": 1}, step=3)
    for _ in range(2):  # keeps training at once: in-place updates of weights and moments
        opt.zero_grad()
        model(torch.randn(6, 5)).logsumexp(1).mean().backward()
        opt.step()
        sched.step()
    assert future.result() == ckpt_path

    fresh, fresh_opt = _trained(seed=1, steps=0)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=1, gamma=0.5)
    loaded = ckptio.torch.load_state(ckpt_path, fresh, fresh_opt, fresh_sched)
    assert (loaded.step, loaded.extra) == (3, {"epoch": 1})
    assert all(_bits(v) == _bits(at_call[k]) for k, v in fresh.state_dict().items())
    assert all(
        _bits(v) == _bits(moments[i][k])
        for i, s in fresh_opt.state_dict()["state"].items()
        for k, v in s.items()
    )
    assert fresh_sched.last_epoch == 0 and sched.last_epoch == 2
    now = ckptio.torch.rng_state()
    assert _bits(now["torch"]) == _bits(rng_at_call["torch"])
    assert now["python"]["state"].tobytes() == rng_at_call["python"]["state"].tobytes()


def test_docstring_examples_of_ckptio_torch_run():
    result = doctest.testmod(ckptio.torch, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0
