"""Retention and TTL of a ``ckptio.Run``.

- Tables of ``keep_last`` / ``keep_every`` scenarios, alone and together, for each kind:
  what is left after each save, and that one kind's retention leaves the other alone.
- The newest state checkpoint, and the checkpoint a save just wrote, are never deleted.
- A refused save (bad input) and a failed save (file size limit; a directory the
  process may not write) delete nothing, expired checkpoints included.
- TTL with a fake clock: expiry at ``expires_at``, ``set_ttl`` to a new value and to
  None (persisted in the manifest), ``delete_expired``, and every save expiring others.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from _faults import run_python
from _runs import FakeClock, names, save, visible

import ckptio
from ckptio import _core

# (keep_last, keep_every, steps saved in this order, names left); checkpoints are
# named s<step>, or n<i> when their step is None.
SCENARIOS = {
    "off": (None, None, [1, 2, 3, 4, 5], ["s1", "s2", "s3", "s4", "s5"]),
    "last-1": (1, None, [1, 2, 3, 4], ["s4"]),
    "last-2": (2, None, [1, 2, 3, 4, 5, 6], ["s5", "s6"]),
    "last-more-than-saved": (10, None, [1, 2, 3], ["s1", "s2", "s3"]),
    "every-3-alone": (None, 3, [1, 2, 3, 4, 5, 6, 7], ["s3", "s6", "s7"]),  # + the newest
    "every-3-ending-on-one": (None, 3, [1, 2, 3, 4, 5, 6], ["s3", "s6"]),
    "last-2-every-3": (2, 3, [1, 2, 3, 4, 5, 6, 7, 8], ["s3", "s6", "s7", "s8"]),
    "last-3-every-20": (3, 20, [10, 20, 30, 40, 50, 60, 70], ["s20", "s40", "s50", "s60", "s70"]),
    "last-1-every-1": (1, 1, [1, 2, 3], ["s1", "s2", "s3"]),
    "step-none-never-a-multiple": (1, 3, [None, 3, None, 6, None], ["s3", "s6", "n4"]),
    "newest-by-save-order-not-step": (2, None, [5, 1, 3], ["s1", "s3"]),
    "step-0-is-a-multiple": (1, 4, [0, 1, 2, 3, 5], ["s0", "s5"]),
}


def _name(step: int | None, i: int) -> str:
    return f"n{i}" if step is None else f"s{step}"


def _expected_after_each_save(keep_last, keep_every, steps):
    """The names left after each save, by the rules (independent of the code)."""
    left: list[tuple[str, int | None]] = []
    out = []
    for i, step in enumerate(steps):
        left.append((_name(step, i), step))
        if keep_last is not None or keep_every is not None:
            last = {n for n, _ in left[-keep_last:]} if keep_last else set()
            every = {n for n, s in left if keep_every and s is not None and s % keep_every == 0}
            left = [(n, s) for n, s in left if n in last | every | {left[-1][0]}]
        out.append(sorted(n for n, _ in left))
    return out


@pytest.mark.parametrize("kind", ["state", "sampler"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_retention_table(tmp_path: Path, scenario: str, kind: str) -> None:
    keep_last, keep_every, steps, final = SCENARIOS[scenario]
    run = ckptio.Run(tmp_path / "run", keep_last=keep_last, keep_every=keep_every, clock=FakeClock(tick=1))
    other = "sampler" if kind == "state" else "state"
    for name in ("other-1", "other-2", "other-3"):  # the other kind, untouched by this kind's retention
        save(ckptio.Run(run.root, clock=FakeClock()), other, name, 1)
    expected = _expected_after_each_save(keep_last, keep_every, steps)
    assert sorted(final) == expected[-1], "the table disagrees with the rules"
    for i, step in enumerate(steps):
        save(run, kind, _name(step, i), step)
        assert sorted(names(run, kind)) == expected[i], f"after saving step {step}"
    assert names(run, kind) == final  # oldest first
    assert names(run, other) == ["other-1", "other-2", "other-3"]
    for r in run.list():
        ckptio.verify(r.path)
    kind_dir = run.root / ("weights" if kind == "state" else "sampler_weights")
    assert sorted(visible(kind_dir)) == sorted(final)
    assert not any(p.name.startswith(".") for p in kind_dir.iterdir())


def test_retention_never_deletes_the_newest_state_checkpoint(tmp_path: Path) -> None:
    """keep_every alone keeps only multiples, yet the newest survives each save, and a
    save with an older creation time (a clock that went back) does not lose the newer."""
    clock = FakeClock(tick=1)
    run = ckptio.Run(tmp_path, keep_every=10, clock=clock)
    save(run, "state", "s7", 7)
    assert names(run) == ["s7"]
    save(run, "state", "s8", 8)
    assert names(run) == ["s8"]
    clock.advance(-100)  # NTP stepped the clock back: the new save is "older"
    save(run, "state", "s9", 9)
    assert names(run) == ["s9", "s8"], "neither the newest nor the one just written may go"
    clock.advance(200)
    save(run, "state", "s10", 10)
    assert names(run) == ["s10"]


# -- a refused or failed save deletes nothing -------------------------------------------
def _doomed_run(root: Path) -> tuple[ckptio.Run, list[str]]:
    """A run where the next successful save would delete: 3 state checkpoints with
    keep_last=1, one of them expired, and an expired sampler checkpoint."""
    clock = FakeClock(tick=1)
    plain = ckptio.Run(root, clock=clock)
    save(plain, "state", "s1", 1, ttl=30)
    save(plain, "state", "s2", 2)
    save(plain, "state", "s3", 3)
    save(plain, "sampler", "x1", 1, ttl=30)
    clock.advance(60)
    before = sorted(f"{r.kind}/{r.name}" for r in plain.list())
    return ckptio.Run(root, keep_last=1, clock=clock), before


def _listing(run: ckptio.Run) -> list[str]:
    return sorted(f"{r.kind}/{r.name}" for r in run.list())


REFUSED = {
    "bad-name": lambda run: run.save_state("../evil", {"w": np.ones(2)}, {}),
    "hidden-name": lambda run: run.save_state(".s4", {"w": np.ones(2)}, {}),
    "bad-weights": lambda run: run.save_state("s4", {"w": object()}, {}),
    "bad-optimizer-leaf": lambda run: run.save_state("s4", {"w": np.ones(2)}, {"f": len}),
    "array-in-loop-state": lambda run: run.save_state("s4", {"w": np.ones(2)}, {}, loop_state=[np.ones(2)]),
    "bad-ttl": lambda run: run.save_state("s4", {"w": np.ones(2)}, {}, ttl=-1),
    "bad-step": lambda run: run.save_state("s4", {"w": np.ones(2)}, {}, step="4"),
    "exists": lambda run: run.save_state("s2", {"w": np.ones(2)}, {}),
    "exists-async": lambda run: run.save_state_async("s2", {"w": np.ones(2)}, {}).result(),
    "sampler-exists": lambda run: run.save_weights_for_sampler("x1", {"w": np.ones(2)}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_save_deletes_nothing(tmp_path: Path, case: str) -> None:
    run, before = _doomed_run(tmp_path)
    with pytest.raises((ValueError, TypeError, ckptio.CheckpointExistsError)):
        REFUSED[case](run)
    assert _listing(run) == before
    save(run, "state", "s4", 4)  # the control: a save that succeeds does delete
    assert _listing(run) == ["state/s4"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="ckptio-run-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


# The child builds the same run (same fake clock) and tries one save; it imports and
# warms up everything first, since dropping root may lose access to the interpreter.
FAILED_SAVE = """
import json, os, resource, signal, sys, tempfile
import numpy as np, ckptio
from _runs import FakeClock, save
a = json.loads(sys.argv[1])
with tempfile.TemporaryDirectory() as d:
    save(ckptio.Run(d, keep_last=1), "state", "warm", 1)
    ckptio.Run(d).delete("warm")
