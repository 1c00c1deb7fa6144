"""The peers: safetensors (numpy and torch), ``torch.save`` / ``torch.load`` (plain and
``mmap=True``) and ``numpy.savez``, each used the way its documentation shows.

Every peer saves the whole state: safetensors and numpy as one flat file of named
tensors, torch as the nested ``{"model": ..., "optimizer": ...}`` dict people pass to
``torch.save``. None of them has an fsync option, so they have no durable-save row:
durability is left to their callers.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .library import (
    LOAD_COLD,
    LOAD_HOT,
    OPEN,
    SAVE,
    VERIFY,
    Library,
    module_version,
)
from .workloads import TrainingState


def _missing(*modules: str) -> str | None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'ckptio[bench]')"
    return None


def _torch_view(array: np.ndarray) -> Any:
    """A torch tensor sharing ``array``'s memory (bf16 through an int16 view)."""
    import torch

    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def torch_payload(state: TrainingState) -> dict[str, Any]:
    """The nested ``{"model": ..., "optimizer": ..., "step": n}`` dict people pass to
    ``torch.save``, of torch views of the state's arrays (no copies).

    Example:
        >>> from .workloads import build_state
        >>> sorted(torch_payload(build_state("llm", 4 << 20)))
        ['model', 'optimizer', 'step']
    """
    optimizer = dict(state.optimizer)
    optimizer["state"] = {
        name: {moment: _torch_view(a) for moment, a in moments.items()}
        for name, moments in state.optimizer["state"].items()
    }
    return {
        "model": {name: _torch_view(a) for name, a in state.weights.items()},
        "optimizer": optimizer,
        "step": state.step,
    }


class SafetensorsNumpy(Library):
    """``safetensors.numpy.save_file`` / ``load_file`` / ``safe_open``.

    Example:
        >>> SafetensorsNumpy.family
        'safetensors'
    """

    name = "safetensors numpy"
    family = "safetensors"
    operations = (SAVE, OPEN, LOAD_HOT, LOAD_COLD)
    note = "one flat file of all tensors"
    FILE = "model.safetensors"
    framework = "np"

    def unavailable(self) -> str | None:
        return _missing("safetensors")

    def version(self) -> str:
        return module_version("safetensors")

    def prepare(self, state: TrainingState) -> None:
        self.tensors: dict[str, Any] = dict(state.flat())

    def _save_file(self, tensors: dict[str, Any], file: Path) -> None:
        from safetensors.numpy import save_file

        save_file(tensors, file)

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        path.mkdir()
        self._save_file(self.tensors, path / self.FILE)
        return {}

    def open(self, path: Path) -> Any:
        from safetensors import safe_open

        handle = safe_open(path / self.FILE, framework=self.framework)
        handle.keys()
        return handle

    def load(self, path: Path) -> Any:
        from safetensors.numpy import load_file

        return load_file(path / self.FILE)


class SafetensorsTorch(SafetensorsNumpy):
    """``safetensors.torch.save_file`` / ``load_file`` on torch views of the state.

    Example:
        >>> SafetensorsTorch.framework
        'pt'
    """

    name = "safetensors torch"
    framework = "pt"

    def unavailable(self) -> str | None:
        return _missing("safetensors", "torch")

    def prepare(self, state: TrainingState) -> None:
        self.tensors = {name: _torch_view(a) for name, a in state.flat()}

    def _save_file(self, tensors: dict[str, Any], file: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, file)

    def load(self, path: Path) -> Any:
        from safetensors.torch import load_file

        return load_file(path / self.FILE)


class TorchSave(Library):
    """``torch.save({"model": ..., "optimizer": ...})`` and ``torch.load``
    (``weights_only=True``, the safe default).

    Example:
        >>> TorchSave.operations
        ('save', 'load hot', 'load cold')
    """

    name = "torch.save/load"
    family = "torch"
    operations = (SAVE, LOAD_HOT, LOAD_COLD)
    note = "the nested state dict in torch's zip format"
    FILE = "checkpoint.pt"

    def unavailable(self) -> str | None:
        return _missing("torch")

    def version(self) -> str:
        return module_version("torch")

    def prepare(self, state: TrainingState) -> None:
        self.payload = torch_payload(state)

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        import torch

        path.mkdir()
        torch.save(self.payload, path / self.FILE)
        return {}

    def load(self, path: Path) -> Any:
        import torch

        return torch.load(path / self.FILE, weights_only=True)


class TorchLoadMmap(TorchSave):
    """``torch.load(..., mmap=True)`` of the file ``torch.save`` wrote: storages are
    mapped, not read; the open row is the same call without touching the data.

    Example:
        >>> TorchLoadMmap.reads_from
        'torch.save/load'
    """

    name = "torch.load mmap"
    operations = (OPEN, LOAD_HOT, LOAD_COLD)
    reads_from = "torch.save/load"
    note = "torch.load(mmap=True, weights_only=True) of torch.save's file"

    def prepare(self, state: TrainingState) -> None:
        pass

    def open(self, path: Path) -> Any:
        return self.load(path)

    def load(self, path: Path) -> Any:
        import torch

        return torch.load(path / self.FILE, weights_only=True, mmap=True)


class NumpySavez(Library):
    """``numpy.savez`` / ``numpy.load`` (an uncompressed zip of ``.npy`` members). Its
    verify is the zip's own CRC-32 check (``zipfile.testzip``).

    Example:
        >>> NumpySavez.FILE
        'checkpoint.npz'
    """

    name = "numpy.savez"
    family = "numpy"
    operations = (SAVE, OPEN, LOAD_HOT, LOAD_COLD, VERIFY)
    note = "zip of .npy members; verify = zipfile CRC-32 (testzip); bf16 (mixed) comes back as void '|V2'"
    FILE = "checkpoint.npz"

    def version(self) -> str:
        return np.__version__

    def prepare(self, state: TrainingState) -> None:
        self.tensors = dict(state.flat())

    def save(self, path: Path, durable: bool) -> dict[str, float]:
        path.mkdir()
        with open(path / self.FILE, "wb") as f:
            np.savez(f, **self.tensors)  # type: ignore[arg-type]  # names are arrays, not allow_pickle
        return {}

    def open(self, path: Path) -> Any:
        archive = np.load(path / self.FILE)
        archive.files  # noqa: B018 - what a caller does first: list the arrays
        return archive

    def load(self, path: Path) -> Any:
        with np.load(path / self.FILE) as archive:
            return {name: archive[name] for name in archive.files}

    def verify(self, path: Path) -> None:
        with zipfile.ZipFile(path / self.FILE) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"{path / self.FILE}: CRC mismatch in {bad}")
