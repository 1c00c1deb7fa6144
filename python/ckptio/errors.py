"""The exceptions ckptio raises.

Each subclasses the built-in that callers already catch, so ``except FileNotFoundError``
or ``except ValueError`` keeps working::

    >>> import ckptio
    >>> try:
    ...     ckptio.load_state("/no/such/checkpoint")
    ... except FileNotFoundError as e:
    ...     print(type(e).__name__)
    CheckpointNotFoundError
"""

from __future__ import annotations

import os

__all__ = [
    "CheckpointExistsError",
    "CheckpointKindError",
    "CheckpointNotFoundError",
    "CkptioError",
    "CorruptCheckpointError",
    "FormatError",
    "StorageError",
    "UnverifiedCheckpointWarning",
]


class CkptioError(Exception):
    """Base class of every ckptio error."""


class FormatError(CkptioError, ValueError):
    """A file is not a valid ckptio/safetensors file (bad header, offsets, dtype, paths).

    ``file`` names the offending file.
    """

    def __init__(self, message: str, *, file: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.file = os.fspath(file) if file is not None else None


class CorruptCheckpointError(CkptioError, ValueError):
    """The bytes on disk are not the ones that were saved (a checksum failed).

    ``file`` names the file and ``tensor`` the first bad tensor (None when the damage
    is in a header or the manifest).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike[str] | None = None,
        tensor: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = os.fspath(file) if file is not None else None
        self.tensor = tensor


class CheckpointNotFoundError(CkptioError, FileNotFoundError):
    """No checkpoint at that path (or its parent directory is missing)."""


class CheckpointExistsError(CkptioError, FileExistsError):
    """The target exists; pass ``overwrite=True`` to replace a checkpoint."""


class CheckpointKindError(CkptioError, ValueError):
    """The checkpoint is of the wrong kind, e.g. optimizer state asked of a sampler one."""


class StorageError(CkptioError, OSError):
    """An operating-system call failed; ``errno`` and ``filename`` are set."""


class UnverifiedCheckpointWarning(UserWarning):
    """Tensors were read from files that no ckptio manifest covers (a plain Hugging
    Face safetensors directory): validated, but not checked against any checksum."""
