"""Progress of a run: rich bars per function on a terminal, plain periodic lines otherwise.

Shared by ``ajug run``, ``ajug serve`` and ``ajug status --watch``. Each bar says what its
numbers are: ``12/40 done``, the rate, ``3 running`` (tasks a worker is executing now, at most
one per worker; tasks leased ahead are ``queued``), ``elapsed`` and ``ETA``. A function's rate
is measured over the last ``RATE_WINDOW_S`` while it has work, and once it has none left it
stays at its average over the time it was worked on (rather than falling to 0/s).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column
from rich.text import Text

from .status import plain_line

#: Seconds of history behind a function's current rate.
RATE_WINDOW_S = 10.0
STATES = ("waiting", "ready", "running", "done", "failed", "blocked")


def _clock(seconds: float | None) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on; ``-:--`` when unknown."""
    if seconds is None:
        return "-:--"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _short_names(names: list[str]) -> dict[str, str]:
    """Function names without the module they share (the jugfile's), if they all share one."""
    mods = {n.rpartition(".")[0] for n in names}
    if len(mods) == 1 and "" not in mods:
        return {n: n.rpartition(".")[2] for n in names}
    return {n: n for n in names}


@dataclass
class Pace:
    """Timing of one function (or of all tasks) over the updates seen."""

    first_done: int | None = None
    started: float | None = None  # first time it had work in hand or progressed
    finished: float | None = None  # when it had nothing left (None while it has)
    last_change: float | None = None
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def update(self, now: float, done: int, busy: bool, left: int) -> None:
        if self.first_done is None:
            self.first_done = done
        moved = bool(self.samples) and done != self.samples[-1][1]
        if self.started is None and (busy or moved):
            self.started = now if not moved else self.samples[-1][0]
        if moved:
            self.last_change = now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        if left == 0 and self.finished is None and self.started is not None:
            self.finished = self.last_change or now
        elif left > 0:
            self.finished = None

    def rate(self, now: float) -> float:
        """Tasks per second: over the window while work is left, the average once it is not."""
        if self.finished is not None and self.started is not None and self.first_done is not None:
            span = self.finished - self.started
            n = self.samples[-1][1] - self.first_done if self.samples else 0
            return n / span if span > 0 else 0.0
        if len(self.samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.finished or now) - self.started


def _executing(f: dict[str, Any]) -> int:
    """Tasks being executed (a coordinator that does not say: all its leased tasks)."""
    return int(f.get("executing", f.get("running", 0)))


def _jupyter_widgets(console: Console) -> bool:
    """In a Jupyter kernel with ipywidgets, rich draws live bars in the cell's output."""
    if not console.is_jupyter:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class RunProgress:
    """Fed a status dict about once a second; ``close`` once at the end."""

    def __init__(self, console: Console | None = None, interval_s: float = 10.0,
                 enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.tty = enabled and (self.console.is_terminal or _jupyter_widgets(self.console))
        self.enabled = enabled
        self.interval_s = interval_s
        self._last_line = 0.0
        self._last_text = ""
        self._bars: dict[str, Any] = {}
        self._pace: dict[str, Pace] = {}
        self._progress: Progress | None = None
        if self.tty:
            # the numbers keep their width; the name and the bar give way on a narrow terminal
            self._progress = Progress(
                TextColumn("{task.description}", table_column=Column(
                    no_wrap=True, overflow="ellipsis", ratio=1, min_width=10)),
                BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5)),
                TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[rate]}", table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[extra]}", table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[times]}", table_column=Column(no_wrap=True)),
                console=self.console,
                transient=False,
                expand=True,
            )
            self._progress.start()

    def update(self, st: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._update_bars(st)
            return
        now = time.monotonic()
        text = plain_line(st)
        if now - self._last_line >= self.interval_s and text != self._last_text:
            self._last_line, self._last_text = now, text
            print(text, file=sys.stderr, flush=True)

    def _update_bars(self, st: dict[str, Any]) -> None:
        assert self._progress is not None
        now = time.monotonic()
        rows = [dict(f) for f in st["functions"]]
        short = _short_names([f["name"] for f in rows])
        if len(rows) > 1:  # a bar for the whole graph too, first
            total = {"name": "all tasks", **{s: st["totals"].get(s, 0) for s in STATES}}
            total["executing"] = sum(_executing(f) for f in rows)
            rows.insert(0, total)
        for f in rows:
            name = f["name"]
            total_n = sum(f.get(c, 0) for c in STATES)
            left = f["waiting"] + f["ready"] + f["running"]
            pace = self._pace.setdefault(name, Pace())
            pace.update(now, f["done"], f["running"] > 0, left)
            rate = pace.rate(now)
            extra = []
            running = _executing(f)
            if running:
                extra.append(f"{running} running")
            if f["failed"]:
                extra.append(f"[red]{f['failed']} failed[/red]")
            if f["blocked"]:
                extra.append(f"[yellow]{f['blocked']} blocked[/yellow]")
            elapsed = pace.elapsed(now)
            if elapsed is None:  # nothing of it has run yet
                times = ""
            elif left == 0:
                times = f"elapsed {_clock(elapsed)}"
            else:
                eta = left / rate if rate > 0 else None
                times = f"elapsed {_clock(elapsed)}, ETA {_clock(eta)}"
            bar = self._bars.get(name)
            if bar is None:
                bar = self._bars[name] = self._progress.add_task(
                    short.get(name) or name, total=total_n, count="", rate="", extra="", times="")
            self._progress.update(
                bar, total=total_n, completed=f["done"], count=f"{f['done']:,}/{total_n:,} done",
                rate=f"{rate:,.1f}/s" if 0 < rate < 10 else (f"{rate:,.0f}/s" if rate else ""),
                extra=", ".join(extra), times=times)

    def close(self, st: dict[str, Any] | None = None) -> None:
        """Stop the display, showing ``st`` last. Without a terminal nothing more is printed:
        the caller prints the final line (once)."""
        if self._progress is not None:
            if st is not None:
                self.update(st)
            self._progress.stop()
            self._progress = None


class TaskCount:
    """``ajug work`` on a terminal: one live line, how many tasks this worker has done. Task
    output and log lines go above it. Nothing without a terminal."""

    def __init__(self, worker: Any, console: Console | None = None) -> None:
        self.worker = worker
        self.console = console or Console(stderr=True)
        self._live: Live | None = None

    def __rich__(self) -> Text:
        w = self.worker
        failed = f", {w.failed:,} failed" if w.failed else ""
        return Text(f"ajug: {w.ran:,} task(s) done{failed}")

    def __enter__(self) -> TaskCount:
        if self.console.is_terminal:
            self._live = Live(self, console=self.console, refresh_per_second=2, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
