"""When leases may be handed out, and which waiting request is served first: a part of
``Scheduler`` (a mixin), on the Scheduler's clock so that a test can move time.

- Resume grace: a coordinator restarted on a store whose coordinator died lets the workers of
  the previous one reconnect and say what they are still running (``resume``) before anything
  is handed out again, or their tasks would run twice.
- Serving order: a report that made work ready goes first to the reporting worker's own
  waiting requests (the new tasks' inputs are in that worker's cache: chains stay on one
  worker); the other waiting requests are woken for whatever is left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING


@dataclass(eq=False)
class LeaseRequest:
    """A lease request waiting for work (hashable by identity): whose, how many tasks, and
    the leases it was served while it waited."""

    wid: str
    want: int
    leases: list[tuple[int, int]] = field(default_factory=list)


class Admission:
    """Mixed into ``Scheduler``: these are the attributes it uses."""

    clock: Callable[[], float]
    #: no lease is handed out before this time on the clock (resume grace)
    resume_until: float = float("-inf")

    if TYPE_CHECKING:
        def lease(self, wid: str, n: int) -> list[tuple[int, int]]: ...

    def hold_for_resume(self, grace_s: float) -> None:
        """Hand nothing out for ``grace_s`` from now: the workers of a previous coordinator
        are reconnecting and resuming their tasks."""
        self.resume_until = self.clock() + grace_s

    def resuming(self) -> bool:
        """Still in the resume grace: leases wait; resumes, renewals and reports do not."""
        return self.clock() < self.resume_until

    def serve_reporter(self, wid: str, waiting: Iterable[LeaseRequest]) -> list[LeaseRequest]:
        """``wid`` reported work done, which may have made tasks ready: its own waiting requests
        are served first, here and now (the caller wakes them, then every other waiting request
        for what is left). Returns the requests served."""
        if self.resuming():
            return []
        served = []
        for r in waiting:
            if r.wid == wid and not r.leases:
                r.leases = self.lease(wid, r.want)
                if r.leases:
                    served.append(r)
        return served
