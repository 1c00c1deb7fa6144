"""ckptio never reads or writes memory the caller does not own: torch tensors whose
storage was shrunk, freed, faked or swapped, objects posing as tensors, and raw
addresses handed to the binding get a clean exception naming the tensor.

Each case runs in a fresh interpreter, so a segfault fails the test instead of killing
pytest; the child prints the outcome as JSON on its last line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import ckptio

_PYTHONPATH = str(Path(ckptio.__file__).resolve().parent.parent)  # this ckptio, in the child too

_PRELUDE = """
import gc, json, os, sys, threading
import numpy as np
import torch
import ckptio
from ckptio import _core
PATH = os.path.join(os.getcwd(), "ck")

def report(fn):
    try:
        value = fn()
    except Exception as e:
        print(json.dumps({"raised": type(e).__name__, "message": str(e), "saved": os.path.exists(PATH)}))
    else:
        print(json.dumps({"returned": repr(value)[:200], "saved": os.path.exists(PATH)}))

def gate_core_save():
    # Holds every write at the binding's door until the returned event is set, so a
    # test can change the tensors between an async call and its write.
    gate, real = threading.Event(), _core.save
    def gated(*args, **kwargs):
        gate.wait()
        return real(*args, **kwargs)
    _core.save = gated
    return gate