clock = FakeClock(tick=1)
clock.advance(a["advance"])
run = ckptio.Run(a["root"], keep_last=1, clock=clock)
if a["how"] == "nobody":
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
else:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
try:
    save(run, "state", "s4", 4)
    print("RESULT saved")
except ckptio.StorageError as e:
    print("RESULT", e.errno)
"""


@pytest.mark.parametrize("how", ["nobody", "file-size-limit"])
def test_a_failed_save_deletes_nothing(shared_dir: Path, how: str) -> None:
    """``nobody`` may write the sampler directory (where an expired checkpoint waits)
    but not the state one, so the save fails while a delete would succeed; with a file
    size limit the save fails while every delete would succeed."""
    root = shared_dir / "run"
    run, before = _doomed_run(root)
    for d in (root, root / "sampler_weights"):
        os.chown(d, 65534, 65534)
    out = run_python(FAILED_SAVE, json.dumps({"root": str(root), "how": how, "advance": 63}))
    assert out.returncode == 0, out.stderr
    result = out.stdout.split("RESULT ")[-1].strip()
    assert result in ("13", "27"), out.stdout  # EACCES, EFBIG
    assert _listing(run) == before
    assert not [p for p in (root / "weights").iterdir() if p.name.startswith(".")]


# -- TTL ----------------------------------------------------------------------------------
def test_ttl_expiry_with_a_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    run = ckptio.Run(tmp_path, ttl=timedelta(minutes=1), clock=clock)
    a = save(run, "state", "a", 1)  # the run's default: 60 s
    b = save(run, "state", "b", 2, ttl=None)  # never
    c = save(run, "sampler", "c", 3, ttl=3600)
    assert a.expires_at == a.created + timedelta(seconds=60) and a.created == clock.now
    assert b.expires_at is None and c.expires_at == clock.now + timedelta(hours=1)
    assert a.created.tzinfo is not None and a.created.utcoffset() == timedelta(0)
    clock.advance(59.999)
    assert run.delete_expired() == []
    clock.advance(0.001)  # expires_at itself counts as expired
    assert [r.name for r in run.delete_expired()] == ["a"]
    assert names(run) == ["b", "c"]
    clock.advance(3600)
    assert [(r.kind, r.name) for r in run.delete_expired()] == [("sampler", "c")]
    assert names(run) == ["b"] and run.delete_expired() == []


def test_set_ttl_to_a_new_value_and_to_none(tmp_path: Path) -> None:
    clock = FakeClock()
    run = ckptio.Run(tmp_path, clock=clock)
    rec = save(run, "state", "s", 5, ttl=10, loop_state={"epoch": 2, "next": (3, 0.1)}, metadata={"lr": 0.5})
    clock.advance(5)
    longer = run.set_ttl("s", 3600)
    assert longer.expires_at == clock.now + timedelta(hours=1)  # from now, not from the save
    assert (longer.created, longer.loop_state, longer.metadata, longer.step) == (
        rec.created, {"epoch": 2, "next": (3, 0.1)}, {"lr": 0.5}, 5,
    )  # fmt: skip
    assert longer.checkpoint_id == rec.checkpoint_id
    # Persisted: a new Run (another process) reads it from the manifest.
    assert ckptio.Run(tmp_path).get("s").expires_at == longer.expires_at
    clock.advance(60)
    assert run.delete_expired() == []
    forever = run.set_ttl("s", None)
    assert forever.expires_at is None and ckptio.Run(tmp_path).get("s").expires_at is None
    clock.advance(10**9)
    assert run.delete_expired() == [] and names(run) == ["s"]
    run.set_ttl("s", 1)
    clock.advance(1)
    assert [r.name for r in run.delete_expired()] == ["s"]


def test_set_ttl_rewrites_only_the_run_entry(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path, clock=FakeClock())
    rec = save(run, "state", "s", 7, metadata={"big": 2**100, "x": 0.1, "s": "é"}, ttl=99)
    before = json.loads((rec.path / "ckptio.json").read_text())["manifest"]
    tensor_files = {p.name: p.read_bytes() for p in rec.path.iterdir() if p.name != "ckptio.json"}
    held = ckptio.load_state_with_optimizer(rec)
    run.set_ttl("s", None)
    after = json.loads((rec.path / "ckptio.json").read_text())["manifest"]
    assert after["user"].pop("run")["expires_at"] is None
    assert before["user"].pop("run")["expires_at"] is not None
    assert after == before  # files, tensors, checkpoint id, the rest of the user section
    assert {p.name: p.read_bytes() for p in rec.path.iterdir() if p.name != "ckptio.json"} == tensor_files
    assert sorted(p.name for p in rec.path.iterdir()) == sorted([*tensor_files, "ckptio.json"])
    ckptio.verify(rec)
    assert held.weights["w"].tolist() == [7.0] * 8 and held.optimizer_state["step"] == 7


def test_every_save_deletes_expired_checkpoints_of_both_kinds(tmp_path: Path) -> None:
    clock = FakeClock()
    run = ckptio.Run(tmp_path, clock=clock)
    save(run, "state", "old-state", 1, ttl=10)
    save(run, "sampler", "old-sampler", 1, ttl=10)
    save(run, "sampler", "kept", 1, ttl=11)
    clock.advance(10)
    save(run, "sampler", "new", 2)
    assert sorted(f"{r.kind}/{r.name}" for r in run.list()) == ["sampler/kept", "sampler/new"]


def test_an_expired_checkpoint_is_listed_until_deleted(tmp_path: Path) -> None:
    clock = FakeClock()
    run = ckptio.Run(tmp_path, clock=clock)
    save(run, "state", "s", 1, ttl=1)
    clock.advance(5)
    assert run.latest() is not None and run.latest().expires_at < clock.now  # type: ignore[union-attr]


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "1h", True, timedelta(0)])
def test_invalid_ttls_are_refused(tmp_path: Path, ttl: object) -> None:
    with pytest.raises((TypeError, ValueError), match="ttl"):
        ckptio.Run(tmp_path, ttl=ttl)
    run = ckptio.Run(tmp_path)
    save(run, "state", "s", 1)
    with pytest.raises((TypeError, ValueError), match="ttl"):
        run.set_ttl("s", ttl)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match="ttl"):
        save(run, "state", "t", 1, ttl=ttl)
    assert names(run) == ["s"] and run.get("s").expires_at is None


@pytest.mark.parametrize("keep", [0, -1, 1.5, True, "2"])
def test_invalid_retention_is_refused(tmp_path: Path, keep: object) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        ckptio.Run(tmp_path, keep_last=keep)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_every"):
        ckptio.Run(tmp_path, keep_every=keep)  # type: ignore[arg-type]


def test_a_clock_must_be_timezone_aware(tmp_path: Path) -> None:
    from datetime import datetime

    run = ckptio.Run(tmp_path, clock=lambda: datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="timezone-aware"):
        save(run, "state", "s", 1)
    assert not (tmp_path / "weights").exists()


def test_set_ttl_of_a_missing_checkpoint(tmp_path: Path) -> None:
    run = ckptio.Run(tmp_path)
    save(run, "state", "s", 1)
    with pytest.raises(ckptio.CheckpointNotFoundError, match="no sampler checkpoint named 's'"):
        run.set_ttl("s", 60, kind="sampler")


def test_set_ttl_never_writes_an_older_checkpoints_entry_into_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is replaced between set_ttl's read and its write: the stale entry
    (created, loop state of the old save) is refused by the core, and set_ttl starts
    over on the new checkpoint."""
    run = ckptio.Run(tmp_path, clock=FakeClock(tick=1))
    old = save(run, "state", "s", 1, loop_state={"next": 1})
    new = save(run, "state", "s", 2, loop_state={"next": 2}, overwrite=True)
    with pytest.raises(ckptio.CheckpointNotFoundError, match="replaced"):
        _core.update_user_section(new.path, "run", "null", expect_id=old.checkpoint_id)
    assert run.get("s") == new
    reads = iter([old])
    real_get = ckptio.Run.get
    monkeypatch.setattr(ckptio.Run, "get", lambda self, *a: next(reads, None) or real_get(self, *a))
    rec = run.set_ttl("s", 60)
    assert (rec.loop_state, rec.created, rec.checkpoint_id) == ({"next": 2}, new.created, new.checkpoint_id)
    assert rec.expires_at is not None


