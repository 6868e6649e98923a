"""The scheduler's decisions when something is lost: a result that vanished from the store, a
worker that died. A part of ``Scheduler`` (a mixin: the same state, the same rules), kept apart
because it is one idea of its own.

Results that vanish (a redis that lost its data, a deleted or damaged file): a worker that finds
an input missing reports it (``input_missing``), and the coordinator checks every result of the
graph before it calls the run finished, when anything was done since the start-up scan
(``unverified``, ``done_indices``, then ``lost_results``). Either way the
input is DONE no more: it is ready again, its dependents wait for it, and nothing counts as an
attempt. A result that vanishes ``MAX_VANISHED`` times is failed as a store problem instead of
being computed for ever.

Workers that die: each task a dead worker was running counts an attempt, unless the worker's
supervisor says that it was killed from outside (``worker_exited``; see ``ajug.supervisor`` for
what can be told apart). The report may arrive before or after the connection is seen to close;
an attempt already counted is given back, and a task failed as a suspect for it is handed out
again with whatever its failure blocked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from itertools import compress
from typing import TYPE_CHECKING

from .taskstate import (
    BLOCKED,
    DONE,
    FAILED,
    MAX_NOTES,
    MAX_REMEMBERED,
    MAX_VANISHED,
    READY,
    RUNNING,
    WAITING,
    Failure,
    FailureKind,
)

if TYPE_CHECKING:
    from array import array

    from .graph import Graph
    from .readyqueue import ReadyQueue
    from .taskstate import Lease


class Recovery:
    """Mixed into ``Scheduler``: these are the attributes it uses."""

    graph: Graph
    state: bytearray
    remaining: array[int]
    ready: ReadyQueue
    leases: dict[int, Lease]
    rdep_start: array[int]
    rdep_idx: array[int]
    lost_count: dict[int, int]
    loss_notes: dict[int, list[str]]
    failures: dict[int, Failure]
    vanished: int
    vanish_count: dict[int, int]
    _vanished: set[int]
    _departed: OrderedDict[tuple[str, int], list[tuple[int, int]]]
    _causes: OrderedDict[tuple[str, int], tuple[str, bool]]

    if TYPE_CHECKING:
        def _set(self, i: int, s: int) -> None: ...
        def _release(self, lease: Lease) -> None: ...
        def _revoke_followers(self, i: int) -> None: ...
        def _fail(self, i: int, failure: Failure) -> None: ...

    # -- results that vanished -----------------------------------------------------------
    def input_missing(self, wid: str, i: int, tok: int, j: int) -> str:
        """The worker of ``i`` found the result of its input ``j`` missing or damaged.

        ``j`` is computed again (``lost_results``) and ``i`` waits for it; no attempt is counted,
        whoever is to blame it is not ``i``. Returns "waiting", "blocked" (``j`` vanished too
        often and was failed), or "stale" (the lease of ``i`` is not current: only ``j`` is
        looked at)."""
        self.lost_results([j])
        lease = self.leases.get(i)
        if lease is None or lease.tok != tok:
            return "stale"
        self._release(lease)
        self._revoke_followers(i)
        self._requeue(i)
        return "blocked" if self.state[i] == BLOCKED else "waiting"

    def done_indices(self) -> list[int]:
        """The tasks whose results the store should hold now, for the end-of-run check."""
        return list(compress(range(len(self.state)), map(DONE.__eq__, self.state)))

    def lost_results(self, idxs: Iterable[int]) -> list[int]:
        """These tasks were done but their results are gone (missing or damaged): they are
        ready again and their dependents that did not start wait for them. Returns the tasks
        that were done (the others are already being computed again)."""
        st, rem, rs, ri = self.state, self.remaining, self.rdep_start, self.rdep_idx
        lost = []
        for j in idxs:
            if st[j] != DONE:
                continue
            lost.append(j)
            self.vanished += 1
            n = self.vanish_count[j] = self.vanish_count.get(j, 0) + 1
            if n >= MAX_VANISHED:
                msg = (
                    f"its result vanished from the store {n} times after it was computed: is "
                    "something deleting results, or do some workers write to another store "
                    "(a worker's --store must point where the coordinator's does)?"
                )
                self._fail(j, Failure(j, FailureKind.STORE, "ResultVanished", msg, "", "", n))
            else:
                self._vanished.add(j)
                self._requeue(j)
            for p in range(rs[j], rs[j + 1]):
                k = ri[p]
                s = st[k]
                if s == WAITING:
                    rem[k] += 1
                elif s == READY:  # not started: it waits for j again (left in the ready deque,
                    rem[k] = 1  # which skips tasks that are no longer READY)
                    self._set(k, WAITING)
                elif s == RUNNING and rem[k]:  # a follow-on lease: j is not its worker's to run
                    lease = self.leases.get(k)
                    if lease is not None:
                        self._release(lease)
                    self._revoke_followers(k)
                    self._set(k, WAITING)
                    rem[k] += 1
                # running for real: it has j (cached) or reports it missing; done, failed or
                # blocked: nothing to change
                if st[j] == FAILED and st[k] in (WAITING, READY):
                    self._fail_downstream(k)
        return lost

    def _requeue(self, i: int) -> None:
        """Back to waiting for its inputs, or ready; blocked if one of them failed."""
        st, ds, di = self.state, self.graph.dep_start, self.graph.dep_idx
        r = 0
        for q in range(ds[i], ds[i + 1]):
            s = st[di[q]]
            if s == FAILED or s == BLOCKED:
                self._set(i, BLOCKED)
                self._fail_downstream(i)
                return
            if s != DONE:
                r += 1
        self.remaining[i] = r
        if r:
            self._set(i, WAITING)
        else:
            self._set(i, READY)
            self.ready.appendleft(i)

    def _fail_downstream(self, i: int) -> None:
        """``i`` cannot run (an input failed): it and what waits on it are blocked."""
        if self.state[i] in (WAITING, READY):
            self._set(i, BLOCKED)
        stack = [i]
        rs, ri, st = self.rdep_start, self.rdep_idx, self.state
        while stack:
            k = stack.pop()
            for p in range(rs[k], rs[k + 1]):
                j = ri[p]
                if st[j] in (WAITING, READY):
                    self._set(j, BLOCKED)
                    stack.append(j)

    # -- workers that died ---------------------------------------------------------------
    def _suspect(self, i: int, worker: str, n: int) -> Failure:
        notes = self.loss_notes.get(i, [])
        msg = (f"lost its worker {n} times ({'; '.join(notes[-MAX_NOTES:])}); suspected of "
               "killing workers, so it is not handed out again")
        return Failure(i, FailureKind.WORKER_LOST, "WorkerLost", msg, "", worker, n, list(notes))

    def worker_exited(self, host: str, pid: int, cause: str, detail: str) -> list[int]:
        """A worker's supervisor says how its process ended (``ajug.supervisor``): ``cause``
        "task" (it died by itself), "outside" (killed from outside) or "unknown". The tasks
        it was running keep the attempt only if it was not killed from outside. Returns the
        tasks that lost it (none if its connection is not seen closed yet: the cause then
        waits for ``remove_worker``)."""
        counts = cause != "outside"
        key = (host, pid)
        lost = self._departed.pop(key, None)
        if lost is None:
            self._causes[key] = (detail, counts)
            while len(self._causes) > MAX_REMEMBERED:
                self._causes.popitem(last=False)
            return []
        for i, n in lost:
            notes = self.loss_notes.get(i)
            if notes and n < len(notes):
                notes[n] = detail if counts else detail + " (not counted)"
            if counts:
                f = self.failures.get(i)
                if f is not None and f.kind == FailureKind.WORKER_LOST:
                    self.failures[i] = self._suspect(i, f.worker, f.attempts)
            else:
                self._uncount(i)
        return [i for i, _ in lost]

    def _uncount(self, i: int) -> None:
        """Give back the attempt a loss cost ``i``: no longer a suspect (if it was only that),
        and if it was failed for it, ready again with whatever its failure blocked."""
        n = self.lost_count.get(i, 0) - 1
        if n > 0:
            self.lost_count[i] = n
        else:
            self.lost_count.pop(i, None)
        f = self.failures.get(i)
        if self.state[i] != FAILED or f is None or f.kind != FailureKind.WORKER_LOST:
            return
        del self.failures[i]
        self._set(i, WAITING)
        self._requeue(i)
        # what its failure blocked waits again (unless another failure blocks it too), in graph
        # order: inputs before the tasks that need them
        todo, seen = [i], {i}
        rs, ri, st = self.rdep_start, self.rdep_idx, self.state
        while todo:
            k = todo.pop()
            for p in range(rs[k], rs[k + 1]):
                j = ri[p]
                if st[j] == BLOCKED and j not in seen:
                    seen.add(j)
                    todo.append(j)
        for j in sorted(seen - {i}):
            if st[j] == BLOCKED:
                self._set(j, WAITING)
                self._requeue(j)
