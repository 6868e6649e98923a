"""The launcher in the coordinator's loop: each tick it reads the ready tasks (those that need
nothing, and those that need resources by what they need: ``Placement.waiting_shapes``) and the
connected workers, asks the ``JobPolicy`` what to do, and starts the driver's commands as
asyncio tasks (never awaited by the tick itself). ``close`` leaves no job of the run in the
queue."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LaunchError
from ..scheduler import READY
from .policy import ENDED, PENDING, RUNNING, JobPolicy, ShapeDemand, WorkerView
from .shapes import Shape, demands

log = logging.getLogger("ajug.launch")

LIST_EVERY_S = 5.0
#: after a submission, a cancellation or a worker leaving, the queue is looked at sooner
LIST_SOON_S = 1.0
#: when the run is finished, running jobs get this long to end by themselves
END_GRACE_S = 10.0
CLOSE_TIMEOUT_S = 30.0
_WORKER_NAME = re.compile(r"^(\w+):([^/]+)/")


def job_of(worker_name: str, kind: str) -> str | None:
    """The job a worker runs in, from the name the job script gave it (``slurm:123/0``)."""
    m = _WORKER_NAME.match(worker_name or "")
    return m.group(2) if m and m.group(1) == kind else None


class Launcher:
    def __init__(self, driver: Any, policy: JobPolicy, name: str, job_dir: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.driver = driver
        self.policy = policy
        self.name = name
        self.job_dir = job_dir
        self.clock = clock
        self.kind = driver.kind
        self.scripts: list[Path] = []
        self.closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listing: asyncio.Task[Any] | None = None
        self._next_list = 0.0
        self._list_error: str | None = None
        self._workers_seen = 0
        self._reason = ""
        self._shapes: dict[str, Shape] = {}

    async def start(self) -> None:
        """Write the job scripts and look for jobs of this run already in the queue (those of
        a coordinator that was restarted) before anything is submitted."""
        self.scripts = self.driver.prepare(self.policy.min_jobs > 0)
        await self._list()

    # -- the tick -------------------------------------------------------------------------
    def tick(self, coord: Any) -> None:
        if self.closing or coord.sched is None:
            return
        now = self.clock()
        sched = coord.sched
        workers = [WorkerView(job_of(w.name, self.kind), bool(w.leases))
                   for w in sched.workers.values()]
        if len(workers) < self._workers_seen:
            self._next_list = min(self._next_list, now + LIST_SOON_S)  # a job may have ended
        self._workers_seen = len(workers)
        if self._listing is None and now >= self._next_list:
            self._listing = self._spawn(self._list())
        ready, shapes = self._demand(sched)
        d = self.policy.decide(now, ready, workers, finished=coord.state == "finished",
                               shapes=shapes)
        for _ in range(d.submit_base):
            self._spawn(self._submit(True))
        for _ in range(d.submit):
            self._spawn(self._submit(False))
        for key, n in d.shaped.items():
            for _ in range(n):
                self._spawn(self._submit(False, self._shapes[key]))
        if d.cancel:
            self._spawn(self._cancel(d.cancel))
        gist = re.sub(r"\d+", "#", self.policy.reason)  # not every second of a countdown
        if gist != self._reason:
            self._reason = gist
            log.debug("jobs: %s", self.policy.reason)

    def _demand(self, sched: Any) -> tuple[int, list[ShapeDemand]]:
        """Ready tasks that need nothing, and those that need resources by job shape (all of
        them plain demand for a driver that does not size its jobs)."""
        ready = sched.totals()[READY]
        if not getattr(self.driver, "sizes_jobs", False):
            return ready, []
        spec = self.driver.spec
        shapes, by_key = demands(sched.waiting_shapes(), spec.cpus, spec.mem_mib)
        self._shapes.update(by_key)
        return max(0, ready - sum(sd.ready for sd in shapes)), shapes

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._done)
        return t

    def _done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if t is self._listing:
            self._listing = None
        if not t.cancelled() and t.exception() is not None:
            log.error("launcher task failed", exc_info=t.exception())

    def _log(self, lines: list[str], level: int = logging.INFO) -> None:
        for line in lines:
            log.log(level, "%s", line)

    async def _submit(self, base: bool, shape: Shape | None = None) -> None:
        key = None if shape is None else shape.key
        try:
            job_id = await self.driver.submit(base, shape)
        except LaunchError as e:
            self.policy.submit_failed(str(e), base, self.clock(), shape=key)
            self._log(self.policy.take_alerts(), logging.ERROR)
            return
        self._log(self.policy.submitted(job_id, base, self.clock(), shape=key))
        note = " (--min-jobs)" if base else ""
        if shape is not None:
            note = f" sized for tasks that need {shape.what} (--resources {shape.offer_text()})"
            self.scripts = [*self.scripts, *(p for p in self.driver.shape_scripts.values()
                                             if p not in self.scripts)]
        log.info("submitted %s job %s%s", self.kind, job_id, note)
        self._next_list = min(self._next_list, self.clock() + LIST_SOON_S)

    async def _cancel(self, ids: list[str]) -> None:
        log.info("cancelling %s job(s) %s", self.kind, " ".join(ids))
        try:
            await self.driver.cancel(ids)
        except LaunchError as e:
            log.warning("%s", e)
        self._next_list = min(self._next_list, self.clock() + LIST_SOON_S)

    async def _list(self) -> None:
        asked = self.clock()
        try:
            jobs = await self.driver.list()
        except LaunchError as e:
            if str(e) != self._list_error:
                log.warning("cannot list the run's jobs: %s", e)
            self._list_error = str(e)
            self._next_list = self.clock() + LIST_EVERY_S
            return
        self._list_error = None
        self._log(self.policy.listed(jobs, asked, self.clock()))
        self._log(self.policy.take_alerts(), logging.ERROR)
        self._next_list = self.clock() + LIST_EVERY_S

    # -- the end ---------------------------------------------------------------------------
    async def close(self, finished: bool) -> None:
        """Leave no job of this run in the queue. Finished: pending jobs go at once, running
        ones get ``END_GRACE_S`` to end as their workers hear that the run is done. Stopped
        otherwise (a signal, an error): every job goes at once."""
        if self.closing:
            return
        self.closing = True
        self.policy.finished = True
        pending = [t for t in self._tasks if t is not self._listing]
        if pending:  # submissions in flight: their jobs must be cancelled too
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)
        deadline = self.clock() + CLOSE_TIMEOUT_S
        grace_until = self.clock() + (END_GRACE_S if finished else 0.0)
        asked: set[str] = set()
        while True:
            if self._listing is not None:
                await asyncio.wait([self._listing], timeout=CLOSE_TIMEOUT_S)
            await self._list()
            live = list(self.policy.jobs.values())
            if not live:
                return
            now = self.clock()
            go = [j.id for j in live if j.id not in asked and (
                j.state == PENDING or now >= grace_until and j.state == RUNNING)]
            if go:
                asked.update(go)
                for j in live:
                    if j.id in go:
                        j.cancelled = True
                await self._cancel(go)
            if now >= deadline:
                log.warning("%s job(s) of this run still in the queue: %s", self.kind,
                            " ".join(j.id for j in live))
                return
            await asyncio.sleep(0.5)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        p = self.policy
        now = self.clock()
        jobs = []
        for j in sorted(p.jobs.values(), key=lambda j: j.since):
            state = "cancelling" if j.cancelled and j.state != ENDED else j.state
            jobs.append({"id": j.id, "state": state, "raw": j.raw, "node": j.node,
                         "workers": j.workers, "base": j.base, "shape": j.shape,
                         "reason": j.reason,
                         "age_s": round(now - j.since, 1)})
        ended = [{"id": j.id, "raw": j.raw, "node": j.node, "had_worker": j.had_worker}
                 for j in p.ended]
        return {
            "kind": self.kind,
            "name": self.name,
            "reason": p.reason,
            "error": p.error,
            "failures": p.failures,
            "retry_in_s": round(max(0.0, p.retry_at - now), 1) if p.error else None,
            "list_error": self._list_error,
            "min": p.min_jobs,
            "max": p.max_jobs,
            "slots_per_job": p.slots,
            "idle_exit_s": p.idle_exit_s,
            **p.counts(),
            "submitted": p.submitted_total,
            "adopted": p.adopted_total,
            "ended_total": p.ended_total,
            "jobs": jobs,
            "ended": ended,
            "dir": str(self.job_dir),
            "scripts": [str(s) for s in self.scripts],
        }

