"""Per-task options in the Scheduler: a part of ``Scheduler`` (a mixin: the same state).

- *Priorities* order the ready queue (``ReadyQueue``: one bucket per distinct set of options).
- *Resources*: each worker belongs to a host group (one ``ajug work`` invocation and its
  ``-j`` processes) that offers named amounts; a task's resources are held on its group from
  its lease to its report, and a task is leased only to a group that has them free. A task no
  connected group could ever hold waits, and ``unplaceable`` says so for ``status``.
- *Retries* and *timeouts* per task, over the run's defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .hostpool import HostPools, describe
from .readyqueue import ReadyQueue

if TYPE_CHECKING:
    from .graph import Graph
    from .taskstate import WorkerInfo


class Placement:
    """Mixed into ``Scheduler``: these are the attributes it uses."""

    graph: Graph
    retries: int
    task_timeout_s: float | None
    workers: dict[str, WorkerInfo]

    def _init_placement(self) -> None:
        opts = self.graph.options
        self.pools = HostPools()
        self._needs = [o.needs() for o in opts]
        self._any_needs = any(self._needs)
        self._retries_of = [self.retries if o.retries is None else o.retries for o in opts]
        self._timeout_of = [self.task_timeout_s if o.timeout_s is None else o.timeout_s
                            for o in opts]
        self.ready = ReadyQueue(self.graph.opt_of, [o.priority or 0 for o in opts])
        #: tasks holding resources: task -> (group, what it holds)
        self._held: dict[int, tuple[str, dict[str, float]]] = {}

    def _opt(self, i: int) -> int:
        o = self.graph.opt_of
        return 0 if o is None else o[i]

    def retries_of(self, i: int) -> int:
        return self._retries_of[self._opt(i)]

    def timeout_of(self, i: int) -> float | None:
        o = self.graph.opt_of
        return self._timeout_of[0 if o is None else o[i]]

    def needs_of(self, i: int) -> dict[str, float]:
        return self._needs[self._opt(i)]

    def join_pool(self, w: WorkerInfo, group: str, offers: dict[str, float] | None) -> None:
        w.group = group or w.wid
        self.pools.join(w.group, offers or {})

    def leave_pool(self, w: WorkerInfo) -> None:
        self.pools.leave(w.group or w.wid)

    def fitter(self, w: WorkerInfo) -> Callable[[int], bool] | None:
        """``ReadyQueue.pop``'s test for this worker: None when no task needs anything."""
        if not self._any_needs:
            return None
        group, pools, needs = w.group or w.wid, self.pools, self._needs
        return lambda k: not needs[k] or pools.fits(group, needs[k])

    def fits(self, w: WorkerInfo, i: int) -> bool:
        if not self._any_needs:
            return True
        n = self.needs_of(i)
        return not n or self.pools.fits(w.group or w.wid, n)

    def _hold(self, w: WorkerInfo, i: int) -> None:
        if self._any_needs and (n := self.needs_of(i)):
            group = w.group or w.wid
            self.pools.take(group, n)
            self._held[i] = (group, n)

    def _unhold(self, i: int) -> None:
        if self._held and (h := self._held.pop(i, None)) is not None:
            self.pools.release(*h)

    def set_offer(self, wid: str, group: str, offers: dict[str, float]) -> None:
        """A worker said which host group it runs for and what the group offers (its first
        lease request); until then it holds only tasks that need nothing."""
        w = self.workers.get(wid)
        if w is None:
            return
        moving = [i for i in w.leases if i in self._held]  # resumed before the offer came
        for i in moving:
            self._unhold(i)
        self.leave_pool(w)
        self.join_pool(w, group, offers)
        for i in moving:
            self._hold(w, i)

    def unplaceable(self) -> list[dict[str, object]]:
        """Ready tasks that no connected worker's host could hold, by what they need:
        ``[{"needs": "gpus>=1", "tasks": 3}]`` (for ``status``)."""
        if not self._any_needs:
            return []
        out: dict[str, int] = {}
        for k in self.ready.waiting_buckets():
            n = self._needs[k]
            if n and not self.pools.anyone_can_hold(n):
                d = describe(n)
                out[d] = out.get(d, 0) + len(self.ready.buckets[k])
        return [{"needs": d, "tasks": c} for d, c in sorted(out.items())]

    def waiting_needs(self) -> list[dict[str, float]]:
        """The distinct resources of ready tasks that need any (for a cluster launcher)."""
        if not self._any_needs:
            return []
        out: list[dict[str, float]] = []
        for k in self.ready.waiting_buckets():
            if self._needs[k] and self._needs[k] not in out:
                out.append(self._needs[k])
        return out

    def waiting_shapes(self) -> list[tuple[dict[str, float], int, int]]:
        """Ready tasks that need resources, by what they need: ``(needs, ready, startable)``,
        where ``startable`` is how many of them the connected hosts could start now (their idle
        worker processes and free resources). For a cluster launcher, which sizes jobs for the
        rest."""
        if not self._any_needs:
            return []
        counts: dict[tuple[tuple[str, float], ...], int] = {}
        for k in self.ready.waiting_buckets():
            if self._needs[k]:
                key = tuple(sorted(self._needs[k].items()))
                counts[key] = counts.get(key, 0) + len(self.ready.buckets[k])
        idle: dict[str, int] = {}
        for w in self.workers.values():
            if not w.leases:
                g = w.group or w.wid
                idle[g] = idle.get(g, 0) + 1
        return [(dict(key), n, sum(min(c, self.pools.room(g, dict(key)))
                                   for g, c in idle.items()))
                for key, n in counts.items()]


__all__ = ["Placement"]
