"""Starting a ``Scheduler``: from what the store holds, and past a barrier from the Scheduler
of the graph before it. A part of ``Scheduler`` (a mixin: the same state)."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable
from itertools import compress
from typing import TYPE_CHECKING

from .taskstate import DONE, READY, WAITING

if TYPE_CHECKING:
    from array import array

    from .graph import Graph
    from .readyqueue import ReadyQueue
    from .scheduler import Scheduler
    from .taskstate import WorkerInfo


class RunStart:
    """Mixed into ``Scheduler``: these are the attributes it uses."""

    graph: Graph
    state: bytearray
    remaining: array[int]
    ready: ReadyQueue
    counts: list[list[int]]
    workers: dict[str, WorkerInfo]
    unverified: array[int]
    vanish_count: dict[int, int]
    _vanished: set[int]
    _ndeps: array[int]
    reclaimed: int
    completed: int
    duplicates: int
    vanished: int
    recomputed: int
    resume_until: float

    if TYPE_CHECKING:
        def lost_results(self, idxs: Iterable[int]) -> list[int]: ...

    def start(self, done: Iterable[bool], confirm: bool = False) -> None:
        """Mark what the store already holds as done, then compute the ready set. ``confirm``:
        those results are this run's too (a coordinator restarted in the middle of a run), to
        be confirmed present before the run is called finished (``unverified``)."""
        st, fn, counts, n = self.state, self.graph.fn, self.counts, len(self.state)
        done_idx = list(compress(range(n), done))
        for i in done_idx:
            st[i] = DONE
        if confirm:
            self.unverified.extend(done_idx)
        for f, c in Counter(map(fn.__getitem__, done_idx)).items():
            counts[f][WAITING] -= c
            counts[f][DONE] += c
        ds, di, rem = self.graph.dep_start, self.graph.dep_idx, self.remaining
        ready: list[int] = []
        no_deps: Iterable[int]
        if done_idx:
            no_deps = (i for i in range(n) if not self._ndeps[i] and st[i] != DONE)
        elif not self.graph.dep_idx:  # no task has inputs
            no_deps = range(n)
        else:
            no_deps = compress(range(n), map(operator.not_, self._ndeps))
        ready.extend(no_deps)
        for i in compress(range(n), self._ndeps):
            if st[i] == DONE:
                continue
            r = 0
            for p in range(ds[i], ds[i + 1]):
                if st[di[p]] != DONE:
                    r += 1
            rem[i] = r
            if r == 0:
                ready.append(i)
        ready.sort()  # graph order
        if len(ready) == n:  # nothing done, no inputs: a big graph of independent tasks
            st[:] = bytes((READY,)) * n
            by_fn = Counter(fn)
        else:
            for i in ready:
                st[i] = READY
            by_fn = Counter(map(fn.__getitem__, ready))
        for f, c in by_fn.items():
            counts[f][WAITING] -= c
            counts[f][READY] += c
        self.ready.extend(ready)

    def start_after_barrier(self, done: list[bool], old: Scheduler) -> list[int]:
        """Past a barrier the graph is new, the run is not: start from ``done`` (what the
        store holds) and carry over from ``old`` (``inherit``). A result done before the
        barrier and missing now (a redis that lost its data, a deleted or damaged file) is
        computed again, like any result that vanishes: those tasks are returned."""
        old_index, old_state = old.graph.index, old.state
        gone = []
        for i, (k, d) in enumerate(zip(self.graph.keys, done)):
            if not d and (j := old_index.get(k)) is not None and old_state[j] == DONE:
                gone.append(i)
                done[i] = True
        self.start(done)
        self.inherit(old)
        if gone:
            self.lost_results(gone)
        return gone

    def inherit(self, old: Scheduler, old_graph: Graph | None = None) -> None:
        """Past a barrier the graph is new, the run is not: same workers (holding nothing: the
        coordinator reloads only when nothing runs), same counters, the same resume grace, and
        each task's count of vanished results, by key."""
        self.workers = old.workers
        for w in self.workers.values():
            w.leases = set()
            w.frontier.clear()
        self.reclaimed, self.completed = old.reclaimed, old.completed
        self.duplicates = old.duplicates
        self.vanished, self.recomputed = old.vanished, old.recomputed
        self.resume_until = old.resume_until
        index, keys = self.graph.index, (old_graph or old.graph).keys
        for i, n in old.vanish_count.items():
            j = index.get(keys[i])
            if j is not None:
                self.vanish_count[j] = n
                if i in old._vanished:
                    self._vanished.add(j)
