"""The ready tasks, highest priority first.

A task's priority (``ajug.taskopts``, default 0) orders the ready tasks; among equals, today's
order stands: graph order, and a finished task's dependents (put at the front) before the rest.
One FIFO per priority present in the graph keeps both cheap: a graph without priorities (the
common case) has one bucket, and every operation is the deque's own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence


class ReadyQueue:
    """A deque's interface (``append``, ``appendleft``, ``extend``, ``extendleft``,
    ``popleft``) over one deque per priority. ``prio_of(i)`` is task ``i``'s priority; None:
    every task has priority 0."""

    def __init__(self, prio_of: Sequence[int] | None = None) -> None:
        self.prio_of = prio_of
        self._buckets: dict[int, deque[int]] = {0: deque()}
        self._order: list[int] = [0]  # priorities present, highest first

    @classmethod
    def for_priorities(cls, option_prio: Sequence[int], opt_of: Sequence[int] | None) -> ReadyQueue:
        """From a graph's distinct options' priorities and each task's option index."""
        if opt_of is None or not any(option_prio):
            return cls()
        return cls([option_prio[k] for k in opt_of])

    def _bucket(self, i: int) -> deque[int]:
        p = 0 if self.prio_of is None else self.prio_of[i]
        b = self._buckets.get(p)
        if b is None:
            b = self._buckets[p] = deque()
            self._order.append(p)
            self._order.sort(reverse=True)
        return b

    def append(self, i: int) -> None:
        self._bucket(i).append(i)

    def appendleft(self, i: int) -> None:
        self._bucket(i).appendleft(i)

    def extend(self, items: Iterable[int]) -> None:
        if self.prio_of is None:
            self._buckets[0].extend(items)
            return
        for i in items:
            self._bucket(i).append(i)

    def extendleft(self, items: Iterable[int]) -> None:
        """As deque.extendleft: each item in turn goes to the front (of its priority's FIFO)."""
        if self.prio_of is None:
            self._buckets[0].extendleft(items)
            return
        for i in items:
            self._bucket(i).appendleft(i)

    def popleft(self) -> int:
        for p in self._order:
            b = self._buckets[p]
            if b:
                return b.popleft()
        raise IndexError("pop from an empty ReadyQueue")

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def __bool__(self) -> bool:
        return any(self._buckets.values())

    def __iter__(self) -> Iterator[int]:
        for p in self._order:
            yield from self._buckets[p]

    def clear(self) -> None:
        for b in self._buckets.values():
            b.clear()
