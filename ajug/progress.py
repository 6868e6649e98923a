"""Progress of a run: rich bars per function on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .status import plain_line


class RunProgress:
    """Fed a status dict about once a second by the coordinator's loop."""

    def __init__(self, console: Console | None = None, interval_s: float = 10.0,
                 enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.tty = self.console.is_terminal and enabled
        self.enabled = enabled
        self.interval_s = interval_s
        self._last_line = 0.0
        self._last_text = ""
        self._bars: dict[str, Any] = {}
        self._seen: dict[str, tuple[float, int, float]] = {}
        self._progress: Progress | None = None
        if self.tty:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()

    def update(self, st: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            for f in st["functions"]:
                name = f["name"]
                total = sum(f[c] for c in ("waiting", "ready", "running", "done", "failed", "blocked"))
                extra = []
                if f["running"]:
                    extra.append(f"{f['running']} running")
                if f["failed"]:
                    extra.append(f"[red]{f['failed']} failed[/red]")
                if f["blocked"]:
                    extra.append(f"{f['blocked']} blocked")
                bar = self._bars.get(name)
                if bar is None:
                    bar = self._bars[name] = self._progress.add_task(
                        name, total=total, extra="", rate="")
                rate = self._rate(name, f["done"])
                self._progress.update(bar, total=total, completed=f["done"], extra=" ".join(extra),
                                      rate=f"{rate:,.0f}/s" if rate else "")
            return
        now = time.monotonic()
        text = plain_line(st)
        if now - self._last_line >= self.interval_s and text != self._last_text:
            self._last_line, self._last_text = now, text
            print(text, file=sys.stderr, flush=True)

    def _rate(self, name: str, done: int) -> float:
        """Tasks per second for one function, smoothed over the last updates."""
        now = time.monotonic()
        last = self._seen.get(name)
        self._seen[name] = (now, done, last[2] if last else 0.0)
        if last is None or now <= last[0]:
            return last[2] if last else 0.0
        inst = (done - last[1]) / (now - last[0])
        rate = inst if last[2] == 0.0 else 0.7 * last[2] + 0.3 * inst
        self._seen[name] = (now, done, rate)
        return rate

    def close(self, st: dict[str, Any] | None = None) -> None:
        if self._progress is not None:
            if st is not None:
                self.update(st)
            self._progress.stop()
            self._progress = None
        elif st is not None and self.enabled:
            print(plain_line(st), file=sys.stderr, flush=True)
