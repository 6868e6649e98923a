"""What the coordinator decides: which tasks are ready, who holds which lease, until when.

No I/O and no event loop here: the coordinator calls these methods from its connection handlers
and passes a clock, so a test can expire a lease by moving the clock instead of sleeping.

Lease rules (DESIGN.md, "Leases and failures"):
- a lease is (task, worker, token, deadline); ``renew`` pushes the deadline by the TTL;
- a worker that disconnects loses its leases at once; a lease past its deadline is reclaimed;
  either way the task is ready again and it counts as one attempt; ``max_attempts`` such losses
  mark the task failed as suspected of killing its workers;
- a task that was running when its worker was lost is leased again only alone, to a worker
  holding nothing else: if it is what kills workers, it alone loses the next attempt;
- a task that raises is retried ``retries`` times, then failed; everything downstream of a
  failed task is blocked, and the rest of the graph runs on;
- a ``done`` for a lease that is no longer current is the caller's to verify in the store
  (``complete`` returns False) and then ``accept_late``.

Parts of this class kept in modules of their own, each one idea: ``recovery`` (a result that
vanished from the store, a worker that died), ``followon`` (leasing a chain ahead to the worker
that holds its start), ``admission`` (the resume grace, which waiting request is served first)
and ``runstart`` (the done set from the store; the carry-over past a barrier). Failure kinds
and report outcomes are enums in ``taskstate``; ``fail_fast`` halts at the first failure.
"""

from __future__ import annotations

import operator
import time
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from .admission import Admission, LeaseRequest
from .followon import FollowOn
from .graph import Graph
from .placement import Placement
from .recovery import Recovery
from .runstart import RunStart
from .taskstate import (
    BLOCKED,
    DONE,
    FAILED,
    MAX_NOTES,
    MAX_REMEMBERED,
    MAX_VANISHED,
    READY,
    RUNNING,
    STATE_NAMES,
    WAITING,
    Failure,
    FailureKind,
    Lease,
    Outcome,
    WorkerInfo,
)


