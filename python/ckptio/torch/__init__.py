"""PyTorch training-loop helpers: save a model, its optimizer, LR scheduler, RNG states
and loop position in one call, and resume bit for bit.

``import ckptio`` never needs torch; only this module does.

- ``save_state(path, model, optimizer, scheduler, extra=...)`` and
  ``load_state(path, model, optimizer, scheduler)``: an exact training resume;
  ``save_state_async`` writes in the background.
- ``save_weights_for_sampler(path, model)`` and ``load_state(path, model)``: inference.
- ``load_weights(path, device=None)``: the weights as torch tensors (zero-copy views).
- ``rng_state()`` / ``set_rng_state(state)``: the RNG states on their own.
- With a ``ckptio.Run`` in place of the path, the saves write the run's checkpoint
  ``name=`` (with ``loop_state=`` and ``ttl=``) and return its ``CheckpointRecord``;
  ``load_state(record, ...)`` loads one.

Layout. ``save_state`` writes an ordinary ``state`` checkpoint, so
``ckptio.load_state_with_optimizer`` and any safetensors reader open it too:

- the weights (``model.safetensors``) are ``model.state_dict()``: parameters and
  persistent buffers under their state-dict names; tied parameters are stored once.
- the optimizer tree (arrays in ``optimizer.safetensors``, exact scalars in
  ``ckptio.json``) is::

      {"ckptio.torch": 1,                        # layout version
       "optimizer": optimizer.state_dict(),      # or None
       "scheduler": scheduler.state_dict(),      # or None
       "rng": {"python": {"version", "state" (uint32[625]), "gauss_next"},
               "numpy": np.random.get_state(legacy=False),
               "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() or None},   # or None (rng=False)
       "extra": extra,                           # your loop state, any tree
       "model_extra": {name: value}}             # non-tensor state-dict entries

Nothing is pickled: every leaf is a tensor, an array, or an int/float/bool/str/None.
Other stateful objects (``GradScaler``, a data loader's ``torch.Generator``) go into
``extra`` as their ``state_dict()`` / ``get_state()`` and are restored by your code.

Example:
    >>> import torch, ckptio.torch, tempfile, os
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> path = os.path.join(tempfile.mkdtemp(), "step-000010")
    >>> _ = ckptio.torch.save_state(path, model, opt, extra={"epoch": 3, "batch": 118}, step=10)
    >>> fresh = torch.nn.Linear(4, 2)
    >>> fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    >>> resumed = ckptio.torch.load_state(path, fresh, fresh_opt)
    >>> resumed.step, resumed.extra, torch.equal(fresh.weight, model.weight)
    (10, {'epoch': 3, 'batch': 118}, True)
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "ckptio.torch needs PyTorch: pip install 'ckptio[torch]' (ckptio itself works without it)"
    ) from e

from .. import api
from .._tensors import is_array, storage_key
from ..async_save import SaveFuture
from ..async_save import save_state_async as save_state_async_core
from ..checkpoint import Checkpoint
from ..errors import CheckpointKindError, CheckpointNotFoundError, CkptioError, FormatError
from ..run import RUN_DEFAULT, CheckpointRecord, Run, Ttl

__all__ = [
    "LoadedState",
    "StateDictMismatchError",
    "load_state",
    "load_weights",
    "rng_state",
    "save_state",
    "save_state_async",
    "save_weights_for_sampler",
    "set_rng_state",
]

LAYOUT_KEY = "ckptio.torch"
LAYOUT_VERSION = 1


class StateDictMismatchError(CkptioError, ValueError):
    """A checkpoint does not fit the model (or optimizer) it is loaded into.

    Raised by ``load_state(..., strict=True)`` before anything is modified. The message
    lists every problem; ``missing_keys``, ``unexpected_keys`` and ``mismatched_keys``
    hold them as lists of names.
    """

    def __init__(
        self,
        message: str,
        *,
        missing_keys: list[str] | None = None,
        unexpected_keys: list[str] | None = None,
        mismatched_keys: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing_keys = missing_keys or []
        self.unexpected_keys = unexpected_keys or []
        self.mismatched_keys = mismatched_keys or []


class LoadedState(NamedTuple):
    """What ``load_state`` returns. With ``strict=True`` the key lists are empty."""

    step: int | None
    extra: Any  # the ``extra`` given to save_state (None for sampler checkpoints)
    metadata: Any
    missing_keys: list[str]  # in the model, not in the checkpoint: left as they were
    unexpected_keys: list[str]  # in the checkpoint, not in the model: ignored
    mismatched_keys: list[str]  # in both, shapes differ: left as they were


# -- RNG ---------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, numpy's global generator, torch's CPU
    generator and, when CUDA is available, every CUDA device's generator, as a tree
    that ``ckptio.save_state`` stores exactly.

    Example:
        >>> import random, ckptio.torch
        >>> state = ckptio.torch.rng_state()
        >>> a = random.random()
        >>> ckptio.torch.set_rng_state(state)
        >>> random.random() == a
        True
    """
    version, internal, gauss_next = random.getstate()
    words: Any = tuple(internal)
    if all(type(w) is int and 0 <= w < 2**32 for w in words):
        words = np.array(words, dtype=np.uint32)  # one small array instead of 625 JSON ints
    cuda = None
    if torch.cuda.is_available():
        cuda = list(torch.cuda.get_rng_state_all())  # CPU uint8 tensors, one per device
    return {
        "python": {"version": version, "state": words, "gauss_next": gauss_next},
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores what ``rng_state()`` returned (also after a save/load round trip).

    CUDA states are restored when CUDA is available; a different device count, or CUDA
    on only one side, restores what matches and warns (that run cannot be bit-exact).

    Example:
        >>> import torch, ckptio.torch
        >>> state = ckptio.torch.rng_state()
        >>> a = torch.rand(2)
        >>> ckptio.torch.set_rng_state(state)
        >>> torch.equal(torch.rand(2), a)
        True
    """
    try:
        py = state["python"]
        words = py["state"]
        words = tuple(int(w) for w in (words.tolist() if hasattr(words, "tolist") else words))
        random.setstate((int(py["version"]), words, py["gauss_next"]))
        np_state = dict(state["numpy"])
        np_state["state"] = {k: np.array(v, copy=True) for k, v in np_state["state"].items()}
        np.random.set_state(np_state)
        torch.set_rng_state(_cpu_bytes(state["torch"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise FormatError(f"invalid RNG state in checkpoint: {type(e).__name__}: {e}") from None
    saved_cuda = state.get("cuda")
    if saved_cuda is None:
        if torch.cuda.is_available():
            warnings.warn(
                "the checkpoint was saved without CUDA: CUDA RNG states not restored",
                RuntimeWarning,
                stacklevel=3,
            )
        return
    if not torch.cuda.is_available():
        warnings.warn(
            f"the checkpoint holds {len(saved_cuda)} CUDA RNG state(s) but CUDA is not available: "
            "not restored",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    count = torch.cuda.device_count()
    if count != len(saved_cuda):
        warnings.warn(
            f"the checkpoint holds {len(saved_cuda)} CUDA RNG state(s), this machine has {count} "
            f"device(s): restoring the first {min(count, len(saved_cuda))}",
            RuntimeWarning,
            stacklevel=3,
        )
    for device, device_state in enumerate(saved_cuda[:count]):
        torch.cuda.set_rng_state(_cpu_bytes(device_state), device=device)


def _cpu_bytes(value: Any) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    if t.dtype != torch.uint8:
        raise TypeError(f"a torch RNG state is a uint8 tensor, got {t.dtype}")
    return t.detach().to("cpu").contiguous().clone()


# -- state dicts -------------------------------------------------------------------
def _state_dict(obj: Any, what: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    if not hasattr(obj, "state_dict"):
        raise TypeError(f"{what} must be a torch.nn.Module or a state dict, got {type(obj).__name__}")
    sd = obj.state_dict()
    if not isinstance(sd, Mapping):
        raise TypeError(f"{what}.state_dict() returned {type(sd).__name__}, not a mapping")
    return sd


def _split_model_state(sd: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors go to the weights; other entries (``get_extra_state``) to the tree."""
    weights, other = {}, {}
    for name, value in sd.items():
        (weights if is_array(value) else other)[name] = value
    return weights, other


def _owned(tree: Any, memo: dict[int, Any] | None = None) -> Any:
    """Copies array leaves out of the mapped file (keeping shared leaves shared), so
    long-lived state such as Adam moments does not pin the checkpoint's files."""
    memo = {} if memo is None else memo
    if isinstance(tree, torch.Tensor | np.ndarray):
        if id(tree) not in memo:
            memo[id(tree)] = tree.clone() if isinstance(tree, torch.Tensor) else tree.copy()
        return memo[id(tree)]
    if isinstance(tree, dict):  # dict and OrderedDict
        return type(tree)((k, _owned(v, memo)) for k, v in tree.items())
    if isinstance(tree, list | tuple):
        return type(tree)(_owned(v, memo) for v in tree)
    return tree


def _shape_of(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _match_model(
    ckpt: Checkpoint, model_extra: Mapping[str, Any], target: Mapping[str, Any]
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(missing, unexpected, mismatched with details, names that can be loaded)."""
    saved: dict[str, tuple[int, ...] | None] = {n: ckpt.info(n).shape for n in ckpt.names}
    saved.update({n: None for n in model_extra})
    missing = [n for n in target if n not in saved]
    unexpected = [n for n in saved if n not in target]
    mismatched, loadable = [], []
    for name, shape in saved.items():
        if name not in target:
            continue
        want = _shape_of(target[name])
        if want != shape:
            got_s = "a non-tensor" if shape is None else f"shape {tuple(shape)}"
            want_s = "a non-tensor" if want is None else f"shape {want}"
            mismatched.append(f"{name} (checkpoint: {got_s}, model: {want_s})")
        else:
            loadable.append(name)
    return missing, unexpected, mismatched, loadable


def _mismatch_error(
    path: Path, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> Exception:
    lines = [f"{path} does not match the model (strict=True); nothing was loaded:"]
    for label, names in (
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
        ("shape mismatch", mismatched),
    ):
        if names:
            lines.append(f"  {label} ({len(names)}): " + ", ".join(names))
    lines.append("Pass strict=False to load only the entries that match.")
    return StateDictMismatchError(
        "\n".join(lines),
        missing_keys=missing,
        unexpected_keys=unexpected,
        mismatched_keys=[m.split(" (", 1)[0] for m in mismatched],
    )


def _check_optimizer_groups(path: Path, optimizer: Any, saved: Any) -> None:
    """The check torch's ``load_state_dict`` makes, done before the model is touched."""
    try:
        saved_sizes = [len(g["params"]) for g in saved["param_groups"]]
    except (KeyError, TypeError):
        raise FormatError(f"{path}: the saved optimizer state has no valid param_groups", file=path) from None
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != sizes:
        raise StateDictMismatchError(
            f"{path}: the optimizer does not match the checkpoint: parameters per group "
            f"saved {saved_sizes}, optimizer has {sizes}; nothing was loaded"
        )


def _layout(path: Path, ckpt: Checkpoint) -> dict[str, Any]:
    empty = {"optimizer": None, "scheduler": None, "rng": None, "extra": None, "model_extra": None}
    if ckpt.kind != "state":
        return empty
    tree = ckpt.optimizer_state()
    if not (isinstance(tree, dict) and LAYOUT_KEY in tree):
        # Saved by ckptio.save_state(path, model.state_dict(), optimizer.state_dict()).
        return {**empty, "optimizer": tree, "raw": True}
    version = tree[LAYOUT_KEY]
    if type(version) is not int or version > LAYOUT_VERSION:
        raise FormatError(
            f"{path}: written by a newer ckptio.torch (layout {version!r}); upgrade ckptio", file=path
        )
    return {**empty, **tree}


def _training_state(
    model: Any, optimizer: Any, scheduler: Any, rng: bool, extra: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, optimizer tree) in the layout of the module docstring."""
    weights, model_extra = _split_model_state(_state_dict(model, "model"))
    tree = {
        LAYOUT_KEY: LAYOUT_VERSION,
        "optimizer": None if optimizer is None else _state_dict(optimizer, "optimizer"),
        "scheduler": None if scheduler is None else _state_dict(scheduler, "scheduler"),
        "rng": rng_state() if rng else None,
        "extra": extra,
        "model_extra": model_extra or None,
    }
    return weights, tree


def _check_target(target: Any, name: str | None, loop_state: Any, ttl: Any) -> None:
    """A Run needs a name; the run-only arguments need a Run."""
    if isinstance(target, Run):
        if name is None:
            raise TypeError("saving into a ckptio.Run needs name=, the checkpoint's name in the run")
        target.path_of(name)  # a bad name is refused before any work
    elif name is not None or loop_state is not None or ttl is not RUN_DEFAULT:
        raise TypeError("name=, loop_state= and ttl= need a ckptio.Run in place of the path")


# -- public API --------------------------------------------------------------------
def save_state(
    path: api.PathLike | Run,
    model: Any,
    optimizer: Any,
    scheduler: Any = None,
    *,
    rng: bool = True,
    extra: Any = None,
    step: int | None = None,
    metadata: Any = None,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
    extra_files: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    name: str | None = None,
    loop_state: Any = None,
    ttl: Ttl = RUN_DEFAULT,
) -> Path | CheckpointRecord:
    """Saves everything an exact resume needs: ``model.state_dict()``,
    ``optimizer.state_dict()``, ``scheduler.state_dict()``, the RNG states (``rng=True``)
    and ``extra`` (your loop state: any tree of dict/list/tuple with tensor, array,
    int, float, bool, str or None leaves). ``model`` may also be a state dict;
    ``optimizer`` may be None. The other arguments are those of ``ckptio.save_state``.

    ``path`` may be a ``ckptio.Run``: the checkpoint ``name`` of the run is saved (its
    ``loop_state`` and ``ttl`` as in ``Run.save_state``, retention applied) and its
    ``CheckpointRecord`` returned.

    Example:
        >>> import torch, ckptio, ckptio.torch, tempfile
        >>> run = ckptio.Run(tempfile.mkdtemp(), keep_last=2)
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rec = ckptio.torch.save_state(run, model, opt, name="s5", step=5, loop_state={"next_batch": 5})
        >>> ckptio.torch.load_state(run.latest(), model, opt).step, rec.loop_state
        (5, {'next_batch': 5})

    Example:
        >>> import torch, ckptio.torch, tempfile, os
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
        >>> path = os.path.join(tempfile.mkdtemp(), "step-000100")
        >>> ckptio.torch.save_state(path, model, opt, sched, extra={"epoch": 1}, step=100).name
        'step-000100'
        >>> ckptio.open(path).step
        100
    """
    _check_target(path, name, loop_state, ttl)
    weights, tree = _training_state(model, optimizer, scheduler, rng, extra)
    kw: dict[str, Any] = dict(
        step=step, metadata=metadata, overwrite=overwrite, durable=durable,
        threads=threads, max_shard_bytes=max_shard_bytes, extra_files=extra_files,
    )  # fmt: skip
    if storage_options is not None:
        kw["storage_options"] = storage_options  # a Run takes its own (Run(..., storage_options=))
    if isinstance(path, Run):
        return path.save_state(str(name), weights, tree, loop_state=loop_state, ttl=ttl, **kw)
    return api.save_state(path, weights, tree, **kw)


def save_state_async(
    path: api.PathLike | Run,
    model: Any,
    optimizer: Any,
    scheduler: Any = None,
    *,
    rng: bool = True,
    extra: Any = None,
    step: int | None = None,
    metadata: Any = None,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
    snapshot: bool = True,
    extra_files: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    name: str | None = None,
    loop_state: Any = None,
    ttl: Ttl = RUN_DEFAULT,
) -> SaveFuture | Future[CheckpointRecord]:
    """``save_state`` in the background (see ``ckptio.save_state_async``): returns once
    the model, optimizer, scheduler, RNG and ``extra`` state are captured, so training
    may go on at once; ``future.result()`` returns the path (with a ``Run``: the
    record) or raises the write's error.

    Example:
        >>> import torch, ckptio.torch, tempfile, os
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> before = model.weight.detach().clone()
        >>> fut = ckptio.torch.save_state_async(os.path.join(tempfile.mkdtemp(), "s"), model, opt)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()  # safe: the checkpoint keeps the values of the call
        >>> torch.equal(ckptio.torch.load_weights(fut.result())["weight"], before)
        True
    """
    _check_target(path, name, loop_state, ttl)
    weights, tree = _training_state(model, optimizer, scheduler, rng, extra)
    kw: dict[str, Any] = dict(
        step=step, metadata=metadata, overwrite=overwrite, durable=durable,
        threads=threads, max_shard_bytes=max_shard_bytes, snapshot=snapshot, extra_files=extra_files,
    )  # fmt: skip
    if storage_options is not None:
        kw["storage_options"] = storage_options  # a Run takes its own (Run(..., storage_options=))
    if isinstance(path, Run):
        return path.save_state_async(str(name), weights, tree, loop_state=loop_state, ttl=ttl, **kw)
    return save_state_async_core(path, weights, tree, **kw)


def load_state(
    path: api.PathLike | CheckpointRecord,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    *,
    rng: bool = True,
    strict: bool = True,
    verify: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> LoadedState:
    """Restores a checkpoint into a freshly built ``model`` (and ``optimizer``,
    ``scheduler``), then the RNG states (``rng=True``). Returns the step, ``extra`` and
    metadata that were saved.

    Everything is checked before anything is modified. ``strict=True``: missing,
    unexpected or mis-shaped entries raise one ``StateDictMismatchError`` listing them
    all; ``strict=False`` loads the entries that match and returns the others' names.
    Values are copied into the model's own tensors (its device and dtype; tied
    parameters stay tied); optimizer state is moved where its parameters live.

    A ``sampler`` checkpoint loads into the model alone: asking it for optimizer or
    scheduler state raises ``CheckpointKindError``. ``verify=True`` checks every
    checksum first. ``path`` may be a run's ``CheckpointRecord``; if another save has
    replaced that checkpoint since, ``CheckpointNotFoundError`` says so (its record,
    loop state included, would no longer match).

    Example:
        >>> import torch, ckptio.torch, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.torch.save_state(path, torch.nn.Linear(3, 1), None, extra={"batch": 7})
        >>> ckptio.torch.load_state(path, torch.nn.Linear(3, 1)).extra
        {'batch': 7}
        >>> ckptio.torch.load_state(path, torch.nn.Linear(3, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ckptio.torch.StateDictMismatchError: ... does not match the model (strict=True); nothing was loaded:
          shape mismatch (2): weight (checkpoint: shape (1, 3), model: shape (2, 3)), bias ...
        Pass strict=False to load only the entries that match.
    """
    if not callable(getattr(model, "load_state_dict", None)):
        raise TypeError(f"model must be a torch.nn.Module (with load_state_dict), got {type(model).__name__}")
    record = path if isinstance(path, CheckpointRecord) else None
    ckpt = Checkpoint(
        path.path if isinstance(path, CheckpointRecord) else path, storage_options=storage_options
    )
    if record is not None and ckpt.checkpoint_id != record.checkpoint_id:
        raise CheckpointNotFoundError(f"{path}: replaced by another save since this record was read")
    if verify:
        ckpt.verify()
    if ckpt.kind != "state" and (optimizer is not None or scheduler is not None):
        asked = "optimizer" if optimizer is not None else "scheduler"
        raise CheckpointKindError(
            f"{path} is a {ckpt.kind!r} checkpoint (weights only): it has no {asked} state. "
            f"Load it with {asked}=None for inference, or resume from a checkpoint written by "
            "ckptio.torch.save_state()."
        )
    layout = _layout(path, ckpt)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None and layout[name] is None:
            how = "ckptio.save_state" if layout.get("raw") and name == "scheduler" else "save_state"
            raise CheckpointKindError(f"{path} was saved without {name} state (by {how}); pass {name}=None")

    model_extra = layout["model_extra"] or {}
    target = model.state_dict()
    missing, unexpected, mismatched, loadable = _match_model(ckpt, model_extra, target)
    if strict and (missing or unexpected or mismatched):
        raise _mismatch_error(path, missing, unexpected, mismatched)
    if optimizer is not None:
        _check_optimizer_groups(path, optimizer, layout["optimizer"])

    weights = ckpt.weights(framework="torch")  # zero-copy views; load_state_dict copies
    values = {n: weights[n] if n in weights else model_extra[n] for n in loadable}
    model.load_state_dict(values, strict=strict)
    del weights, values
    if optimizer is not None:
        optimizer.load_state_dict(_owned(layout["optimizer"]))
    if scheduler is not None:
        scheduler.load_state_dict(_owned(layout["scheduler"]))
    if rng and ckpt.kind == "state":
        if layout["rng"] is None:
            warnings.warn(f"{path} holds no RNG state: RNG not restored", RuntimeWarning, stacklevel=2)
        else:
            set_rng_state(layout["rng"])
    return LoadedState(
        ckpt.step,
        _owned(layout["extra"]),
        ckpt.metadata,
        missing,
        unexpected,
        [m.split(" (", 1)[0] for m in mismatched],
    )


def save_weights_for_sampler(
    path: api.PathLike | Run,
    model: Any,
    *,
    dtype: torch.dtype | None = None,
    metadata: Any = None,
    overwrite: bool = False,
    durable: bool = True,
    threads: int | None = None,
    max_shard_bytes: int | None = None,
    extra_files: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    name: str | None = None,
    step: int | None = None,
    ttl: Ttl = RUN_DEFAULT,
) -> Path | CheckpointRecord:
    """Saves what inference needs: ``model.state_dict()`` (parameters and persistent
    buffers), as a ``sampler`` checkpoint. ``dtype`` casts floating-point tensors
    (e.g. ``torch.bfloat16``); tied parameters stay stored once. ``extra_files``
    (e.g. ``{"config.json": model.config.to_dict()}``) as in
    ``ckptio.save_weights_for_sampler``. With a ``ckptio.Run`` in place of the path,
    saves the run's sampler checkpoint ``name`` (``step``, ``ttl``: see
    ``Run.save_weights_for_sampler``) and returns its record.

    Example:
        >>> import torch, ckptio.torch, tempfile, os
        >>> model = torch.nn.Linear(3, 1)
        >>> path = os.path.join(tempfile.mkdtemp(), "sampler-000100")
        >>> _ = ckptio.torch.save_weights_for_sampler(path, model, dtype=torch.bfloat16)
        >>> ckptio.torch.load_weights(path)["weight"].dtype
        torch.bfloat16
    """
    _check_target(path, name, None, ttl)
    if step is not None and not isinstance(path, Run):
        raise TypeError("step= needs a ckptio.Run in place of the path")
    weights = dict(_state_dict(model, "model"))
    if dtype is not None:
        cast: dict[Any, torch.Tensor] = {}
        for tensor_name, t in weights.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
                key = storage_key(t) or ("id", id(t))
                if key not in cast:
                    cast[key] = t.detach().to(dtype)
                weights[tensor_name] = cast[key]
    kw: dict[str, Any] = dict(
        metadata=metadata, overwrite=overwrite, durable=durable,
        threads=threads, max_shard_bytes=max_shard_bytes, extra_files=extra_files,
    )  # fmt: skip
    if storage_options is not None:
        kw["storage_options"] = storage_options  # a Run takes its own (Run(..., storage_options=))
    if isinstance(path, Run):
        return path.save_weights_for_sampler(str(name), weights, step=step, ttl=ttl, **kw)
    return api.save_weights_for_sampler(path, weights, **kw)


def load_weights(
    path: api.PathLike,
    device: Any = None,
    *,
    verify: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """The weights of either kind of checkpoint as torch tensors, in save order.

    With ``device=None`` they are zero-copy views of the mapped files (writable; writes
    never reach the files); ``device="cuda"`` etc. copies them there. Tied weights come
    back as one tensor under each name. From an ``s3://`` URL they are copies, every
    checksum checked.

    Example:
        >>> import torch, ckptio.torch, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ck")
        >>> _ = ckptio.torch.save_weights_for_sampler(path, {"w": torch.arange(3)})
        >>> ckptio.torch.load_weights(path)
        {'w': tensor([0, 1, 2])}
    """
    return api.load_state(
        path, framework="torch", device=device, verify=verify, storage_options=storage_options
    )
