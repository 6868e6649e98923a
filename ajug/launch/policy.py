"""How many worker jobs a run should have: decisions without I/O.

The launcher's glue (``runner.py``) tells a ``JobPolicy`` what it sees — the queue's listing of
the run's jobs, submissions that came back, and once per tick the tasks ready and the workers
connected — and asks it what to do now (``decide``): how many jobs to submit and which to
cancel, with a sentence saying why. Time is passed in, so a test drives it with a fake clock.

The rules (docs/cluster.md says them to users):

- *Demand*: tasks ready but not leased. *Supply*: idle connected workers, plus the worker slots
  of jobs submitted but whose workers have not connected yet (pending, or just started). Jobs
  are submitted for the unmet demand, ``slots_per_job`` slots each, up to ``max_jobs`` jobs; none
  while idle workers and jobs on their way can take everything ready.
- *Shaped demand* (``ShapeDemand``): ready tasks that need resources are counted apart, per set
  of needs (a *shape*), never as a reason for plain jobs. Their supply is what the connected
  hosts could start now plus the jobs of that shape on their way, ``per_job`` tasks each; the
  unmet rest gets jobs of that shape. Plain, shaped and ``min_jobs`` jobs share ``max_jobs``:
  base jobs first, then one job at a time to each kind that wants one.
- Running jobs are never cancelled while the run goes on: their workers leave by themselves
  after ``idle_exit_s`` without a task (``ajug work --idle-exit``), which frees the node even
  when the remaining work is one long task behind a barrier or a reduce. Pending jobs that
  supply more than the demand for ``idle_exit_s`` are cancelled, the newest first.
- ``min_jobs`` jobs (*base* jobs, whose workers do not exit when idle) are kept while the run
  goes on.
- A job that ends while the run goes on (time limit, preemption, ``scancel``, node failure)
  needs nothing special: its workers' leases come back as for any lost worker, the demand
  rises and a replacement is submitted by the rule above.
- A submission that fails, or ``MAX_EARLY_ENDS`` jobs in a row that end before any of their
  workers connected (a broken environment setup, a wrong worker command), stop submissions
  for a backoff that doubles from ``BACKOFF_S`` to ``MAX_BACKOFF_S``; the message is logged
  once and shown in status until a submission works again.
- Jobs of this run found in the queue when the coordinator starts (a restart) are adopted if
  their workers will reach this coordinator (``adoptable``), cancelled otherwise; nothing is
  submitted before that first listing.
- When the run is finished, pending jobs are cancelled (running ones end as their workers hear
  that the run is done; the glue cancels whatever is left when the coordinator exits).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

PENDING, RUNNING, ENDING, ENDED = "pending", "running", "ending", "ended"
BACKOFF_S = 5.0
MAX_BACKOFF_S = 300.0
MAX_EARLY_ENDS = 3
#: a submitted job that no listing has shown for this long is taken as gone
UNSEEN_GRACE_S = 60.0
ENDED_KEPT = 20


@dataclass
class Listed:
    """One job as the queue lists it."""

    id: str
    state: str  # PENDING, RUNNING, ENDING or ENDED
    raw: str = ""  # the scheduler's own word: PENDING, RUNNING, TIMEOUT, CANCELLED, ...
    node: str = ""
    reason: str = ""  # why it waits, when the scheduler says


@dataclass
class WorkerView:
    """A connected worker process: the job it runs in (None: started some other way), and
    whether it holds leases."""

    job: str | None
    busy: bool


@dataclass
class Job:
    id: str
    base: bool
    since: float  # submitted (or adopted) at
    shape: str | None = None  # the ShapeDemand key it was sized for; None: a plain job
    state: str = PENDING
    raw: str = "SUBMITTED"
    node: str = ""
    reason: str = ""
    workers: int = 0  # connected now
    had_worker: bool = False
    seen: bool = False  # shown by a listing at least once
    cancelled: bool = False  # we asked for it to go
    started_at: float | None = None
    ended_at: float | None = None


@dataclass
class ShapeDemand:
    """Ready tasks that need one set of resources: how many, how many the connected hosts
    could start now, and how many one job sized for them (``key``) holds at once."""

    key: str
    ready: int
    startable: int = 0
    per_job: int = 1
    what: str = ""  # what they need, for the reason line: "gpus>=1"


@dataclass
class Decision:
    submit: int = 0
    submit_base: int = 0
    cancel: list[str] = field(default_factory=list)
    #: jobs to submit sized for a shape, by its key
    shaped: dict[str, int] = field(default_factory=dict)


class JobPolicy:
    def __init__(self, *, max_jobs: int, min_jobs: int = 0, slots_per_job: int = 1,
                 idle_exit_s: float = 60.0, submit_word: str = "submission",
                 max_option: str = "--max-jobs") -> None:
        if not 0 <= min_jobs <= max_jobs or max_jobs < 1 or slots_per_job < 1:
            raise ValueError("need 0 <= min_jobs <= max_jobs, max_jobs >= 1, slots_per_job >= 1")
        self.max_jobs, self.min_jobs = max_jobs, min_jobs
        self.slots = slots_per_job
        self.idle_exit_s = idle_exit_s
        self.submit_word = submit_word
        self.max_option = max_option
        self.jobs: dict[str, Job] = {}
        self.ended: deque[Job] = deque(maxlen=ENDED_KEPT)
        self.known = False  # the first listing has come back
        self.adoptable = True
        self.submitting = 0
        self.submitting_base = 0
        self.submitting_shape: dict[str, int] = {}
        self.submitted_total = 0
        self.adopted_total = 0
        self.ended_total = 0
        self.error: str | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.early_ends = 0
        self.surplus_since: float | None = None
        self.reason = "starting"
        self.finished = False
        self._stale: list[str] = []  # jobs of an earlier coordinator that cannot reach this one
        #: lines worth an error in the log (a new reason why nothing can be submitted)
        self.alerts: list[str] = []

    # -- what the glue reports --------------------------------------------------------------
    def listed(self, jobs: list[Listed], asked_at: float, now: float) -> list[str]:
        """A listing of the run's jobs, asked for at ``asked_at``. Returns lines worth logging."""
        events: list[str] = []
        first = not self.known
        self.known = True
        seen = set()
        for lj in jobs:
            seen.add(lj.id)
            j = self.jobs.get(lj.id)
            if j is None:
                if lj.state == ENDED:
                    continue  # an old job of this run, already over
                if first and not self.adoptable:
                    self._stale.append(lj.id)
                    events.append(f"job {lj.id} of an earlier coordinator of this run reaches it "
                                  "at another address: cancelling it")
                    j = self.jobs[lj.id] = Job(lj.id, False, now, cancelled=True)
                else:
                    base = sum(x.base for x in self._live()) < self.min_jobs
                    j = self.jobs[lj.id] = Job(lj.id, base, now)
                    self.adopted_total += 1
                    events.append(f"job {lj.id} ({lj.raw.lower() or lj.state}) is this run's: "
                                  "adopted")
            j.seen = True
            j.raw, j.node, j.reason = lj.raw or lj.state.upper(), lj.node, lj.reason
            if lj.state in (RUNNING, ENDING) and j.started_at is None:
                j.started_at = now
            if lj.state == ENDED:
                events.extend(self._end(j, now))
            else:
                j.state = lj.state
        for j in list(self.jobs.values()):
            if j.id in seen or j.since > asked_at:
                continue
            if j.seen or now - j.since > UNSEEN_GRACE_S:  # left the queue's memory
                j.raw = j.raw if j.state == ENDED else "GONE"
                events.extend(self._end(j, now))
        return events

    def _end(self, j: Job, now: float) -> list[str]:
        self.jobs.pop(j.id, None)
        j.state, j.ended_at, j.workers = ENDED, now, 0
        self.ended.append(j)
        self.ended_total += 1
        if j.cancelled or self.finished:
            return []
        where = f" on {j.node}" if j.node else ""
        if j.had_worker:
            return [f"job {j.id} ended ({j.raw}){where} while the run goes on"]
        self.early_ends += 1
        line = f"job {j.id} ended ({j.raw}){where} before any of its workers connected"
        if self.early_ends >= MAX_EARLY_ENDS:
            msg = (f"{self.early_ends} jobs in a row ended before their workers connected "
                   f"(last: job {j.id}, {j.raw}); see its log")
            self._failed(msg, now)
        return [line]

    def submitted(self, job_id: str, base: bool, now: float,
                  shape: str | None = None) -> list[str]:
        self._settle(base, shape)
        self.submitted_total += 1
        events = []
        if self.error is not None:
            events.append(f"{self.submit_word} works again (job {job_id})")
        self.error, self.failures = None, 0
        j = self.jobs.get(job_id)
        if j is None:
            self.jobs[job_id] = Job(job_id, base, now, shape)
        else:  # a listing got there first and adopted it
            j.base, j.shape = j.base or base, j.shape or shape
        return events

    def submit_failed(self, message: str, base: bool, now: float,
                      shape: str | None = None) -> list[str]:
        self._settle(base, shape)
        return self._failed(message, now)

    def _settle(self, base: bool, shape: str | None = None) -> None:
        self.submitting = max(0, self.submitting - 1)
        if base:
            self.submitting_base = max(0, self.submitting_base - 1)
        if shape is not None and self.submitting_shape.get(shape, 0) > 0:
            self.submitting_shape[shape] -= 1

    def _failed(self, message: str, now: float) -> list[str]:
        """Back off; a message is worth a log line (returned, and kept in ``alerts``) only
        when it is new."""
        if now < self.retry_at:
            # several submissions of one decision failed together: one backoff step for all
            lines = [] if message == self.error else [message]
        else:
            self.failures += 1
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (self.failures - 1))
            self.retry_at = now + delay
            lines = [f"{message}; retrying in {delay:g}s"] if message != self.error else []
            self.reason = f"{message}; next try in {delay:.0f}s"
        self.error = message
        self.early_ends = 0
        self.alerts += lines
        return lines

    def take_alerts(self) -> list[str]:
        out, self.alerts = self.alerts, []
        return out

    # -- the decision -----------------------------------------------------------------------
    def _live(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.cancelled and j.state != ENDED]

    def decide(self, now: float, ready: int, workers: list[WorkerView],
               finished: bool = False, shapes: list[ShapeDemand] | None = None) -> Decision:
        """What to submit and cancel now, given ``ready`` tasks that need nothing, the ready
        tasks that need resources (``shapes``) and the connected ``workers``; ``reason`` says
        why in one line."""
        d = Decision()
        free = self._count_workers(workers)
        if self._stale:
            d.cancel, self._stale = self._stale, []
        live = self._live()
        if finished:
            self._finish(d, live)
            return d
        if not self.known:
            self.reason = "looking for jobs of this run already in the queue"
            return d
        coming_jobs = self._coming(live, None)
        unmet = ready - free - coming_jobs * self.slots
        want = max(0, math.ceil(unmet / self.slots)) if unmet > 0 else 0
        supply = f"{free} idle worker(s)" + (f", {coming_jobs} job(s) starting" if coming_jobs else "")
        said = f"{ready} task(s) ready, {supply}"
        shaped, spare, told = self._shaped(shapes or [], live)
        said += told
        if self._grow(d, now, want, shaped, live, said):
            return d
        # supply exceeds demand: pending jobs not needed for idle_exit_s go
        spare[None] = (-unmet) // self.slots if unmet < 0 else 0
        if self._trim(d, now, spare, live, said):
            return d
        self.surplus_since = None
        busy = len(workers) - free
        if ready or shapes:
            self.reason = f"{said}: enough"
        elif busy:
            self.reason = (f"no task ready, {busy} worker(s) busy: idle workers exit after "
                           f"{self.idle_exit_s:g}s")
        else:
            self.reason = "no task ready"
        return d

    def _coming(self, live: list[Job], shape: str | None) -> int:
        """Jobs of one kind (a shape's key; None: plain) submitted whose workers have not
        connected yet."""
        if shape is None:
            submitting = self.submitting - sum(self.submitting_shape.values())
        else:
            submitting = self.submitting_shape.get(shape, 0)
        return submitting + sum(1 for j in live if j.shape == shape and not j.had_worker)

    def _shaped(self, shapes: list[ShapeDemand], live: list[Job]
                ) -> tuple[dict[str, int], dict[str | None, int], str]:
        """Per shape: the jobs wanted for its unmet demand, and how many of its pending jobs
        are beyond it (every one, for a shape no ready task needs any more); and the words."""
        want: dict[str, int] = {}
        spare: dict[str | None, int] = {j.shape: len(live) for j in live if j.shape is not None}
        told = ""
        for sd in shapes:
            coming = self._coming(live, sd.key)
            unmet = sd.ready - sd.startable - coming * sd.per_job
            want[sd.key] = max(0, math.ceil(unmet / sd.per_job))
            spare[sd.key] = (-unmet) // sd.per_job if unmet < 0 else 0
            told += (f"; {sd.ready} need {sd.what or sd.key}, {sd.startable} startable"
                     + (f", {coming} job(s) for them starting" if coming else ""))
        return {k: n for k, n in want.items() if n}, spare, told

    def _count_workers(self, workers: list[WorkerView]) -> int:
        """Each job's connected workers (a job with its first one is no longer starting);
        returns how many workers are idle."""
        for j in self.jobs.values():
            j.workers = 0
        free = 0
        for w in workers:
            job = self.jobs.get(w.job) if w.job is not None else None
            if job is not None:
                job.workers += 1
                if not job.had_worker:
                    job.had_worker = True
                    self.early_ends = 0
            if not w.busy:
                free += 1
        return free

    def _finish(self, d: Decision, live: list[Job]) -> None:
        """The run is over: jobs still pending that never had a worker are cancelled."""
        self.finished = True
        pending = [j for j in live if j.state == PENDING and not j.had_worker]
        for j in pending:
            j.cancelled = True
        d.cancel += [j.id for j in pending]
        left = len(live) - len(pending)
        self.reason = ("the run is finished" + (f": {left} job(s) ending" if left else ""))

    def _grow(self, d: Decision, now: float, want: int, shaped: dict[str, int],
              live: list[Job], said: str) -> bool:
        """Submit the jobs wanted (``want`` plain and ``shaped`` ones for the tasks, more for
        --min-jobs) within the maximum, unless backing off. True: decided (submitted, at the
        maximum, or waiting)."""
        active = len(live) + self.submitting
        room = self.max_jobs - active
        bases = sum(j.base for j in live) + self.submitting_base
        want_base = max(0, self.min_jobs - bases)
        wanted = want + sum(shaped.values())
        if (wanted or want_base) and now < self.retry_at:
            self.reason = f"{said}: {self.error}; next try in {self.retry_at - now:.0f}s"
            return True
        d.submit_base = min(want_base, room)
        room -= d.submit_base
        d.submit, d.shaped = share(room, max(0, want - d.submit_base), shaped)
        n = d.submit + d.submit_base + sum(d.shaped.values())
        self.submitting += n
        self.submitting_base += d.submit_base
        for k, c in d.shaped.items():
            self.submitting_shape[k] = self.submitting_shape.get(k, 0) + c
        if n:
            self.surplus_since = None
            why = f"{said}: submitting {n} job(s)"
            notes = [f"{c} sized for {k}" for k, c in d.shaped.items()]
            if d.submit_base:
                notes.append(f"{d.submit_base} to keep --min-jobs {self.min_jobs}")
            if notes:
                why += f" ({', '.join(notes)})"
            if wanted > n:
                why += f", then at the maximum ({self.max_option} {self.max_jobs})"
            self.reason = why
            return True
        if wanted:
            self.reason = (f"{said}: at the maximum ({self.max_option} {self.max_jobs}, "
                           f"{active} job(s))")
            self.surplus_since = None
            return True
        return False

    def _trim(self, d: Decision, now: float, spare: dict[str | None, int], live: list[Job],
              said: str) -> bool:
        """The newest pending jobs of each kind (plain, or a shape), up to ``spare[kind]``
        jobs' worth of capacity beyond its demand, are not needed: cancelled once they have
        stayed so for ``idle_exit_s``. True: some are."""
        pending = sorted((j for j in live if j.state == PENDING and not j.had_worker
                          and not j.base), key=lambda j: j.since, reverse=True)
        surplus = []
        for kind, n in spare.items():
            surplus += [j for j in pending if j.shape == kind][:n]
        if not surplus:
            return False
        if self.surplus_since is None:
            self.surplus_since = now
        waited = now - self.surplus_since
        if waited >= self.idle_exit_s:
            for j in surplus:
                j.cancelled = True
            d.cancel += [j.id for j in surplus]
            self.reason = (f"{said}: {len(surplus)} pending job(s) not needed "
                           f"for {self.idle_exit_s:g}s: cancelling")
            self.surplus_since = None
        else:
            self.reason = (f"{said}: {len(surplus)} pending job(s) not needed; "
                           f"cancelled if still so in {self.idle_exit_s - waited:.0f}s")
        return True

    # -- for status -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        live = self._live()
        return {
            "pending": sum(j.state == PENDING for j in live),
            "running": sum(j.state in (RUNNING, ENDING) for j in live),
            "submitting": self.submitting,
            "cancelling": sum(j.cancelled and j.state != ENDED for j in self.jobs.values()),
        }


def share(room: int, plain: int, shaped: dict[str, int]) -> tuple[int, dict[str, int]]:
    """``room`` jobs shared between the plain want and each shape's, one job at a time to
    each kind that wants one (plain first), so that no kind waits for all of another's."""
    wants: dict[str | None, int] = {None: plain}
    wants.update(shaped)
    got: dict[str | None, int] = dict.fromkeys(wants, 0)
    while room > 0 and any(got[k] < n for k, n in wants.items()):
        for k, n in wants.items():
            if room > 0 and got[k] < n:
                got[k] += 1
                room -= 1
    plain_got = got.pop(None)
    return plain_got, {k: n for k, n in got.items() if k is not None and n}
