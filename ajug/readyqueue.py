"""The ready tasks, highest priority first, and by what they need.

A task's priority (``ajug.taskopts``, default 0) orders the ready tasks; among equals, today's
order stands: graph order, and a finished task's dependents (put at the front) before the rest.
The tasks are kept in one FIFO per distinct set of options in the graph (a *bucket*: its tasks
share their priority and their resources), so that a host that cannot hold a bucket's tasks
skips the whole bucket at once. A graph without options (the common case) has one bucket, and
every operation is the deque's own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence


class ReadyQueue:
    """A deque's interface (``append``, ``appendleft``, ``extend``, ``extendleft``,
    ``popleft``) over one deque per bucket. ``bucket_of[i]`` is task ``i``'s bucket (None: all
    in bucket 0); ``priority[k]`` is bucket ``k``'s priority."""

    def __init__(self, bucket_of: Sequence[int] | None = None,
                 priority: Sequence[int] = (0,)) -> None:
        self.bucket_of = bucket_of
        self.buckets: list[deque[int]] = [deque() for _ in priority] or [deque()]
        # buckets by priority, highest first: [(priority, [bucket, ...]), ...]
        levels: dict[int, list[int]] = {}
        for k, p in enumerate(priority):
            levels.setdefault(p, []).append(k)
        self._levels = sorted(levels.items(), reverse=True)
        self._single = bucket_of is None or len(self.buckets) == 1

    def _of(self, i: int) -> deque[int]:
        return self.buckets[0 if self.bucket_of is None else self.bucket_of[i]]

    def append(self, i: int) -> None:
        self._of(i).append(i)

    def appendleft(self, i: int) -> None:
        self._of(i).appendleft(i)

    def extend(self, items: Iterable[int]) -> None:
        if self._single:
            self.buckets[0].extend(items)
            return
        for i in items:
            self._of(i).append(i)

    def extendleft(self, items: Iterable[int]) -> None:
        """As deque.extendleft: each item in turn goes to the front (of its bucket)."""
        if self._single:
            self.buckets[0].extendleft(items)
            return
        for i in items:
            self._of(i).appendleft(i)

    def pop(self, fits: Callable[[int], bool] | None = None) -> int | None:
        """The first ready task of the highest priority whose bucket ``fits(bucket)`` says the
        asker can hold (None: any); None if there is none. Among buckets of one priority, the
        one whose first task comes first in the graph."""
        if self._single:
            b = self.buckets[0]
            if b and (fits is None or fits(0)):
                return b.popleft()
            return None
        for _, ks in self._levels:
            best: deque[int] | None = None
            for k in ks:
                b = self.buckets[k]
                if b and (best is None or b[0] < best[0]) and (fits is None or fits(k)):
                    best = b
            if best is not None:
                return best.popleft()
        return None

    def popper(self, fits: Callable[[int], bool] | None = None) -> Callable[[], int]:
        """``pop(fits)`` as a function that raises IndexError when nothing fits: the deque's
        own ``popleft`` (C speed) for a graph without options."""
        if self._single and fits is None:
            return self.buckets[0].popleft

        def pop() -> int:
            i = self.pop(fits)
            if i is None:
                raise IndexError("no ready task fits")
            return i

        return pop

    def popleft(self) -> int:
        i = self.pop()
        if i is None:
            raise IndexError("pop from an empty ReadyQueue")
        return i

    def waiting_buckets(self) -> list[int]:
        """The buckets that hold ready tasks."""
        return [k for k, b in enumerate(self.buckets) if b]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    def __bool__(self) -> bool:
        return any(self.buckets)

    def __iter__(self) -> Iterator[int]:
        for _, ks in self._levels:
            for k in ks:
                yield from self.buckets[k]
