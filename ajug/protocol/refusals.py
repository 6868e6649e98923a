"""How many log lines refused connections get: the first few in full, then one per interval.

Anyone who can reach the port can open connections that fail the handshake (garbage, a port
scanner, a wrong token). One line each would let them write the coordinator's log at the
speed of their connections (51,532 lines in 5 s, measured). ``RefusalLog`` decides, without
I/O and with a clock passed in: within an interval the first ``full_lines`` refusals are
logged as they are; the others are only counted, by peer address, and summed up in one line
when the interval is over ("N connections refused in the last 60 s ..., from <top peers>").
``connection.note_refusal`` is the asyncio glue that schedules that line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

#: Refusals logged one line each per interval, before the rest are only counted.
FULL_LINES = 5
INTERVAL_S = 60.0
#: Distinct peers counted per interval (a flood from many addresses must not grow memory).
MAX_PEERS = 1024
#: Peers named in the summary line.
TOP_PEERS = 3


class RefusalLog:
    """Counts refusals per interval; says which to log in full and when the summary is due."""

    def __init__(
        self,
        full_lines: int = FULL_LINES,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.full_lines = full_lines
        self.interval_s = interval_s
        self.clock = clock
        self._start: float | None = None  # when the current interval began
        self._total = 0  # refusals in the current interval
        self._quiet = 0  # of which were not logged
        self._quiet_level = logging.NOTSET  # the highest level among those
        self._peers: Counter[str] = Counter()
        self._other_peers = 0  # refusals from peers beyond MAX_PEERS
        #: set by the glue while a summary is scheduled
        self.scheduled = False

    def __repr__(self) -> str:
        return f"<RefusalLog total={self._total} quiet={self._quiet}>"

    def refused(self, peer: str, line: str, level: int = logging.WARNING) -> list[tuple[int, str]]:
        """Count one refusal from ``peer`` (an address without its port); return the
        ``(level, line)`` pairs to log now: the summary of an interval that is over, if one is
        pending, and ``line`` itself if it is among the first of its interval."""
        out = []
        if self._start is not None and self.due_in() <= 0:
            pending = self.summary()
            if pending is not None:
                out.append(pending)
            self._reset()
        if self._start is None:
            self._start = self.clock()
        self._total += 1
        if peer in self._peers or len(self._peers) < MAX_PEERS:
            self._peers[peer] += 1
        else:
            self._other_peers += 1
        if self._total <= self.full_lines:
            out.append((level, line))
        else:
            self._quiet += 1
            self._quiet_level = max(self._quiet_level, level)
        return out

    @property
    def pending(self) -> bool:
        """Whether refusals were counted that no line has mentioned yet."""
        return self._quiet > 0

    def due_in(self) -> float:
        """Seconds until the current interval ends (0 if it has)."""
        if self._start is None:
            return 0.0
        return max(0.0, self._start + self.interval_s - self.clock())

    def summary(self, force: bool = False) -> tuple[int, str] | None:
        """``(level, line)`` summing up the interval if it is over (or ``force``) and some
        refusals were not logged; the next interval starts with the next refusal."""
        if self._start is None or not self._quiet:
            return None
        if not force and self.due_in() > 0:
            return None
        elapsed = self.clock() - self._start
        top = ", ".join(f"{p} ({n})" for p, n in self._peers.most_common(TOP_PEERS))
        others = max(0, len(self._peers) - TOP_PEERS) + (1 if self._other_peers else 0)
        if others:
            top += f" and {others}{'+' if self._other_peers else ''} more address(es)"
        line = (
            f"{self._total} connections refused in the last {_span(elapsed)} from {top} "
            f"(the first {self._total - self._quiet} logged above)"
        )
        level = self._quiet_level
        self._reset()
        return level, line

    def _reset(self) -> None:
        self._start = None
        self._total = self._quiet = self._other_peers = 0
        self._quiet_level = logging.NOTSET
        self._peers.clear()


def _span(seconds: float) -> str:
    if 55 <= seconds < 65:
        return "minute"
    return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"


def peer_host(address: str) -> str:
    """``"1.2.3.4:5678"`` or ``"[::1]:5678"`` without the port (peers differ by address)."""
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address