class Scheduler(Recovery, FollowOn, Admission, RunStart, Placement):
    def __init__(
        self,
        graph: Graph,
        *,
        lease_ttl_s: float = 30.0,
        max_attempts: int = 3,
        retries: int = 0,
        fail_fast: bool = False,
        task_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.graph = graph
        #: stop the run at the first task failed for good (``--fail-fast``): ``halted`` says so
        self.fail_fast = fail_fast
        self.halted = False
        self.lease_ttl_s = lease_ttl_s
        self.max_attempts = max_attempts
        self.retries = retries
        self.task_timeout_s = task_timeout_s
        self.clock = clock
        n = len(graph)
        self.state = bytearray(n)  # all WAITING
        self.remaining = array("I", bytes(4 * n))
        self._init_placement()
        self.leases: dict[int, Lease] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.lost_count: dict[int, int] = {}
        #: per task that lost a worker: how, each time (for the failure record)
        self.loss_notes: dict[int, list[str]] = {}
        #: leases lost with a worker whose cause is not known yet, and causes not yet matched
        #: (task, index of its note in loss_notes) per dead worker
        self._departed: OrderedDict[tuple[str, int], list[tuple[int, int]]] = OrderedDict()
        self._causes: OrderedDict[tuple[str, int], tuple[str, bool]] = OrderedDict()
        self.error_count: dict[int, int] = {}
        self.failures: dict[int, Failure] = {}
        #: tasks marked failed since the coordinator last looked (it records them in the store)
        self.new_failures: list[int] = []
        self.counts = [[0] * 6 for _ in graph.functions]
        for f, c in Counter(graph.fn).items():
            self.counts[f][WAITING] = c
        self._tok = 0
        self.reclaimed = 0
        self.completed = 0
        self.duplicates = 0
        #: results that were done and then found missing or damaged; those done again since
        self.vanished = 0
        self.recomputed = 0
        self.vanish_count: dict[int, int] = {}
        self._vanished: set[int] = set()
        #: tasks done in this run whose results the coordinator has not confirmed present yet
        self.unverified = array("I")
        # the number of inputs of each task (its tasks with any are iterated at C speed: a
        # million-task graph is mostly tasks with none), and the dependents of each, as CSR
        ds = graph.dep_start
        self._ndeps = (array("I", map(operator.sub, ds[1:], ds[:-1])) if graph.dep_idx
                       else array("I", bytes(4 * n)))  # no task has inputs
        self.rdep_start, self.rdep_idx = graph.dependents(self._ndeps)

    def _set(self, i: int, s: int) -> None:
        c = self.counts[self.graph.fn[i]]
        c[self.state[i]] -= 1
        c[s] += 1
        self.state[i] = s

    # -- workers --------------------------------------------------------------------------
    def add_worker(self, wid: str, host: str = "", pid: int = 0, name: str = "",
                   group: str = "", offers: dict[str, float] | None = None) -> WorkerInfo:
        """``group``/``offers``: the host group the worker runs for, and what it offers."""
        now = self.clock()
        w = self.workers[wid] = WorkerInfo(wid, host, pid, name, now, now)
        self.join_pool(w, group, offers)
        return w

    def remove_worker(self, wid: str) -> list[int]:
        """The worker is gone (closed connection): its leases are ready again at once. Each
        counts as an attempt unless its supervisor has said (or says later: ``worker_exited``)
        that it was killed from outside."""
        w = self.workers.pop(wid, None)
        if w is None:
            return []
        lost = list(w.leases)
        cause = self._causes.pop((w.host, w.pid), None)
        why, counts = ("connection closed", True) if cause is None else cause
        lost_here = []  # each task that had started, with the place of this loss's note
        for i in lost:
            if self._lose(i, why, counts):
                lost_here.append((i, len(self.loss_notes[i]) - 1))
        if cause is None and lost_here:
            self._departed[(w.host, w.pid)] = lost_here
            while len(self._departed) > MAX_REMEMBERED:
                self._departed.popitem(last=False)
        self.leave_pool(w)
        return lost

    # -- leases ---------------------------------------------------------------------------
    def lease(self, wid: str, n: int) -> list[tuple[int, int]]:
        """Up to ``n`` tasks for ``wid``, as (task index, lease token): follow-on tasks of what
        it already holds first (their inputs are on that machine), then ready tasks. Nothing
        for a worker that is gone (a long poll that outlived its connection)."""
        w = self.workers.get(wid)
        if w is None:
            return []
        now = self.clock()
        w.last_seen = now
        out: list[tuple[int, int]] = []
        lost = self.lost_count
        if lost and any(j in lost for j in w.leases):
            return out  # it runs a suspect: alone, so that a crash points at the culprit
        deadline = now + self.lease_ttl_s
        if w.follow:
            self._follow(w, out, n, deadline)
        ready, st, pop = self.ready, self.state, self.ready.popper(self.fitter(w))
        later: list[int] = []
        while len(out) < n:
            try:
                i = pop()
            except IndexError:
                break
            if st[i] != READY:
                continue
            if i in lost:
                # it was running when a worker died: it may be what killed it. It goes last and
                # alone, to a worker holding nothing else, or every task that shared a worker
                # with it would lose attempts too (and be failed as suspects with it)
                later.append(i)
                continue
            self._grant(w, i, deadline, out)
        if later:
            if not out and not w.leases:
                self._grant(w, later.pop(0), deadline, out)
            ready.extendleft(reversed(later))
        if w.follow and len(out) < n and not (out and out[-1][0] in lost):
            self._follow(w, out, n, deadline)
        return out

    def _grant(self, w: WorkerInfo, i: int, deadline: float, out: list[tuple[int, int]]) -> None:
        self._tok += 1
        self.leases[i] = Lease(i, w.wid, self._tok, deadline, deadline - self.lease_ttl_s)
        w.leases.add(i)
        if self._any_needs:
            self._hold(w, i)
        self._set(i, RUNNING)
        out.append((i, self._tok))
        if w.follow and self.rdep_start[i] != self.rdep_start[i + 1]:
            w.frontier.append([i, self.rdep_start[i]])

    def give_back(self, i: int, tok: int) -> None:
        """A lease granted but not sent (the coordinator was frozen meanwhile and must check
        its owner lock first): as if never granted, no attempt counted."""
        lease = self.leases.get(i)
        if lease is None or lease.tok != tok:
            return
        self._release(lease)
        self._revoke_followers(i)
        self._back(i)

    def renew(self, wid: str, items: Iterable[tuple[int, int]]) -> list[int]:
        """Extend the worker's leases; return the task indices it no longer holds."""
        now = self.clock()
        w = self.workers.get(wid)
        if w is not None:
            w.last_seen = now
        lost = []
        for i, tok in items:
            lease = self.leases.get(i)
            if lease is None or lease.tok != tok or lease.worker != wid:
                lost.append(i)
            else:
                lease.deadline = now + self.lease_ttl_s
        return lost

    def touch(self, wid: str) -> None:
        """Any message from a worker is a sign of life: extend all its leases."""
        w = self.workers.get(wid)
        if w is None:
            return
        now = self.clock()
        w.last_seen = now
        for i in w.leases:
            self.leases[i].deadline = now + self.lease_ttl_s

    def complete(self, wid: str, i: int, tok: int) -> bool:
        """DONE for a current lease: the task is done. False: not current; verify, accept_late."""
        lease = self.leases.get(i)
        if lease is None or lease.tok != tok:
            return False
        self._release(lease)
        w = self.workers.get(wid)
        if w is not None:
            w.done += 1
        self._done(i)
        return True

    def accept_late(self, wid: str, i: int) -> bool:
        """A DONE whose lease was reclaimed, verified to be in the store. True if it counted."""
        st = self.state[i]
        if st == DONE:
            self.duplicates += 1
            return False
        lease = self.leases.get(i)
        if lease is not None:  # re-leased to someone else, who will find it done
            self._release(lease)
        w = self.workers.get(wid)
        if w is not None:
            w.done += 1
        if st == FAILED:
            self.failures.pop(i, None)
        self._done(i)
        return True

    def _done(self, i: int) -> None:
        self._set(i, DONE)
        self.completed += 1
        self.unverified.append(i)
        if self._vanished and i in self._vanished:
            self._vanished.discard(i)
            self.recomputed += 1
        if self.lost_count:  # no longer a suspect; ``lease`` looks for suspects while any remain
            self.lost_count.pop(i, None)
        rs, ri, rem, st = self.rdep_start, self.rdep_idx, self.remaining, self.state
        newly = []
        for p in range(rs[i], rs[i + 1]):
            j = ri[p]
            if st[j] == WAITING:
                rem[j] -= 1
                if rem[j] == 0:
                    self._set(j, READY)
                    newly.append(j)
            elif st[j] == RUNNING and rem[j]:  # a follow-on lease: now one input fewer to wait for
                rem[j] -= 1
                if not rem[j] and (lz := self.leases.get(j)) is not None:
                    lz.since = self.clock()  # it may start now: its running time counts from here
        # a finished task's dependents go first: the same worker usually gets them in the same
        # round trip and finds the input in its cache
        self.ready.extendleft(reversed(newly))

    def fail(self, wid: str, i: int, tok: int, err: dict[str, Any]) -> Outcome:
        """The task raised (``err``: the worker's report). Retried, failed for good (with
        ``fail_fast``, the run is ``halted``), or a stale report ignored."""
        lease = self.leases.get(i)
        if lease is None or lease.tok != tok:
            return Outcome.STALE
        self._release(lease)
        self._revoke_followers(i)
        if err.get("kind") == FailureKind.SKIPPED:  # a follow-on its worker could not run
            self._back(i)
            return Outcome.RETRY
        w = self.workers.get(wid)
        if w is not None:
            w.failed += 1
        n = self.error_count[i] = self.error_count.get(i, 0) + 1
        if n <= self.retries_of(i):
            self._set(i, READY)
            self.ready.append(i)
            return Outcome.RETRY
        kind = str(err.get("kind", FailureKind.EXCEPTION))
        self._fail(i, Failure(i, kind, str(err.get("type", "Exception")), str(err.get("msg", "")),
                              str(err.get("tb", "")), wid, n))
        if self.fail_fast:
            self.halted = True
        return Outcome.FAILED

    def mark_failed(self, i: int, failure: Failure) -> None:
        """Offline status: a task whose failure the store records is failed, and what needs it
        blocked, as the coordinator had them."""
        self._fail(i, failure)

    def _fail(self, i: int, failure: Failure) -> None:
        self._set(i, FAILED)
        self.failures[i] = failure
        self.new_failures.append(i)
        self._fail_downstream(i)

    def _release(self, lease: Lease) -> None:
        del self.leases[lease.idx]
        if self._held:
            self._unhold(lease.idx)
        w = self.workers.get(lease.worker)
        if w is not None:
            w.leases.discard(lease.idx)

    def _back(self, i: int) -> None:
        """A lease given up without an attempt: ready again, or waiting for its inputs."""
        if self.remaining[i]:
            self._set(i, WAITING)
        else:
            self._set(i, READY)
            self.ready.appendleft(i)

    def _lose(self, i: int, why: str, counts: bool = True) -> bool:
        """The lease of ``i`` is lost with its worker. True if the task had started (an
        attempt, when ``counts``); a follow-on that never started just waits again."""
        lease = self.leases.get(i)
        if lease is None:
            return False
        self._release(lease)
        self._revoke_followers(i)
        if self.remaining[i]:  # a follow-on that never started: no attempt lost
            self._set(i, WAITING)
            return False
        self.reclaimed += 1
        self.loss_notes.setdefault(i, []).append(why if counts else why + " (not counted)")
        if not counts:
            self._set(i, READY)
            self.ready.appendleft(i)
            return True
        n = self.lost_count[i] = self.lost_count.get(i, 0) + 1
        if n >= self.max_attempts:
            self._fail(i, self._suspect(i, lease.worker, n))
        else:
            self._set(i, READY)
            self.ready.appendleft(i)
        return True

    def expire(self) -> list[int]:
        """Reclaim every lease past its deadline (a frozen or unreachable worker)."""
        now = self.clock()
        late = [i for i, lease in self.leases.items() if lease.deadline < now]
        for i in late:
            self._lose(i, "lease expired")
        return late

    def resume(self, wid: str, idxs: Iterable[int]) -> tuple[list[tuple[int, int]], list[int]]:
        """A reconnected worker says it is running these: keep those that are free to keep."""
        w = self.workers[wid]
        now = self.clock()
        kept, lost = [], []
        for i in idxs:
            if self.state[i] == READY:
                self._tok += 1
                self.leases[i] = Lease(i, wid, self._tok, now + self.lease_ttl_s, now)
                w.leases.add(i)
                self._hold(w, i)
                self._set(i, RUNNING)
                kept.append((i, self._tok))
            else:
                lease = self.leases.get(i)
                if lease is not None and lease.worker == wid:
                    kept.append((i, lease.tok))
                else:
                    lost.append(i)
        return kept, lost

    # -- invalidation (live) ---------------------------------------------------------------
    def invalidate(self, idxs: Iterable[int]) -> int:
        """Results removed from the store: those tasks and everything downstream run again."""
        todo = [i for i in idxs]
        hit: set[int] = set()
        while todo:
            i = todo.pop()
            if i in hit:
                continue
            hit.add(i)
            rs, ri = self.rdep_start, self.rdep_idx
            todo.extend(ri[p] for p in range(rs[i], rs[i + 1]))
        ds, di = self.graph.dep_start, self.graph.dep_idx
        for i in sorted(hit):
            if self.state[i] == RUNNING:
                continue
            self.failures.pop(i, None)
            self._set(i, WAITING)
        for i in sorted(hit):
            if self.state[i] != WAITING:
                continue
            r = sum(1 for p in range(ds[i], ds[i + 1]) if self.state[di[p]] != DONE)
            self.remaining[i] = r
            if r == 0:
                self._set(i, READY)
                self.ready.append(i)
        return len(hit)

    # -- queries --------------------------------------------------------------------------
    def finished(self) -> bool:
        """Nothing ready and nothing running: all done, or the rest failed or blocked."""
        t = self.totals()
        return t[READY] == 0 and t[RUNNING] == 0

    def totals(self) -> list[int]:
        t = [0] * 6
        for c in self.counts:
            for s in range(6):
                t[s] += c[s]
        return t

    def all_done(self) -> bool:
        return self.totals()[DONE] == len(self.state)


__all__ = ["BLOCKED", "DONE", "FAILED", "MAX_NOTES", "MAX_REMEMBERED", "MAX_VANISHED", "READY",
           "RUNNING", "STATE_NAMES", "WAITING", "Failure", "FailureKind", "Lease", "LeaseRequest",
           "Outcome", "Scheduler", "WorkerInfo"]
