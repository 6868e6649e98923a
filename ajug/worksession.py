"""What a worker says to the coordinator and when, without I/O (in the manner of h11): the
leases it holds, the reports waiting to go and those in flight, and the function table of the
connection. The network thread feeds it the replies it receives and sends what
``due_messages`` returns; a clock is passed in, so tests move time by hand.

The decisions it holds:
- two request slots: a long poll asking for work (it may wait on the coordinator), and reports
  sent at once beside it, so a finished task's dependent is not held up behind the poll (on a
  chain, the poll is what the dependent will come back on);
- a renewal of every held lease each third of the TTL, or at once when the main thread asks
  (``renew_soon``: it holds a lease it cannot vouch for);
- after a reconnection, the reports that never got an answer go again, and the new coordinator
  is told which tasks this worker still runs (``resume``) before anything else is asked;
- leases the coordinator reports lost are dropped: never started here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .protocol import messages as m

log = logging.getLogger(__name__)

#: how long a lease request may wait on the coordinator for work
POLL_WAIT_MS = 1000
#: the shortest wait between two looks at the session (seconds)
MIN_WAKEUP_S = 0.01


@dataclass
class Lease:
    key: str
    tok: int
    fn: int
    args: bytes
    func_blob: bytes
    func_name: str
    func_src: str
    #: a follow-on lease: these inputs were leased to this worker too and must be produced
    #: here first (they come earlier in the queue)
    after: tuple[str, ...] = ()
    #: known to be this worker's until then (monotonic): when the request that granted or last
    #: renewed it was sent, plus the TTL (the coordinator's deadline is never earlier)
    valid_until: float = 0.0
    #: the coordinator said it is no longer ours: never started (set by the network thread)
    lost: bool = False
    #: seconds it may run before this worker stops it (None: no limit)
    timeout: float | None = None


@dataclass
class Update:
    """What a reply changed, for the glue to act on."""

    #: leases to hand to the main thread, in order
    new: list[Lease] = field(default_factory=list)
    #: leases no longer ours (already marked ``lost`` and no longer held)
    lost: list[Lease] = field(default_factory=list)
    #: how many keys the coordinator said were lost (some may not be held here any more)
    lost_keys: int = 0
    #: a renew or resume answer arrived: held leases are confirmed (or lost) again
    renewed: bool = False
    #: the coordinator says the run is over and this worker holds nothing
    finished: bool = False


def leases_wanted(*, held: int, unstarted: int, ran: int, avg_task_s: float,
                  prefetch: int | None = None, max_tasks: int | None = None) -> int:
    """How many more leases to ask for, holding ``held`` (``unstarted`` of them not begun),
    having run ``ran`` tasks of ``avg_task_s`` on average. ``prefetch``: hold that many beyond
    the running one; otherwise adapt to the task duration. Never past ``max_tasks``."""
    if max_tasks is not None and max_tasks - ran - held <= 0:
        return 0
    if prefetch is not None:
        want = 1 + prefetch - held
    elif ran < 3 or avg_task_s > 0.05:
        want = (2 if ran >= 3 else 1) - held
    else:
        # tiny tasks: keep up to ~50 ms of work queued, counting only tasks not yet
        # started, so the next batch arrives while the worker still has work to do
        hold = int(min(64, max(2, 0.05 / max(avg_task_s, 1e-5))))
        want = hold - unstarted if held < 4 * hold else 0
    if max_tasks is not None:
        want = min(want, max_tasks - ran - held)
    return max(0, want)


#: a report on its way: ("done", done_item) or ("failed", failed_item)
Report = tuple[str, list[Any]]


class WorkerSession:
    """The worker's side of the conversation. Survives reconnections: ``on_reconnect`` starts
    each connection (the first one too)."""

    def __init__(self, lease_ttl_s: float = 30.0, offer: dict[str, Any] | None = None) -> None:
        self.lease_ttl_s = lease_ttl_s
        #: ``{"group": ..., "resources": {...}}``: what this worker's host offers, said in the
        #: first lease request of each connection
        self.offer = offer
        self._offer_due = offer is not None
        #: leased, not finished (queued or running)
        self.queued: dict[str, Lease] = {}
        self.reports_done: list[list[Any]] = []
        self.reports_failed: list[list[Any]] = []
        #: reports sent in lease requests not yet answered: re-sent if the connection drops
        self.inflight: dict[int, tuple[list[list[Any]], list[list[Any]]]] = {}
        #: this connection's function table: fn -> (code, name, src)
        self.funcs: dict[int, tuple[bytes, str, str]] = {}
        self._ids = iter(range(1, 2**62))
        self._renew_now = False
        self._last_renew = 0.0
        self._renew_rid: int | None = None
        self._renew_sent = 0.0
        self._held: list[tuple[str, int]] = []
        self._poll_rid: int | None = None
        self._report_rid: int | None = None
        self._sent_at: dict[int, float] = {}  # lease requests in flight: when they were sent
        self._resume_rid: int | None = None
        self._resume_sent = 0.0
        self._must_resume = False
        self._idle_since: float | None = None

    # -- the main thread's news (through the glue) ----------------------------------------
    def add_reports(self, reports: list[Report]) -> None:
        """Finished tasks: no longer held; reported with the next request."""
        for kind, item in reports:
            self.queued.pop(item[0], None)
            (self.reports_done if kind == "done" else self.reports_failed).append(item)

    def renew_soon(self) -> None:
        """Renew at the next look, not at the next third of the TTL."""
        self._renew_now = True

    def next_id(self) -> int:
        """A request id, unique over the session (for requests made outside it, e.g. code)."""
        return next(self._ids)

    # -- connection -----------------------------------------------------------------------
    def on_reconnect(self, now: float, resume: bool = True, lease_ttl_s: float | None = None
                     ) -> None:
        """A new connection (``resume``: not the first one). Requests of the old one will
        never be answered: their reports go again, and the function ids start afresh."""
        if lease_ttl_s is not None:
            self.lease_ttl_s = lease_ttl_s
        for done, failed in self.inflight.values():
            self.reports_done[:0] = done
            self.reports_failed[:0] = failed
        self.inflight = {}
        self.funcs = {}
        self._sent_at = {}
        self._poll_rid = self._report_rid = self._renew_rid = self._resume_rid = None
        self._held = []
        self._must_resume = resume and bool(self.queued or self.reports_done
                                            or self.reports_failed)
        self._last_renew = now
        self._idle_since = None
        self._offer_due = self.offer is not None

    def resume_message(self, now: float) -> dict[str, Any] | None:
        """The ``resume`` request that must open a new connection, once; None if there is
        nothing to resume (or it has been sent)."""
        if not self._must_resume:
            return None
        self._must_resume = False
        unreported = [r[0] for r in self.reports_done + self.reports_failed]
        self._resume_rid = self.next_id()
        self._resume_sent = now
        return m.resume(self._resume_rid, list(self.queued) + unreported)

    # -- what to send -----------------------------------------------------------------------
    def has_reports(self) -> bool:
        return bool(self.reports_done or self.reports_failed)

    def slots_free(self) -> bool:
        """No lease request in flight (neither the poll nor the reports)."""
        return self._poll_rid is None and self._report_rid is None

    def quiet(self) -> bool:
        """Nothing in flight that carries reports or asks which tasks are ours, and nothing
        left to report: a ``bye`` loses nothing."""
        return (self.slots_free() and not self.has_reports() and self._resume_rid is None
                and not self._must_resume)

    def due_messages(self, now: float, want: int = 0) -> list[dict[str, Any]]:
        """The requests to send now. ``want``: how many more leases the worker would take."""
        resume = self.resume_message(now)
        if resume is not None:
            return [resume]
        if self._resume_rid is not None:
            return []  # nothing else until the coordinator says which tasks are still ours
        out = []
        renew = self._renew_message(now)
        if renew is not None:
            out.append(renew)
        reports = self.has_reports()
        if self._poll_rid is None and (want or reports):
            out.append(self._lease_message(now, want))
            self._poll_rid = out[-1]["id"]
            reports = False
        if reports and self._report_rid is None:
            out.append(self._lease_message(now, 0))
            self._report_rid = out[-1]["id"]
        return out

    def idle_for(self, now: float) -> float | None:
        """How long this worker has held nothing and had nothing to report (None: it has
        something). Looked at only with no lease request in flight: a poll answered empty
        does not restart the count."""
        if not self.slots_free():
            return None
        if self.queued or self.has_reports():
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since

    def next_wakeup(self, now: float) -> float:
        """Seconds until the session has something to send by itself (the next renewal)."""
        return max(MIN_WAKEUP_S, self.lease_ttl_s / 3 - (now - self._last_renew))

    def _renew_message(self, now: float) -> dict[str, Any] | None:
        if self._renew_rid is not None or not self.queued:
            return None
        if not (self._renew_now or now - self._last_renew >= self.lease_ttl_s / 3):
            return None
        self._held = [(k, lz.tok) for k, lz in self.queued.items()]
        self._renew_rid = self.next_id()
        self._last_renew = self._renew_sent = now
        self._renew_now = False
        return m.renew(self._renew_rid, leases=self._held)

    def _lease_message(self, now: float, want: int) -> dict[str, Any]:
        done, failed = self.reports_done, self.reports_failed
        self.reports_done, self.reports_failed = [], []
        rid = self.next_id()
        self.inflight[rid] = (done, failed)
        self._sent_at[rid] = now
        offer, self._offer_due = (self.offer if self._offer_due else None), False
        return m.lease(rid, want=want, wait_ms=POLL_WAIT_MS if want else 0, done=done,
                       failed=failed, follow=True, offer=offer)

    # -- what came back ---------------------------------------------------------------------
    def on_reply(self, msg: dict[str, Any], now: float) -> Update:
        """A reply from the coordinator (validated; not an ``error``). Replies to requests
        this session did not make (or made on an earlier connection) change nothing."""
        rid = msg.get("re")
        if rid is None:
            return Update()
        if rid == self._renew_rid:
            self._renew_rid = None
            return self._on_renewed(msg["lost"])
        if rid == self._resume_rid:
            self._resume_rid = None
            return self._on_resumed(msg, now)
        if rid == self._poll_rid:
            self._poll_rid = None
        elif rid == self._report_rid:
            self._report_rid = None
        elif rid not in self._sent_at:
            return Update()
        return self.on_leases(rid, msg)

    def on_leases(self, rid: int, rep: dict[str, Any]) -> Update:
        """A ``leases`` reply: its reports arrived; new leases are valid for a TTL from when
        the request was sent."""
        self.inflight.pop(rid, None)
        valid_until = self._sent_at.pop(rid, 0.0) + self.lease_ttl_s
        for fn in rep["funcs"]:
            self.funcs[fn["fn"]] = (fn["code"], fn["name"], fn["src"])
        up = Update()
        for item in rep["leases"]:
            blob, name, src = self.funcs[item["fn"]]
            lease = Lease(item["key"], item["tok"], item["fn"], item["args"], blob, name, src,
                          tuple(item.get("after", ())), valid_until,
                          timeout=item.get("timeout"))
            self.queued[lease.key] = lease
            up.new.append(lease)
        up.finished = rep["state"] == "finished" and not self.queued
        return up

    def _on_renewed(self, lost: list[str]) -> Update:
        gone = set(lost)
        for key, tok in self._held:
            held = self.queued.get(key)
            if held is not None and held.tok == tok and key not in gone:
                held.valid_until = max(held.valid_until, self._renew_sent + self.lease_ttl_s)
        up = self._drop_lost(lost)
        up.renewed = True
        return up

    def _on_resumed(self, rep: dict[str, Any], now: float) -> Update:
        kept = dict(rep["kept"])
        for key, lz in self.queued.items():
            if key in kept:
                lz.tok = kept[key]
                lz.valid_until = self._resume_sent + self.lease_ttl_s
        for r in self.reports_done + self.reports_failed:
            if r[0] in kept:
                r[1] = kept[r[0]]
        if rep["lost"]:
            log.info("%d task(s) no longer ours (done or handed to another worker meanwhile)",
                     len(rep["lost"]))
        up = self._drop_lost(rep["lost"])
        if kept:
            log.info("kept %d task(s) across the reconnection", len(kept))
        up.renewed = True
        self._last_renew = now
        return up

    def _drop_lost(self, keys: list[str]) -> Update:
        """Leases the coordinator no longer counts as ours: queued ones are never started; a
        running one finishes and its result is reported as a late one."""
        up = Update(lost_keys=len(keys))
        for key in keys:
            lz = self.queued.pop(key, None)
            if lz is not None:
                lz.lost = True
                up.lost.append(lz)
        return up
