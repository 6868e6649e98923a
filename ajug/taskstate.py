"""The states a task goes through and the records the scheduler keeps about leases, workers
and failures (shared by ``scheduler`` and ``recovery``)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

WAITING, READY, RUNNING, DONE, FAILED, BLOCKED = range(6)
STATE_NAMES = ("waiting", "ready", "running", "done", "failed", "blocked")
#: A task whose result vanishes from the store this many times is failed (kind "store"): a
#: store that keeps losing results (or a worker writing to another store) is not computed for ever.
MAX_VANISHED = 5
#: Dead workers whose cause is not known yet (or causes whose worker is not known to be dead
#: yet) remembered, the oldest forgotten first.
MAX_REMEMBERED = 4096
#: Causes of loss listed in a "suspected of killing workers" failure.
MAX_NOTES = 10


class FailureKind(str, Enum):
    """Why a task failed (``Failure.kind``; the ``kind`` of a worker's failure report). A str,
    so that it is written to the wire, JSON and the store as its value."""

    EXCEPTION = "exception"  # the task raised
    WORKER_LOST = "worker-lost"  # suspected of killing its workers (``max_attempts`` lost)
    STORE = "store"  # its result kept vanishing from the store (``MAX_VANISHED``)
    INPUT_MISSING = "input-missing"  # an input's result was not in the store: not its fault
    SKIPPED = "skipped"  # a follow-on its worker could not run: not an attempt
    TIMEOUT = "timeout"  # it ran past its timeout; its worker stopped it (an attempt)

    def __str__(self) -> str:
        return self.value


class Outcome(str, Enum):
    """What a failure report did to its task (``Scheduler.fail``)."""

    RETRY = "retry"  # ready again (a retry, or a skipped follow-on)
    FAILED = "failed"  # failed for good: what needs it is blocked
    STALE = "stale"  # not a current lease: ignored

    def __str__(self) -> str:
        return self.value


@dataclass
class Lease:
    idx: int
    worker: str
    tok: int
    deadline: float
    #: when the task could start: granted, or (a follow-on lease) its last input done
    since: float = 0.0


@dataclass
class WorkerInfo:
    wid: str
    host: str = ""
    pid: int = 0
    name: str = ""
    connected_at: float = 0.0
    last_seen: float = 0.0
    done: int = 0
    failed: int = 0
    leases: set[int] = field(default_factory=set)
    #: asks for follow-on leases (it runs a lease's ``after`` inputs first)
    follow: bool = False
    #: leased tasks whose dependents have not all been looked at: [task, next rdep position]
    frontier: deque[list[int]] = field(default_factory=deque)
    #: the host group whose resources its tasks hold (``placement``)
    group: str = ""


@dataclass
class Failure:
    idx: int
    kind: str  # a FailureKind (or, read back from the store, its value)
    type: str
    msg: str
    tb: str
    worker: str
    attempts: int
    #: how the task lost each of its workers, when it did ("exit status 3 (...)", ...)
    causes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a plain str on the wire and in the store (the codec and schema check exact types)
        self.kind = str(self.kind)
