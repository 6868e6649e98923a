"""Leases handed from the worker's network thread to its main thread."""

from __future__ import annotations

import threading
from collections import deque

from .worksession import Lease


class Inbox:
    """Leases handed from the network thread to the main thread. A deque (appends and pops
    are atomic) and an event: one lock operation per reply instead of two per lease, which is
    what ``queue.Queue`` costs."""

    def __init__(self) -> None:
        self.items: deque[Lease | None] = deque()
        self.ready = threading.Event()

    def put(self, *items: Lease | None) -> None:
        self.items.extend(items)
        self.ready.set()

    def get_nowait(self) -> Lease | None:
        """The next lease; IndexError when there is none."""
        return self.items.popleft()

    def get(self) -> Lease | None:
        while True:
            try:
                return self.items.popleft()
            except IndexError:
                pass
            self.ready.wait()
            self.ready.clear()  # then look again: a put between the two is in ``items``

    def waits_on(self, key: str) -> bool:
        """Whether a follow-on lease queued here waits on ``key`` (its ``after``)."""
        try:
            return any(lz is not None and key in lz.after for lz in list(self.items))
        except RuntimeError:  # changed while copied, by the network thread: say yes
            return True

    def qsize(self) -> int:
        return len(self.items)
