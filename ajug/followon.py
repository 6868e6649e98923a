"""Follow-on leases: a part of ``Scheduler`` (a mixin: the same state, the same rules).

A worker that asks with ``follow`` is leased, besides ready tasks, the waiting tasks whose
unfinished inputs are all leased to it, to run right after them on the same machine: a chain
then runs without a round trip per step, and a reduce runs where its inputs are. Such a task is
RUNNING with ``remaining > 0``; losing it (or one of its inputs) puts it back to WAITING
without counting an attempt, since it never ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .taskstate import DONE, RUNNING, WAITING

if TYPE_CHECKING:
    from array import array

    from .graph import Graph
    from .taskstate import Lease, WorkerInfo


class FollowOn:
    """Mixed into ``Scheduler``: these are the attributes it uses."""

    graph: Graph
    state: bytearray
    remaining: array[int]
    leases: dict[int, Lease]
    workers: dict[str, WorkerInfo]
    rdep_start: array[int]
    rdep_idx: array[int]

    if TYPE_CHECKING:
        def _set(self, i: int, s: int) -> None: ...
        def _release(self, lease: Lease) -> None: ...
        def fits(self, w: WorkerInfo, i: int) -> bool: ...
        def _grant(self, w: WorkerInfo, i: int, deadline: float,
                   out: list[tuple[int, int]]) -> None: ...

    def set_follow(self, wid: str, follow: bool) -> None:
        """Each lease request says whether its worker takes follow-on leases (``ajug work
        --prefetch``); the latest one counts."""
        w = self.workers.get(wid)
        if w is not None:
            w.follow = follow

    def _follow(self, w: WorkerInfo, out: list[tuple[int, int]], n: int, deadline: float) -> None:
        """Lease to ``w`` the waiting dependents of its leases whose other unfinished inputs
        are all leased to ``w`` too."""
        fr, st, rem, leases = w.frontier, self.state, self.remaining, self.leases
        rs, ri = self.rdep_start, self.rdep_idx
        wid = w.wid
        while fr and len(out) < n:
            ent = fr[0]
            i, p = ent
            lz = leases.get(i)
            if st[i] != RUNNING or lz is None or lz.worker != wid:
                fr.popleft()
                continue
            end = rs[i + 1]
            while p < end and len(out) < n:
                j = ri[p]
                p += 1
                if st[j] == WAITING and rem[j] and self._inputs_with(j, wid) and self.fits(w, j):
                    self._grant(w, j, deadline, out)
            if p >= end:
                fr.popleft()
            else:
                ent[1] = p

    def _inputs_with(self, j: int, wid: str) -> bool:
        """Every input of ``j`` is done or leased to ``wid``."""
        st, leases = self.state, self.leases
        ds, di = self.graph.dep_start, self.graph.dep_idx
        for q in range(ds[j], ds[j + 1]):
            d = di[q]
            s = st[d]
            if s == DONE:
                continue
            if s != RUNNING:
                return False
            dl = leases.get(d)
            if dl is None or dl.worker != wid:
                return False
        return True

    def after(self, i: int) -> list[int]:
        """The inputs of a leased task that are not done yet: non-empty for a follow-on lease,
        whose worker must run these first."""
        if not self.remaining[i]:
            return []
        st, ds, di = self.state, self.graph.dep_start, self.graph.dep_idx
        return [di[q] for q in range(ds[i], ds[i + 1]) if st[di[q]] != DONE]

    def _revoke_followers(self, i: int) -> None:
        """``i`` will not be done where it was leased: its follow-on leases (and theirs) are
        taken back; they wait for their inputs again."""
        rs, ri, st, rem = self.rdep_start, self.rdep_idx, self.state, self.remaining
        stack = [i]
        while stack:
            k = stack.pop()
            for p in range(rs[k], rs[k + 1]):
                j = ri[p]
                if st[j] == RUNNING and rem[j]:
                    lease = self.leases.get(j)
                    if lease is not None:
                        self._release(lease)
                    self._set(j, WAITING)
                    stack.append(j)
