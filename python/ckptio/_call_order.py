"""Call order for what a ``Run`` does after each commit.

The writes of async saves into a run overlap (several worker threads), so they can
commit in any order. What follows a commit must not: a save's record, expiry and
retention run in the order the saves were called. Otherwise a later save's retention
can remove an earlier checkpoint between its commit and the reading of its record,
and an earlier save that finishes last protects itself from "keep the last N" and
outlives newer ones.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any


class CallOrder:
    """Tickets handed out in call order, each for a key (what the save writes).
    ``turn(ticket)`` waits until every earlier ticket is done; ``done(ticket)`` ends a
    ticket whose save stopped before its turn (and is harmless after it). Every ticket
    must end in one of the two. ``in_flight()``: the keys of the tickets not ended, which
    retention must not remove.

    Example:
        >>> order = CallOrder()
        >>> first, second = order.ticket("a"), order.ticket("b")
        >>> order.done(first)  # the first save failed before its turn
        >>> with order.turn(second):
        ...     print(order.in_flight())
        {'b'}
        >>> order.in_flight()
        set()
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._issued = 0
        self._next = 0
        self._ended: set[int] = set()
        self._keys: dict[int, Any] = {}

    def ticket(self, key: Hashable) -> int:
        """The next ticket, for ``key``. A child made by ``fork`` starts afresh: the
        parent's saves are not its own, and would never end there."""
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            self._issued += 1
            self._keys[self._issued - 1] = key
            return self._issued - 1

    @contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        """Waits for every earlier ticket to end, then runs the block; ends the ticket."""
        with self._cond:
            self._cond.wait_for(lambda: self._next >= ticket)
        try:
            yield
        finally:
            self.done(ticket)

    def done(self, ticket: int) -> None:
        """Ends ``ticket``; later tickets no longer wait for it."""
        with self._cond:
            if ticket < self._next or ticket in self._ended:
                return
            self._keys.pop(ticket, None)
            self._ended.add(ticket)
            while self._next in self._ended:
                self._ended.remove(self._next)
                self._next += 1
            self._cond.notify_all()

    def in_flight(self) -> set[Any]:
        """The keys of the tickets not ended, the one in its turn included."""
        with self._cond:
            return set(self._keys.values())
