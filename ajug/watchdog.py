"""Stopping a task that runs past its timeout.

Task code runs in the worker's main thread and may block anywhere: in C code, in ``sleep``, in a
deadlock. No exception reliably interrupts that, so a task past its deadline ends its process: a
watchdog thread takes the main thread's stack (where the task was, for the failure record),
hands it to the worker, which reports a failure of kind ``timeout`` and replaces its process
(``os.execv`` of the same ``ajug work`` command, or an exit with ``EXIT_REPLACE`` that its
supervisor answers with a new process), so the host keeps its worker count.

``Deadline`` is the decision (no thread, no clock of its own: a test drives it); ``Watchdog``
is the thread around it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

#: stack frames kept in a timeout's record: the innermost ones say where the task was stuck
STACK_FRAMES = 40
#: the exit status of a worker process that ended to be replaced (a task timed out): a
#: supervisor starts another at once and does not count it as a crash (EX_TEMPFAIL)
EXIT_REPLACE = 75


def replace_by_exit() -> None:
    """End this process at once for its supervisor to start a fresh one: the main thread is
    stuck in task code, so no clean shutdown can be waited for."""
    logging.shutdown()
    os._exit(EXIT_REPLACE)


@dataclass(frozen=True)
class Expired:
    """A task that ran past its timeout, and where its thread was at that moment."""

    key: str
    timeout_s: float
    stack: str

    def message(self) -> str:
        return f"ran past its timeout of {self.timeout_s:g} s and was stopped"


class Deadline:
    """The one running task's deadline. Times are the caller's clock."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.timeout_s = 0.0
        self.at: float | None = None

    def start(self, key: str, timeout_s: float | None, now: float) -> None:
        self.key = key
        self.timeout_s = timeout_s or 0.0
        self.at = now + timeout_s if timeout_s else None

    def finish(self) -> None:
        self.key = None
        self.at = None

    def wait_s(self, now: float) -> float | None:
        """How long to sleep before the next look; None: no deadline (sleep until told)."""
        return None if self.at is None else max(0.0, self.at - now)

    def expired(self, now: float) -> bool:
        return self.at is not None and now >= self.at


def thread_stack(ident: int, below: str | None = None, limit: int = STACK_FRAMES) -> str:
    """The stack of thread ``ident`` as Python prints a traceback (innermost call last);
    ``below``: a file whose frames, and those before them, are left out (the worker's own,
    so that the stack starts at the task's function)."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return ""
    frames = traceback.extract_stack(frame)
    if below is not None:
        cut = max((n for n, f in enumerate(frames) if f.filename == below), default=-1)
        frames = traceback.StackSummary.from_list(frames[cut + 1:])
    lines = traceback.format_list(frames[-limit:])
    return "Stack of the task when it was stopped (most recent call last):\n" + "".join(lines)


class Watchdog:
    """A daemon thread watching the main thread's task. ``start``/``finish`` bracket each
    task; past its deadline, ``on_expire`` is called once, from the watchdog thread, with the
    task's stack. The callback is expected to end the process (it may block to report first);
    if it returns, the task is left to run and the watchdog stays quiet until the next start."""

    def __init__(self, on_expire: Callable[[Expired], None],
                 clock: Callable[[], float] = time.monotonic,
                 ident: int | None = None, below: str | None = None) -> None:
        self.on_expire = on_expire
        self.below = below
        self.clock = clock
        self.ident = ident if ident is not None else threading.get_ident()
        self.deadline = Deadline()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self, key: str, timeout_s: float | None) -> None:
        if not timeout_s:
            return
        with self._cond:
            self.deadline.start(key, timeout_s, self.clock())
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="ajug-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def finish(self) -> None:
        with self._cond:
            if self.deadline.at is not None:
                self.deadline.finish()
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = self.clock()
                if not self.deadline.expired(now):
                    self._cond.wait(self.deadline.wait_s(now))
                    continue
                key, timeout_s = self.deadline.key or "", self.deadline.timeout_s
                self.deadline.finish()
            self.on_expire(Expired(key, timeout_s, thread_stack(self.ident, self.below)))