def test_a_delete_that_fails_after_a_save_warns(shared_dir: Path) -> None:
    """The save succeeds, so it returns its record; what it could not delete (here an
    expired state checkpoint ``nobody`` may not remove) is named in a warning."""
    root = shared_dir / "run"
    _doomed_run(root)
    for d in (root, root / "sampler_weights"):
        os.chown(d, 65534, 65534)
    out = run_python(WARNING_CHILD, str(root))
    assert out.returncode == 0, out.stderr
    assert "RESULT saved x2" in out.stdout, out.stdout
    assert "RuntimeWarning" in out.stderr and "cleaning up the run failed" in out.stderr, out.stderr
    assert "weights/s1" in out.stderr and "sampler_weights/x1" in out.stderr
    assert out.stderr.startswith("test_run_retention_child:1: RuntimeWarning")  # the caller's line
    # x1 was moved aside (then its files could not be removed): no longer listed.
    assert _listing(ckptio.Run(root)) == ["sampler/x2", "state/s1", "state/s2", "state/s3"]


WARNING_CHILD = """
import os, sys, tempfile
import numpy as np, ckptio
from _runs import FakeClock, save
with tempfile.TemporaryDirectory() as d:
    save(ckptio.Run(d, keep_last=1), "state", "warm", 1)
    ckptio.Run(d).delete("warm")
clock = FakeClock(tick=1)
clock.advance(70)
run = ckptio.Run(sys.argv[1], clock=clock)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
code = 'rec = run.save_weights_for_sampler("x2", {"w": np.ones(2)}, step=2)'
exec(compile(code, "test_run_retention_child", "exec"))
print("RESULT saved", rec.name)
"""