"""


def _run(tmp_path: Path, code: str) -> dict[str, Any]:
    """Runs ``code`` after the prelude in a new interpreter; returns its JSON outcome."""
    env = {**os.environ, "PYTHONPATH": _PYTHONPATH, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode < 0:
        death = signal.Signals(-proc.returncode).name
        raise AssertionError(f"child killed by {death}:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_refused(outcome: dict[str, Any], errors: tuple[str, ...], name: str) -> None:
    """Refused with one of ``errors``, naming the tensor, and nothing saved."""
    assert "raised" in outcome, f"not refused: {outcome}"
    assert outcome["raised"] in errors, outcome
    assert name in outcome["message"], outcome
    assert not outcome["saved"], outcome


# -- torch tensors through the public API -------------------------------------------


def test_tensor_whose_storage_was_shrunk_is_refused_not_saved(tmp_path):
    # FSDP frees parameters this way; the tensor still claims 256 KiB.
    out = _run(tmp_path, """
        t = torch.arange(65536, dtype=torch.float32)
        t.untyped_storage().resize_(16)
        report(lambda: ckptio.save_weights_for_sampler(PATH, {"shrunk": t}))
    """)  # fmt: skip
    _assert_refused(out, ("ValueError",), "shrunk")
    assert "outside its storage" in out["message"]


def test_tensor_whose_storage_was_freed_is_refused(tmp_path):
    out = _run(tmp_path, """
        t = torch.ones(1024)
        t.untyped_storage().resize_(0)  # data_ptr() is now 0
        report(lambda: ckptio.save_state(PATH, {"freed": t}, {}))
    """)  # fmt: skip
    _assert_refused(out, ("ValueError",), "freed")


def test_fake_tensor_is_refused(tmp_path):
    out = _run(tmp_path, """
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            fake = torch.ones(1024)
        report(lambda: ckptio.save_weights_for_sampler(PATH, {"fake": fake}))
    """)  # fmt: skip
    _assert_refused(out, ("ValueError", "TypeError"), "fake")


def test_fake_tensor_in_an_async_snapshot_is_refused(tmp_path):
    out = _run(tmp_path, """
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            fake = torch.ones(1024)
        report(lambda: ckptio.save_state_async(PATH, {"w": torch.ones(2)}, {"m": fake}).result())
    """)  # fmt: skip
    _assert_refused(out, ("ValueError", "TypeError"), '"m"')


def test_meta_tensor_is_refused(tmp_path):
    out = _run(tmp_path, """
        report(lambda: ckptio.save_weights_for_sampler(PATH, {"on_meta": torch.empty(64, device="meta")}))
    """)  # fmt: skip
    _assert_refused(out, ("ValueError", "TypeError"), "on_meta")


def test_object_from_a_torch_named_module_is_not_taken_for_a_tensor(tmp_path):
    # A duck type with everything the old module-name check looked for, pointing at
    # an address it does not own.
    out = _run(tmp_path, """
        class Duck:
            dtype, layout, shape, nbytes = torch.float32, torch.strided, (1024,), 4096
            is_cpu, is_meta = True, False
            def untyped_storage(self): return self
            def data_ptr(self): return 16
            def numel(self): return 1024
            def stride(self): return (1,)
            def storage_offset(self): return 0
            def get_device(self): return -1
            def is_contiguous(self): return True
            def is_conj(self): return False
            def is_neg(self): return False
        Duck.__module__ = "torch.duck"
        report(lambda: ckptio.save_weights_for_sampler(PATH, {"duck": Duck()}))
    """)  # fmt: skip
    _assert_refused(out, ("TypeError",), "duck")


def test_tensor_subclass_lying_about_its_memory_is_refused(tmp_path):
    # A real subclass is a tensor, but what its methods say is checked against the
    # storage the binding reads through torch's C type.
    out = _run(tmp_path, """
        class Liar(torch.Tensor):
            def data_ptr(self): return 16
        class StorageLiar(torch.Tensor):
            def untyped_storage(self): return np.zeros(1 << 20, np.uint8)
        Liar.__module__ = StorageLiar.__module__ = "torch.liars"  # as trusted as can be
        outcomes = {}
        for name, cls in (("liar", Liar), ("storage_liar", StorageLiar)):
            t = torch.ones(1024).as_subclass(cls)
            try:
                ckptio.save_weights_for_sampler(PATH, {name: t}, overwrite=True)
                outcomes[name] = "saved"
            except Exception as e:
                outcomes[name] = type(e).__name__ + ": " + str(e)
        print(json.dumps(outcomes))
    """)  # fmt: skip
    assert out["liar"].startswith("ValueError") and '"liar"' in out["liar"], out
    assert "outside its storage" in out["liar"], out
    assert out["storage_liar"].startswith("ValueError") and '"storage_liar"' in out["storage_liar"], out
    assert "not a torch storage" in out["storage_liar"], out


def test_async_save_without_snapshot_saves_the_values_of_a_rebound_parameter(tmp_path):
    # The write starts after the caller rebinds p.data (which frees the old storage,
    # 4 MiB: returned to the system at once): it must save the old values, not read
    # freed memory.
    out = _run(tmp_path, """
        gate = gate_core_save()
        p = torch.nn.Parameter(torch.arange(1 << 20, dtype=torch.float32))
        expected = p.detach().clone()
        fut = ckptio.save_weights_for_sampler_async(PATH, {"p": p}, snapshot=False)
        p.data = torch.zeros(1)
        gc.collect()
        gate.set()
        def check():
            fut.result()
            return bool(torch.equal(ckptio.load_state(PATH)["p"], expected))
        report(check)
    """)  # fmt: skip
    assert out == {"returned": "True", "saved": True}, out


def test_async_save_without_snapshot_refuses_a_storage_freed_before_the_write(tmp_path):
    out = _run(tmp_path, """
        gate = gate_core_save()
        p = torch.nn.Parameter(torch.arange(1 << 20, dtype=torch.float32))
        fut = ckptio.save_state_async(PATH, {"p": p}, {"step": 1}, snapshot=False)
        p.untyped_storage().resize_(0)  # what FSDP does to a parameter between steps
        gate.set()
        report(fut.result)
    """)  # fmt: skip
    _assert_refused(out, ("ValueError",), 'tensor "p"')


# -- the binding: no raw addresses, writable destinations only ----------------------


def test_core_save_refuses_a_raw_address(tmp_path):
    out = _run(tmp_path, """
        groups = [("model", [("raw", "U8", [4096], (16, 4096))], [])]
        report(lambda: _core.save(PATH, "sampler", groups, "{}", _core.SaveOptions()))
    """)  # fmt: skip
    _assert_refused(out, ("TypeError",), "raw")


def test_core_copy_into_refuses_a_raw_source_address(tmp_path):
    out = _run(tmp_path, """
        report(lambda: _core.copy_into([((16, 4096), np.empty(4096, np.uint8))]))
    """)  # fmt: skip
    _assert_refused(out, ("TypeError",), "source")


def test_core_copy_into_never_writes_an_immutable_bytes(tmp_path):
    out = _run(tmp_path, """
        frozen = bytes(range(64))
        payload = id(frozen) + sys.getsizeof(frozen) - len(frozen) - 1  # CPython's bytes layout
        assert (ctypes := __import__("ctypes")).string_at(payload, 64) == frozen
        results = {}
        for how, dest in (("address", (payload, 64)), ("buffer", frozen)):
            try:
                _core.copy_into([(np.zeros(64, np.uint8), dest)])
                results[how] = "copied"
            except (TypeError, ValueError) as e:
                results[how] = type(e).__name__ + ": " + str(e)
        results["intact"] = frozen == bytes(range(64))
        print(json.dumps(results))
    """)  # fmt: skip
    assert out["intact"] is True, out
    assert out["address"].startswith("TypeError") and "destination" in out["address"], out
    assert out["buffer"].startswith("ValueError") and "read-only" in out["buffer"], out


def test_core_read_into_never_writes_an_immutable_bytes(tmp_path):
    out = _run(tmp_path, """
        ckptio.save_weights_for_sampler(PATH, {"w": np.arange(8, dtype=np.uint8)})
        ckpt = _core.open(PATH)
        frozen = bytes(8)
        payload = id(frozen) + sys.getsizeof(frozen) - len(frozen) - 1
        results = {}
        for how, dest in (("address", (payload, 8)), ("buffer", frozen)):
            try:
                ckpt.read_into([(0, dest)])
                results[how] = "read"
            except (TypeError, ValueError) as e:
                results[how] = type(e).__name__ + ": " + str(e)
        results["intact"] = frozen == bytes(8)
        print(json.dumps(results))
    """)  # fmt: skip
    assert out["intact"] is True, out
    assert out["address"].startswith("TypeError") and '"w"' in out["address"], out
    assert out["buffer"].startswith("ValueError") and "read-only" in out["buffer"], out


def test_core_refuses_overlapping_destinations(tmp_path):
    # The core writes destinations in parallel with the GIL released: overlapping
    # ones would be written by two threads at once.
    out = _run(tmp_path, """
        ckptio.save_weights_for_sampler(PATH, {"a": np.ones(32, np.uint8), "b": np.ones(32, np.uint8)})
        dest, ones = np.zeros(64, np.uint8), np.ones(32, np.uint8)
        results = {}
        for how, call in (
            ("copy", lambda: _core.copy_into([(ones, dest[:32]), (ones, dest[16:48])])),
            ("copy_onto_source", lambda: _core.copy_into([(dest[:32], dest[16:48])])),
            ("read", lambda: _core.open(PATH).read_into([(0, dest[:32]), (1, dest[16:48])])),
        ):
            try:
                call()
                results[how] = "done"
            except ValueError as e:
                results[how] = str(e)
        print(json.dumps(results))
    """)  # fmt: skip
    assert all("overlaps" in message for message in out.values()), out
