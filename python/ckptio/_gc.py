"""Pausing Python's cyclic garbage collector around bulk object creation.

Building the index of a checkpoint with thousands of tensors creates tens of thousands
of small containers; that can trigger a full collection over every object of the
process (tens to hundreds of ms once torch is imported), for objects that can hold no
cycles. Pausing the collector for those few milliseconds removes the pause.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disables the cyclic collector inside the block, restoring its state after.

    Example:
        >>> with gc_paused():
        ...     rows = [(i, [i]) for i in range(10_000)]
        >>> gc.isenabled()
        True
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
