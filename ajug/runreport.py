"""What ``ajug run`` and ``ajug serve`` say before and after the work: nothing to do, results
from code that changed, each failed task's traceback, where the results are and how to read
them. The commands they name use the jugfile as the user typed it, so they can be pasted.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

from .config import mask
from .status import plain_line

#: Failed tasks whose traceback the end of a run prints in full; the rest are counted.
FULL_TRACEBACKS = 3
#: Stored results per function whose source hash ``ajug run`` checks at start (status: 1000).
STALE_SAMPLE = 200

Echo = Callable[[str], None]


class RunContext:
    """How the user named the jugfile and the store, for commands to paste."""

    def __init__(self, jugfile_arg: str, store_arg: str | None, store_url: str) -> None:
        self.jugfile_arg = jugfile_arg
        self.store_arg = store_arg
        self.store_url = store_url

    def command(self, *words: str) -> str:
        """``ajug WORD JUGFILE [--store URL] ...``, quoted for a shell."""
        verb, rest = words[0], words[1:]
        parts = ["ajug", verb, shlex.quote(self.jugfile_arg)]
        if self.store_arg:
            parts += ["--store", shlex.quote(self.store_arg)]
        return " ".join([*parts, *rest])

    @property
    def store_shown(self) -> str:
        """The store as a user reads it: a path relative to here when it is below here, a redis
        URL without its password."""
        url = self.store_url
        if "://" not in url and not url.startswith("memory:"):
            try:
                rel = os.path.relpath(url)
            except ValueError:  # another drive (Windows)
                return url
            return url if rel.startswith("..") else rel
        return str(mask("store", url))


def nothing_to_do(ctx: RunContext, st: dict[str, Any]) -> str:
    return f"ajug: nothing to do: {st['totals']['done']} results already in {ctx.store_shown}"


def stale_warning(ctx: RunContext, stale: list[dict[str, Any]]) -> str | None:
    """One line naming the functions whose stored results came from other code."""
    if not stale:
        return None
    parts = []
    for f in stale:
        of = f"{f['stale']} of {f['stored']}" if f["exact"] else \
            f"{f['stale']} of {f['checked']} checked"
        parts.append(f"{f['name']} ({of})")
    return (f"ajug: warning: stored results of {', '.join(parts)} came from code that has "
            f"changed since; they are reused, as jug does. `{ctx.command('invalidate', '--stale')}` "
            "computes them again")


def failure_lines(ctx: RunContext, failures: list[dict[str, Any]]) -> list[str]:
    """Each failed task once: the first ``FULL_TRACEBACKS`` with their tracebacks, then how
    many more and the command that shows them all."""
    out: list[str] = []
    for f in failures[:FULL_TRACEBACKS]:
        where = f.get("worker_name") or f.get("worker") or ""
        how = [f["kind"], f"attempt {f.get('attempts', 1)}"] + ([f"on {where}"] if where else [])
        out.append(f"ajug: task {f['func']} {f['key'][:12]} failed ({', '.join(how)}):")
        tb = (f.get("tb") or "").rstrip("\n")
        out.append(tb if tb else f"{f['type']}: {f['msg']}")
    more = len(failures) - FULL_TRACEBACKS
    if more > 0:
        out.append(f"ajug: ... and {more} more failed task(s); "
                   f"`{ctx.command('status', '--failed')}` shows them all")
    return out


def results_line(ctx: RunContext) -> str:
    """Where the results are and how to read them, in one line."""
    return (f"ajug: results are in {ctx.store_shown}; read them with "
            f"`{ctx.command('shell')}` (value(name)) or, in Python, "
            f"ajug.init({ctx.jugfile_arg!r}) and ajug.value(task)")


def end_report(ctx: RunContext, st: dict[str, Any], echo: Echo, interrupted: str = "") -> None:
    """The end of a run: failures, the final counts, where the results are."""
    for line in failure_lines(ctx, st["failures"]):
        echo(line)
    echo(f"ajug: {plain_line(st)}")
    if interrupted:
        echo(f"ajug: {interrupted}")
    elif st["totals"].get("done", 0):
        echo(results_line(ctx))
