"""ckptio: fast, verified, crash-safe training checkpoints.

Two kinds of checkpoint, as in the Tinker training API:

- ``save_weights_for_sampler(path, weights)``: weights only, inference-ready.
- ``save_state(path, weights, optimizer_state, step=...)``: weights + optimizer state,
  for an exact resume.
- ``Run(root, keep_last=..., ttl=...)``: named checkpoints of a training run, with
  list, delete, TTL, retention and ``resume()``.

Weights are stored as safetensors files that any safetensors reader opens; a
``ckptio.json`` manifest holds a checksum per tensor and the optimizer tree.

Example:
    >>> import numpy as np, ckptio, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "step-1")
    >>> _ = ckptio.save_state(path, {"w": np.ones(3, np.float32)}, {"step": 1}, step=1)
    >>> ckptio.verify(path)  # every byte checked; lists files no checksum covers
    []
    >>> ckptio.load_state(path)["w"]
    array([1., 1., 1.], dtype=float32)
"""

from .api import (
    TrainingState,
    cleanup,
    load_state,
    load_state_with_optimizer,
    open,
    save_state,
    save_weights_for_sampler,
    verify,
)
from .async_save import (
    SaveFuture,
    release_staging_memory,
    save_state_async,
    save_weights_for_sampler_async,
    wait_for_saves,
)
from .checkpoint import Checkpoint, TensorInfo
from .errors import (
    CheckpointExistsError,
    CheckpointKindError,
    CheckpointNotFoundError,
    CkptioError,
    CorruptCheckpointError,
    FormatError,
    StorageError,
    UnverifiedCheckpointWarning,
)
from .hf import export, import_checkpoint
from .run import CheckpointRecord, ResumePoint, Run
from .transfer import copy

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointExistsError",
    "CheckpointKindError",
    "CheckpointNotFoundError",
    "CheckpointRecord",
    "CkptioError",
    "CorruptCheckpointError",
    "FormatError",
    "ResumePoint",
    "Run",
    "SaveFuture",
    "StorageError",
    "TensorInfo",
    "TrainingState",
    "UnverifiedCheckpointWarning",
    "cleanup",
    "copy",
    "export",
    "import_checkpoint",
    "load_state",
    "load_state_with_optimizer",
    "open",
    "release_staging_memory",
    "save_state",
    "save_state_async",
    "save_weights_for_sampler",
    "save_weights_for_sampler_async",
    "verify",
    "wait_for_saves",
]
