"""``ckptio.Run``: layout, records, names, listing, get, delete, overwrite, async saves,
resume, and what a run directory may hold besides its checkpoints."""

from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from _faults import run_python
from _runs import FakeClock, names, save, visible, weights_for

import ckptio


def test_layout_and_record_fields(tmp_path: Path) -> None:
    clock = FakeClock()
    run = ckptio.Run(tmp_path / "run", clock=clock)
    assert not run.root.exists() and run.list() == [] and run.latest() is None
    rec = save(run, "state", "step-10", 10, loop_state={"epoch": 1, "next_batch": 3}, metadata={"lr": 0.1})
    smp = save(run, "sampler", "step-10", 10)
    assert rec.path == tmp_path / "run" / "weights" / "step-10"
    assert smp.path == tmp_path / "run" / "sampler_weights" / "step-10"
    assert (rec.name, rec.kind, rec.step, rec.loop_state, rec.metadata) == (
        "step-10", "state", 10, {"epoch": 1, "next_batch": 3}, {"lr": 0.1},
    )  # fmt: skip
    assert rec.created == clock.now and rec.created.utcoffset() == timedelta(0) and rec.expires_at is None
    assert rec.size_bytes == sum(p.stat().st_size for p in rec.path.iterdir())
    assert (smp.kind, smp.loop_state) == ("sampler", None)
    # Ordinary checkpoints: the plain API opens them, by path or by record.
    assert os.fspath(rec) == str(rec.path)
    _, opt, step, meta = ckptio.load_state_with_optimizer(rec)
    assert step == 10 and meta == {"lr": 0.1} and opt["step"] == 10
    assert ckptio.load_state(smp.path)["w"].tolist() == [10.0] * 8
    assert rec == run.get("step-10") and smp == run.get("step-10", "sampler")
    assert hash(rec) == hash(run.get("step-10"))


