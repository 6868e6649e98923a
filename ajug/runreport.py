"""What ``ajug run`` and ``ajug serve`` say before and after the work, and how they end: nothing
to do, results from code that changed, each failed task's traceback, where the results are and
how to read them; a signal stops the coordinator (130/143 unless the run was over). The
commands they name use the jugfile as the user typed it, so they can be pasted.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
from collections.abc import Callable
from typing import Any

import click

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


# -- how run and serve end ------------------------------------------------------------------
def install_stop(coord: Any, before: Any = None) -> dict[str, int]:
    """SIGINT and SIGTERM stop the coordinator (``before()`` first); the dict says which came."""
    loop = asyncio.get_running_loop()
    got: dict[str, int] = {}

    def handler(sig: int) -> None:
        got.setdefault("signal", sig)
        if before is not None:
            before()
        coord.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    return got


def look_for_stale(coord: Any, ctx: RunContext) -> asyncio.Future[Any] | None:
    """Stored results from code that has changed: checked in a thread while the run starts,
    said in one line when known."""
    from .offline import stale_functions
    from .scheduler import DONE

    sched, graph, store = coord.sched, coord.graph, coord.store
    done = [s == DONE for s in sched.state]
    if not any(done):
        return None
    fut = asyncio.get_running_loop().run_in_executor(None, stale_functions, graph, store, done,
                                                     STALE_SAMPLE)

    def said(f: asyncio.Future[Any]) -> None:
        if f.cancelled() or f.exception() is not None:
            return
        line = stale_warning(ctx, f.result())
        if line:
            click.echo(line, err=True)

    fut.add_done_callback(said)
    return fut


async def end_of_run(coord: Any, ctx: RunContext, prog: Any, stop: dict[str, int],
                     stale: asyncio.Future[Any] | None, code: int,
                     nothing: bool = False) -> tuple[int, dict[str, Any]]:
    """The end of a run or serve: its report; its exit status (130/143 when stopped by a
    signal: 1 would say that a task failed) and the coordinator's final status."""
    if stale is not None:
        try:
            await asyncio.wait_for(asyncio.shield(stale), 30)
        except Exception:  # noqa: BLE001 - only a warning was at stake
            pass
    st = coord.status(detail=True)
    prog.close(st)
    sig = stop.get("signal")
    if st["state"] == "finished":  # stopped after the end (serve --stay): the run's own status
        sig = None
    said = {int(signal.SIGINT): "interrupted", int(signal.SIGTERM): "terminated"}.get(sig, "") \
        if sig is not None else ""

    def echo(line: str) -> None:
        click.echo(line, err=True)

    if nothing and not said:
        echo(results_line(ctx))
    else:
        end_report(ctx, st, echo, said)
    return (128 + int(sig) if sig is not None else code), st
