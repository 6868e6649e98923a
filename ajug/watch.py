"""``ajug status --watch``: follow a run until it ends, show its final state, say how it ended.

Live (HOST:PORT): one connection for the whole watch, asked at least every ``LIVE_POLL_S``. A
coordinator that finishes waits a few seconds (``finish_grace_s``) for its connections to hang
up, so the watch sees the final state before the coordinator exits, and says "the run has
finished"; a connection that closes before that means the coordinator went away (stopped,
killed, its machine lost), and the watch says so with the last state it saw.

Offline (JUGFILE): the store is read again every interval until every task is done, or every
task not done has failed or is blocked behind a failure (nothing more will happen without a
new run).

Exit status: 0 every task done; 1 the run ended otherwise, or the coordinator went away;
130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from .errors import AjugError, ProtocolError
from .progress import RunProgress
from .status import plain_line

#: A live watch asks at least this often: the final state must be seen before the coordinator
#: exits (it waits ``finish_grace_s``, 3 s, for its connections to close).
LIVE_POLL_S = 1.0
#: No status reply within this long: the coordinator is hung or the network is gone.
REPLY_TIMEOUT_S = 10.0


def _all_done(st: dict[str, Any]) -> bool:
    return st["totals"].get("done", 0) == st["tasks"] and not st.get("barrier")


class _View:
    """Bars or plain lines on stderr, or JSON lines on stdout."""

    def __init__(self, as_json: bool, interval_s: float) -> None:
        self.as_json = as_json
        self.interval_s = interval_s
        self.last: dict[str, Any] | None = None
        self._printed = 0.0
        self.prog = None if as_json else RunProgress(console=Console(stderr=True),
                                                     interval_s=max(interval_s, 5.0))

    def show(self, st: dict[str, Any], final: bool = False) -> None:
        self.last = st
        if self.prog is not None:
            self.prog.update(st)
            return
        now = time.monotonic()
        if final or now - self._printed >= self.interval_s:
            self._printed = now
            click.echo(json.dumps(st, sort_keys=True))

    def end(self, line: str) -> None:
        """The final state, shown (again if need be), then how the run ended."""
        if self.prog is not None:
            self.prog.close(self.last)
        click.echo(f"ajug: {line}", err=True)


def _ended(view: _View, st: dict[str, Any]) -> int:
    view.show(st, final=True)
    if _all_done(st):
        view.end(f"the run has finished: {plain_line(st)}")
        return 0
    view.end(f"the run has ended without finishing every task: {plain_line(st)} "
             "(`ajug status JUGFILE --failed` shows why)")
    return 1


def watch_live(host: str, port: int, token: bytes, ctx: ssl.SSLContext | None, access: str,
               detail: bool, interval_s: float, as_json: bool,
               runner: Callable[[Any], Any]) -> int:
    view = _View(as_json, interval_s)
    try:
        return runner(_watch_live(view, host, port, token, ctx, access, detail, interval_s))
    except KeyboardInterrupt:
        if view.prog is not None:
            view.prog.close(view.last)
        click.echo("ajug: interrupted", err=True)
        return 130


async def _watch_live(view: _View, host: str, port: int, token: bytes,
                      ctx: ssl.SSLContext | None, access: str, detail: bool,
                      interval_s: float) -> int:
    from .protocol import connection as conn_mod
    from .protocol import messages as m
    from .protocol.client import hang_up

    conn = await conn_mod.open_connection(host, port, token=token, role="client", access=access,
                                          ssl=ctx, name="status --watch")
    why = ""
    try:
        for rid in range(1, 2**62):
            try:
                conn.send(m.status(rid, detail))
                await conn.drain()
                rep = await asyncio.wait_for(conn.recv(), REPLY_TIMEOUT_S)
            except asyncio.TimeoutError:
                why = f"did not answer within {REPLY_TIMEOUT_S:g} s"
                break
            except (ProtocolError, OSError) as e:
                why = str(e) or type(e).__name__
                break
            if rep["op"] == "error":
                raise AjugError(f"the coordinator refused: {rep['msg']}")
            st = rep["status"]
            if st["state"] == "finished":
                return _ended(view, st)
            view.show(st)
            await asyncio.sleep(min(interval_s, LIVE_POLL_S))
    finally:
        await hang_up(conn)
    last = view.last
    seen = f"; last seen: {plain_line(last)}" if last is not None else ""
    view.end(f"the coordinator at {host}:{port} went away before the run finished ({why}{seen}): "
             "it was stopped, or died. `ajug status JUGFILE` reads the store")
    return 1


def watch_offline(fetch: Callable[[], dict[str, Any]], interval_s: float, as_json: bool) -> int:
    view = _View(as_json, interval_s)
    try:
        while True:
            st = fetch()
            t = st["totals"]
            settled = t.get("done", 0) + t.get("failed", 0) + t.get("blocked", 0) == st["tasks"]
            if _all_done(st) or (settled and not st.get("barrier")):
                return _ended(view, st)
            view.show(st)
            time.sleep(interval_s)
    except KeyboardInterrupt:
        if view.prog is not None:
            view.prog.close(view.last)
        click.echo("ajug: interrupted", err=True)
        return 130
