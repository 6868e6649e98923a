"""How a worker reaches its coordinator: connecting with backoff and jitter (and saying so to
the user), then making the code beside the jugfile importable before any task runs."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any

from . import codeship
from .errors import AuthError, ConnectError, ProtocolError, TLSError
from .protocol import connection as conn_mod
from .protocol import messages as m

log = logging.getLogger(__name__)


def say(o: Any, msg: str, level: int = logging.INFO) -> None:
    """What an ``ajug work`` user should see (its CLI passes ``say``): connecting,
    connected, lost; otherwise (workers of ``ajug run``) a log line."""
    if o.say is not None:
        o.say(msg)
    else:
        log.log(level, "%s", msg)


def reason(e: BaseException, where: str) -> str:
    """Why a connection failed, in a few words (not the whole sentence again)."""
    text = str(e) or type(e).__name__
    text = text.removeprefix(f"cannot reach the coordinator at {where}: ")
    return text.split("; is `ajug serve`")[0]


async def connect(o: Any, first: bool) -> Any:
    """Connect with backoff and jitter until connect_timeout; AuthError is final. The first
    failure is said at once, in one line; then one line when connected or given up."""
    t0 = time.monotonic()
    deadline = t0 + o.connect_timeout_s
    delay = 0.05
    where = f"{o.host}:{o.port}"
    told = False
    while True:
        try:
            conn = await conn_mod.open_connection(
                o.host,
                o.port,
                token=o.token,
                role="worker",
                access="full",
                ssl=o.ssl,
                name=o.name or socket.gethostname(),
            )
        except (AuthError, TLSError):
            raise  # retrying cannot fix a wrong token or an untrusted certificate
        except (ConnectError, ProtocolError, OSError) as e:
            why = reason(e, where)
            if time.monotonic() + delay > deadline:
                what = "reach" if first else "reconnect to"
                raise ConnectError(
                    f"cannot {what} the coordinator at {where} after "
                    f"{o.connect_timeout_s:g} s ({why}): is `ajug serve` running "
                    "there? (--connect-timeout sets how long to keep trying)"
                ) from None
            unreachable = isinstance(e, OSError) or str(e).startswith("cannot reach")
            if first and not told and unreachable:
                # nothing listens there (yet): said to the user now, not after a minute of
                # silence (one that answers and then fails the handshake is said once, at the
                # end). A worker that announces nothing (ajug run's; all but the first of ajug
                # work -j N) logs it quietly: its run has ended, or another worker said it.
                say(o, f"waiting for the coordinator at {where} ({why}); retrying "
                    f"for {o.connect_timeout_s:g} s", logging.INFO)
                told = True
            log.debug("coordinator not reachable (%s); retrying in %.2fs", why, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
            continue
        after = f" after {time.monotonic() - t0:.1f} s" if told else ""
        if first:
            say(o, f"connected to the coordinator at {where}{after}")
        else:
            say(o, f"reconnected to the coordinator at {where}{after}")
        return conn


async def fetch_code(request: Callable[[Callable[[int], dict[str, Any]]], Any],
                     conn: Any) -> None:
    """Make the code beside the jugfile importable here before any task runs (codeship):
    its directories on sys.path where this machine has them, the coordinator's copy for
    the rest."""
    fut = request(lambda rid: m.code(rid, bundle=False))
    await conn.drain()
    rep = await fut
    missing = codeship.prepare_worker(rep["jugfile"], rep["roots"])
    if missing:
        fut = request(lambda rid: m.code(rid, bundle=True))
        await conn.drain()
        rep = await fut
        mods = [codeship.ModuleSource(x["name"], x["path"], x["pkg"], x["src"])
                for x in rep["modules"]]
        codeship.install_bundle(mods)
        log.info("%s is not on this machine: %d module(s) from the coordinator's copy",
                 ", ".join(missing), len(mods))
