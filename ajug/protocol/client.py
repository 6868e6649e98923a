"""Clients that ask a coordinator one thing and go: ``ajug status``, ``check``/``sleep-until``
on HOST:PORT, ``invalidate --coordinator`` and the benchmarks.

Each question is a request and its reply over a client connection (``ask``); a reply that
does not come in time, or an ``error`` reply, is an ``AjugError`` saying so. The caller
resolves the token and TLS context (``ajug.cliparams``, ``ajug.access``): nothing here reads
options or the environment.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..errors import AjugError, ConnectError
from . import messages as m
from .connection import Connection, open_connection

T = TypeVar("T")

#: how long a client waits for its connection to close (a TLS shutdown) before going on
CLOSE_WAIT_S = 5.0

#: ``invalidate``: keys per message to a coordinator (about 45 bytes each on the wire).
INVALIDATE_BATCH = 100_000


def new_loop_runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    """``uvloop.run`` where uvloop is installed, else ``asyncio.run``."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


async def hang_up(conn: Connection) -> None:
    """Close and wait until closed, bounded: a TLS connection's shutdown must be done before
    the event loop ends, or its socket is left open (one a question, in a Python session that
    asks through ``ajug.connect``; and closing the loop may fail)."""
    try:
        await asyncio.wait_for(conn.aclose(), CLOSE_WAIT_S)
    except (asyncio.TimeoutError, OSError):
        pass


async def ask(conn: Connection, msg: dict[str, Any], timeout_s: float, late: AjugError,
              refused: str = "the coordinator refused") -> dict[str, Any]:
    """Send ``msg`` and return its reply. No reply within ``timeout_s`` raises ``late``; an
    ``error`` reply raises ``AjugError("<refused>: <its message>")``."""
    conn.send(msg)
    await conn.drain()
    try:
        rep = await asyncio.wait_for(conn.recv(), timeout_s)
    except asyncio.TimeoutError:
        raise late from None
    if rep["op"] == "error":
        raise AjugError(f"{refused}: {rep['msg']}")
    return rep


async def query_status(host: str, port: int, token: bytes, ctx: ssl.SSLContext | None,
                       detail: bool = False, timeout_s: float = 10.0,
                       access: str = "full") -> dict[str, Any]:
    """The coordinator's status (``detail``: with the failures' tracebacks)."""
    conn = await open_connection(host, port, token=token, role="client", access=access,
                                 ssl=ctx, name="status")
    try:
        rep = await ask(conn, m.status(1, detail), timeout_s, AjugError(
            f"the coordinator at {host}:{port} did not answer a status request within "
            f"{timeout_s:g}s"))
        return rep["status"]
    finally:
        await hang_up(conn)


async def invalidate(host: str, port: int, token: bytes, ctx: ssl.SSLContext | None,
                     keys: list[str], timeout_s: float = 30.0) -> None:
    """Tell the coordinator to run these tasks again (their results are already removed)."""
    conn = await open_connection(host, port, token=token, role="client", access="full",
                                 ssl=ctx, name="invalidate")
    try:
        for n, b in enumerate(range(0, max(len(keys), 1), INVALIDATE_BATCH), start=1):
            await ask(conn, m.invalidate(n, keys[b : b + INVALIDATE_BATCH]), timeout_s,
                      ConnectError(f"the coordinator at {host}:{port} did not answer within "
                                   f"{timeout_s:g} s; the results are removed, so a restarted "
                                   "coordinator runs them again"),
                      refused=f"the coordinator at {host}:{port} refused")
    finally:
        await hang_up(conn)


class Remote:
    """A coordinator at ``host:port``, asked one question per call over a fresh connection."""

    def __init__(self, host: str, port: int, token: bytes, access: str,
                 ctx: ssl.SSLContext | None) -> None:
        self.host, self.port = host, port
        self.token = token
        self.access = access
        self.ctx = ctx

    def status(self) -> dict[str, Any]:
        return new_loop_runner()(query_status(self.host, self.port, self.token, self.ctx,
                                              access=self.access))

    def invalidate(self, keys: list[str]) -> None:
        new_loop_runner()(invalidate(self.host, self.port, self.token, self.ctx, keys))