def test_list_order_kinds_latest_and_get(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path, clock=FakeClock(tick=1))
    for step in (3, 1, 2):
        save(run, "state", f"s{step}", step)
    save(run, "sampler", "x", 9)
    assert names(run) == ["s3", "s1", "s2", "x"]  # by save time, not by step or name
    assert names(run, "state") == ["s3", "s1", "s2"] and names(run, "sampler") == ["x"]
    assert run.latest().name == "s2" and run.latest("sampler").name == "x"  # type: ignore[union-attr]
    with pytest.raises(ckptio.CheckpointNotFoundError, match="no state checkpoint named 'x' in run") as info:
        run.get("x")
    assert str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError):  # the built-in users catch
        run.get("nope", "sampler")
    for bad in ("weights", "both", None):
        with pytest.raises(ValueError, match="kind must be"):
            run.get("s1", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be"):
        run.list("weights")


BAD_NAMES = ["", "a/b", "..", "../x", ".", ".hidden", "-rf", "a..b", "x" * 201, "a\0b", "na me", "é", "a\\b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_refused_clearly(tmp_path: Path, bad: str) -> None:
    run = ckptio.Run(tmp_path / "run")
    for call in (
        lambda: run.save_state(bad, {"w": np.ones(1)}, {}),
        lambda: run.save_weights_for_sampler_async(bad, {"w": np.ones(1)}),
        lambda: run.get(bad),
        lambda: run.delete(bad),
        lambda: run.set_ttl(bad, 1),
    ):
        with pytest.raises(ValueError, match="invalid checkpoint name") as info:
            call()
        assert repr(bad) in str(info.value)
    assert not run.root.exists()
    with pytest.raises(TypeError, match="name is a str"):
        run.save_state(7, {"w": np.ones(1)}, {})  # type: ignore[arg-type]


def test_good_names(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path)
    good = ["step-000100", "final", "a.b", "v1+lora", "A_1", "lr=3e-4", "x" * 200, "_x", "user@run"]
    for name in good:
        save(run, "sampler", name, 1)
    assert sorted(names(run)) == sorted(good)


def test_loop_state_round_trips_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rng.standard_normal(3)
    loop = {
        "epoch": 3,
        "next_batch": 118,
        "sampler": rng.bit_generator.state,  # 128-bit ints
        "floats": [0.1, -0.0, math.inf, -math.inf, 1e-310],
        "nan": math.nan,
        "tuple": (1, "two", None, True),
        "int_keys": {0: "a", 10**30: "b"},
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "empty": {},
    }
    rec = ckptio.Run(tmp_path).save_state("s", {"w": np.ones(1)}, {}, loop_state=loop)
    got = ckptio.Run(tmp_path).get("s").loop_state
    for r in (rec.loop_state, got):
        assert math.isnan(r.pop("nan"))
        assert type(r["ordered"]) is OrderedDict and list(r["ordered"]) == ["z", "a"]
        assert [struct.pack("<d", f) for f in r["floats"]] == [struct.pack("<d", f) for f in loop["floats"]]
        assert {k: v for k, v in r.items()} == {k: v for k, v in loop.items() if k != "nan"}
    restored = np.random.default_rng(0)
    restored.bit_generator.state = got["sampler"]
    assert restored.standard_normal() == rng.standard_normal()


@pytest.mark.parametrize(
    "bad", [{"a": np.ones(2)}, [np.float32(1)], {"f": print}, {(1, 2): "tuple key"}, {"s": {1, 2}}]
)
def test_loop_state_that_is_not_json_like_is_refused(tmp_path: Path, bad: object) -> None:
    run = ckptio.Run(tmp_path)
    with pytest.raises(TypeError, match="loop_state") as info:
        run.save_state("s", {"w": np.ones(1)}, {}, loop_state=bad)
    assert "optimizer state" not in str(info.value)
    assert run.list() == []


def test_listing_reads_manifests_only(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path)
    rec = save(run, "state", "s", 1)
    (rec.path / "optimizer.safetensors").unlink()  # listing never opens tensor files
    assert run.list() == [rec]
    with pytest.raises(ckptio.CorruptCheckpointError, match="missing"):
        ckptio.load_state(rec)


def test_what_else_a_run_directory_may_hold(tmp_path: Path) -> None:
    """Only complete checkpoints of the right kind, with valid names, are listed; the
    damaged ones are reported by ``scan``; the rest is ignored."""
    run = ckptio.Run(tmp_path, clock=FakeClock(tick=1))
    good = save(run, "state", "good", 1)
    w = tmp_path / "weights"
    ckptio.save_state(w / "plain", weights_for(2), {}, step=2)  # saved outside a run: listed
    ckptio.save_weights_for_sampler(w / "wrong-kind", weights_for(3))
    ckptio.save_state(w / "has space", weights_for(4), {})
    save(run, "state", "damaged", 5)
    manifest = w / "damaged" / "ckptio.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"step": 5', b'"step": 6'))
    (w / "empty").mkdir()
    (w / "notes.txt").write_text("x")
    (w / ".good.ckptio-tmp-1-0123456789abcdef").mkdir()
    os.symlink(w / "good", w / "link")

    listed = run.list()
    assert [r.name for r in listed] == ["good", "plain"] or [r.name for r in listed] == ["plain", "good"]
    plain = run.get("plain")
    assert plain.step == 2 and plain.loop_state is None and plain.expires_at is None
    assert abs(plain.created.timestamp() - (w / "plain" / "ckptio.json").stat().st_mtime) < 1e-3
    problems = dict(run.scan()[1])
    assert sorted(p.name for p in problems) == ["damaged", "has space", "wrong-kind"]
    assert "checksum" in problems[w / "damaged"]
    assert "'sampler' checkpoint" in problems[w / "wrong-kind"]
    assert "invalid checkpoint name" in problems[w / "has space"]
    with pytest.raises(ckptio.CorruptCheckpointError):
        run.get("damaged")
    assert run.get("good") == good


def test_a_run_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    run = ckptio.Run(tmp_path / "f")
    with pytest.raises(ckptio.StorageError):
        run.list()
    with pytest.raises(OSError):
        save(run, "state", "s", 1)


def test_delete(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path)
    rec = save(run, "state", "s", 1)
    save(run, "state", "t", 2)
    held = ckptio.load_state(rec)  # zero-copy views of the mapped files
    run.delete("s")
    assert names(run) == ["t"] and visible(tmp_path / "weights") == ["t"]
    assert not [p for p in (tmp_path / "weights").iterdir() if p.name.startswith(".")]
    assert held["w"].tolist() == [1.0] * 8  # the mapping outlives the files
    with pytest.raises(ckptio.CheckpointNotFoundError, match="no state checkpoint named 's'"):
        run.delete("s")
    with pytest.raises(ckptio.CheckpointNotFoundError):
        run.delete("t", "sampler")
    (tmp_path / "weights" / "mine").mkdir()
    (tmp_path / "weights" / "mine" / "data.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"not a ckptio checkpoint .* refusing to delete it"):
        run.delete("mine")
    assert (tmp_path / "weights" / "mine" / "data.bin").exists()


def test_overwrite(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path, clock=FakeClock(tick=1))
    first = save(run, "state", "s", 1)
    with pytest.raises(ckptio.CheckpointExistsError):
        save(run, "state", "s", 2)
    assert run.get("s") == first
    second = save(run, "state", "s", 2, overwrite=True)
    assert second.checkpoint_id != first.checkpoint_id and second.created > first.created
    assert run.get("s") == second and names(run) == ["s"]


def test_async_saves_give_records_and_apply_retention_after_the_commit(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path, keep_last=2, clock=FakeClock(tick=1))
    w = weights_for(1)
    futures = [
        run.save_state_async(f"s{i}", w, {"i": i}, step=i, loop_state={"next": i}) for i in range(1, 5)
    ]
    w["w"][:] = -1  # snapshotted at the call
    records = [f.result() for f in futures]
    expected = [(f"s{i}", i, {"next": i}) for i in range(1, 5)]
    assert [(r.name, r.step, r.loop_state) for r in records] == expected
    assert names(run) == ["s3", "s4"]
    assert ckptio.load_state(run.get("s4"))["w"].tolist() == [1.0] * 8
    smp = run.save_weights_for_sampler_async("x", w, step=9).result()
    assert smp.kind == "sampler" and ckptio.load_state(smp)["w"].tolist() == [-1.0] * 8
    failed = run.save_state_async("s4", w, {})
    assert isinstance(failed.exception(), ckptio.CheckpointExistsError)
    assert names(run) == ["s3", "s4", "x"]
    assert all(f.done() for f in [*futures, failed])


def test_async_saves_that_commit_out_of_order_still_apply_retention_in_call_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s1 and s2 commit after s3 and s4 (their writes are held back): every future still
    gets its record, and retention ends as if the saves had finished in call order."""
    import threading
    import time

    from ckptio import _plan

    run = ckptio.Run(tmp_path, keep_last=2, clock=FakeClock(tick=1))
    later_done = threading.Event()
    write = _plan.SavePlan.write

    def slow_early_writes(plan: _plan.SavePlan) -> object:
        if Path(str(plan.path)).name in ("s1", "s2"):
            later_done.wait(10)
            time.sleep(0.05)
        return write(plan)

    monkeypatch.setattr(_plan.SavePlan, "write", slow_early_writes)
    w = weights_for(1)
    futures = [run.save_state_async(f"s{i}", w, {}, step=i) for i in range(1, 5)]
    # s3 and s4 commit first; what follows their commits waits for s1 and s2.
    deadline = time.monotonic() + 10
    weights_dir = tmp_path / "weights"  # made by the first save to get there

    def committed() -> set[str]:
        return set(os.listdir(weights_dir)) if weights_dir.is_dir() else set()

    while {"s3", "s4"} - committed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(f.done() for f in futures)
    later_done.set()
    records = [f.result(timeout=30) for f in futures]
    assert [(r.name, r.step) for r in records] == [(f"s{i}", i) for i in range(1, 5)]
    assert names(run) == ["s3", "s4"]
    assert run._order.in_flight() == set()


# An async save into a run that fails and that nobody looks at is reported at exit, as
# plain async saves are; one whose future was looked at is not.
UNOBSERVED = """
import sys, numpy as np, ckptio
run = ckptio.Run(sys.argv[1])
run.save_state("s", {"w": np.ones(1)}, {})
future = run.save_state_async("s", {"w": np.ones(1)}, {})
if sys.argv[2] == "look":
    assert isinstance(future.exception(), ckptio.CheckpointExistsError)
"""


@pytest.mark.parametrize("look", [False, True])
def test_an_unobserved_async_failure_is_reported_at_exit(tmp_path: Path, look: bool) -> None:
    out = run_python(UNOBSERVED, str(tmp_path), "look" if look else "ignore")
    assert out.returncode == 0, out.stderr
    assert ("failed" in out.stderr) is not look, out.stderr


def test_resume(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path, clock=FakeClock(tick=1))
    assert run.resume() is None
    save(run, "sampler", "sampler-only", 1)
    assert run.resume() is None  # sampler checkpoints hold no optimizer state
    save(run, "state", "a", 1, loop_state={"next": 1})
    save(run, "state", "b", 2, loop_state={"next": 2}, metadata={"m": 1})
    point = run.resume(verify=True)
    assert point is not None
    got = (point.record.name, point.step, point.loop_state, point.metadata)
    assert got == ("b", 2, {"next": 2}, {"m": 1})
    assert point.weights["w"].tolist() == [2.0] * 8 and point.optimizer_state["step"] == 2
    copied = run.resume(copy=True)
    assert copied is not None and copied.weights["b"].tolist() == [2, 3, 4]
    record, *_, loop_state, _ = copied  # unpacks
    assert record == point.record and loop_state == {"next": 2}


def test_cleanup_removes_what_dead_processes_left(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path)
    rec = save(run, "state", "s", 1)
    dead = "2147483646-0123456789abcdef"
    (tmp_path / "weights" / f".s.ckptio-tmp-{dead}").mkdir()
    (rec.path / f".ckptio.json.ckptio-edit-{dead}").write_bytes(b"half")
    # The half edit is no part of the checkpoint: verify passes and names it.
    assert ckptio.open(rec).verify() == [f".ckptio.json.ckptio-edit-{dead}"]
    done = run.cleanup()
    expected = [f".s.ckptio-tmp-{dead}", f".ckptio.json.ckptio-edit-{dead}"]
    assert sorted(p.name for p in done) == sorted(expected)
    assert ckptio.open(rec).verify() == []
    assert run.cleanup() == []


def test_torch_saves_into_a_run(tmp_path: Path) -> None:
    import torch

    import ckptio.torch

    run = ckptio.Run(tmp_path, keep_last=1, clock=FakeClock(tick=1))
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    rec = ckptio.torch.save_state(run, model, opt, sched, name="s1", step=1, loop_state={"next": 1},
                                  extra={"scaler": torch.ones(2)}, ttl=60)  # fmt: skip
    assert isinstance(rec, ckptio.CheckpointRecord) and rec.loop_state == {"next": 1}
    assert rec.expires_at == rec.created + timedelta(seconds=60)
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, 2)
    loaded = ckptio.torch.load_state(run.latest(), fresh, fresh_opt, fresh_sched)  # type: ignore[arg-type]
    assert torch.equal(fresh.weight, model.weight) and loaded.step == 1
    assert torch.equal(loaded.extra["scaler"], torch.ones(2))
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert fresh_sched.state_dict() == sched.state_dict()

    second = ckptio.torch.save_state_async(run, model, opt, name="s2", step=2).result()
    assert names(run) == ["s2"] and second.kind == "state"  # keep_last=1
    smp = ckptio.torch.save_weights_for_sampler(run, model, name="final", step=2, dtype=torch.bfloat16)
    assert smp.kind == "sampler" and ckptio.torch.load_weights(smp)["weight"].dtype == torch.bfloat16

    # A record names one save: after an overwrite, its loop state would not match.
    ckptio.torch.save_state(run, model, opt, name="s2", step=3, overwrite=True)
    with pytest.raises(ckptio.CheckpointNotFoundError, match="replaced"):
        ckptio.torch.load_state(second, fresh, fresh_opt)
    with pytest.raises(TypeError, match="needs name="):
        ckptio.torch.save_state(run, model, opt)
    with pytest.raises(TypeError, match=r"need a ckptio\.Run"):
        ckptio.torch.save_state(tmp_path / "p", model, opt, name="x")
    with pytest.raises(TypeError, match=r"need a ckptio\.Run"):
        ckptio.torch.save_weights_for_sampler(tmp_path / "p", model, ttl=5)
    with pytest.raises(ValueError, match="invalid checkpoint name"):
        ckptio.torch.save_state(run, model, opt, name="../x")
    assert not (tmp_path / "p").exists() and names(run) == ["final", "s2"]


README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_training_loop_runs_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's training loop, with small stand-ins for the user's pieces, run to
    step 60, then run again to step 100: the second run resumes at 60, and the loader
    serves every batch exactly once over both."""
    import re

    import torch

    text = README.read_text()
    start = text.index("## Training loop")
    section = text[start : text.index("\n## ", start)]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    served: list[int] = []

    class MyLoader:
        def __init__(self, dataset: object, seed: int) -> None:
            self.next = 0

        def next_batch(self) -> int:
            served.append(self.next)
            self.next += 1
            return self.next - 1

        def state_dict(self) -> dict[str, int]:
            return {"next": self.next}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.next = state["next"]

    def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: int) -> float:
        opt.zero_grad()
        loss = model(torch.full((1, 2), float(batch))).square().sum()
        loss.backward()
        opt.step()
        return float(loss.detach())

    monkeypatch.chdir(tmp_path)
    for target in (60, 100):
        small = code.replace("10_000", str(target)).replace("% 1000", "% 10").replace("5000", "50")
        names_in = {"MyNet": lambda: torch.nn.Linear(2, 1), "MyLoader": MyLoader, "dataset": None,
                    "train_step": train_step}  # fmt: skip
        exec(compile(small, "README.md", "exec"), names_in)
        run = ckptio.Run(tmp_path / "runs" / "exp1")
        if target == 60:
            assert [r.step for r in run.list("state")] == [40, 50, 60]
            run.delete("final", "sampler")
    assert served == list(range(100))
    assert [r.step for r in run.list("state")] == [50, 80, 90, 100]
    assert run.get("final", "sampler").step == 100
