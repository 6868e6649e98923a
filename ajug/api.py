"""ajug from Python: run a jugfile (``ajug.run``) or talk to a running coordinator
(``ajug.connect``), for a notebook, a GUI plug-in or a script that drives an analysis.

``run`` is ``ajug run``: a coordinator and local worker processes (spawned, never forked: the
caller's process may have threads, an event loop, a GUI), the same progress display (bars on a
terminal and in Jupyter, a line every 10 s elsewhere), the same end-of-run report; it returns a
``RunResult`` instead of an exit status. Called where an event loop already runs (Jupyter), it
runs in a thread of its own; interrupting the caller (Ctrl-C, the notebook's stop button) stops
the run as Ctrl-C stops ``ajug run``.

``connect`` returns a ``Client`` that asks a coordinator (``ajug serve``, on any machine) for
its status, waits for the run to finish, lists failures and has tasks run again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AjugError, ConnectError, ConnectionClosed, UsageError

__all__ = ["Client", "RunResult", "connect", "run"]


@dataclass
class RunResult:
    """How a run ended, and its results.

    ``exit_status`` is what ``ajug run`` would exit with (0: every task done); ``status`` the
    coordinator's final status (as ``ajug status --json``)."""

    jugfile: str
    store: str
    exit_status: int
    status: dict[str, Any]
    reason: str | None = None
    _namespace: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def counts(self) -> dict[str, int]:
        """Tasks per state: ``done``, ``failed``, ``blocked``, ``ready``, ..."""
        return dict(self.status["totals"])

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Each failed task: ``func``, ``key``, ``kind``, ``type``, ``msg``, ``tb``, ..."""
        return list(self.status.get("failures", []))

    @property
    def namespace(self) -> dict[str, Any]:
        """The jugfile's names (its Tasks among them), loaded against the run's store, as
        ``ajug.init`` gives them."""
        if self._namespace is None:
            from . import init

            self._namespace = init(self.jugfile, self.store)[1]
        return self._namespace

    def value(self, what: Any) -> Any:
        """The result of a Task, or of a name in the jugfile (``"total"``): a list of Tasks
        gives a list of results, as ``ajug.value``."""
        from .task import value

        if isinstance(what, str):
            ns = self.namespace
            if what not in ns:
                raise KeyError(f"{what!r} is not a name in {self.jugfile}")
            what = ns[what]
        else:
            self.namespace  # noqa: B018 - the store that value() reads from
        return value(what)

    def __repr__(self) -> str:
        c = self.counts
        return (f"<RunResult {Path(self.jugfile).name}: exit {self.exit_status}, "
                f"{c.get('done', 0)} done, {c.get('failed', 0)} failed, "
                f"{c.get('blocked', 0)} blocked>")


def run(jugfile: str | os.PathLike[str], jobs: int | None = None, store: str | None = None, *,
        progress: bool = True, retries: int = 0, task_timeout: float | None = None,
        fail_fast: bool = False, resources: str | None = None,
        max_attempts: int = 3) -> RunResult:
    """Run ``jugfile`` to its end with ``jobs`` local worker processes (default: one per core)
    against ``store`` (a URL; default: ``<jugfile stem>.ajugdata`` beside it), as ``ajug run``
    does, and return how it ended. Bad arguments raise ``UsageError``; a run with failed tasks
    returns (``result.ok`` is False, ``result.failures`` says why)."""
    from .jugfile import check_jugfile, default_store_url
    from .localrun import LocalRun, run_local
    from .runreport import RunContext
    from .serving import Settings
    from .workoffer import host_offer

    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise UsageError(f"jobs={jobs!r}: give a number of worker processes, 1 or more")
    if task_timeout is not None and not task_timeout > 0:
        raise UsageError(f"task_timeout={task_timeout!r}: give a positive number of seconds")
    if retries < 0 or max_attempts < 1:
        raise UsageError("retries must be 0 or more, max_attempts 1 or more")
    host_offer(resources, None)  # checked before anything starts
    path = check_jugfile(str(jugfile))
    settings = Settings(
        jugfile=str(path), store_url=store or default_store_url(path), host="127.0.0.1",
        port=0, token=secrets.token_hex(16).encode(), retries=retries,
        max_attempts=max_attempts, fail_fast=fail_fast, task_timeout_s=task_timeout)
    local = LocalRun(settings, RunContext(str(jugfile), store, settings.store_url),
                     jobs=jobs or os.cpu_count() or 1, progress=progress, fork_main=None,
                     resources=resources)
    summary = _run_here_or_in_a_thread(local, run_local)
    return RunResult(str(path), settings.store_url, summary.code, summary.status,
                     summary.reason)


def _run_here_or_in_a_thread(local: Any, run_local: Any) -> Any:
    """``run_local(local)`` in this thread, or (an event loop runs here: Jupyter) in another,
    stopped like ``ajug run`` on Ctrl-C in this one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_local(local)
    out: dict[str, Any] = {}
    started = threading.Event()

    def on_start(interrupt: Any) -> None:
        out["interrupt"], out["loop"] = interrupt, asyncio.get_running_loop()
        started.set()

    local.on_start = on_start

    def target() -> None:
        try:
            out["summary"] = run_local(local)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            out["error"] = e

    t = threading.Thread(target=target, name="ajug-run", daemon=True)
    wanted = threading.Event()  # a stop asked for before the coordinator was open

    def stop() -> None:
        if started.is_set():
            out["loop"].call_soon_threadsafe(out["interrupt"])
        else:
            wanted.set()

    # SIGINT stops the run, whoever handles it otherwise (asyncio.run's runner, a kernel)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop())
    t.start()
    try:
        while t.is_alive():
            try:
                t.join(0.2)
            except KeyboardInterrupt:
                stop()
            if wanted.is_set() and started.is_set():
                wanted.clear()
                stop()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if "error" in out:
        raise out["error"]
    return out["summary"]


class Client:
    """A coordinator (``ajug serve``) at ``host:port``; each call is one request over a fresh,
    authenticated connection, so a client can be kept for as long as one likes."""

    def __init__(self, host: str, port: int, token: bytes, access: str, ssl: Any,
                 timeout_s: float) -> None:
        self.host, self.port = host, port
        self._token, self.access, self._ssl = token, access, ssl
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"<ajug.Client {self.host}:{self.port} access={self.access}>"

    def _call(self, coro: Any) -> Any:
        from .protocol.client import new_loop_runner

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return new_loop_runner()(coro)
        box: dict[str, Any] = {}  # a loop runs here (Jupyter): ask from a thread

        def target() -> None:
            try:
                box["v"] = asyncio.run(coro)
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                box["e"] = e

        t = threading.Thread(target=target, daemon=True)
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        return box["v"]

    def status(self, detail: bool = False) -> dict[str, Any]:
        """What ``ajug status HOST:PORT --json`` prints (``detail``: failures' tracebacks)."""
        from .protocol.client import query_status

        return self._call(query_status(self.host, self.port, self._token, self._ssl, detail,
                                       self.timeout_s, self.access))

    def failed(self) -> list[dict[str, Any]]:
        """The failed tasks, with their tracebacks."""
        return list(self.status(detail=True).get("failures", []))

    def wait(self, timeout: float | None = None, interval: float = 1.0) -> dict[str, Any]:
        """Wait until the run is finished (every task done, or the rest failed or blocked);
        its final status. ``TimeoutError`` after ``timeout`` seconds. The status is asked over
        one connection, which the coordinator waits for before it exits at the end of its run,
        so the final status is seen; ``ConnectError`` if the coordinator goes away first."""
        return self._call(self._wait(timeout, interval))

    async def _wait(self, timeout: float | None, interval: float) -> dict[str, Any]:
        from .protocol import messages as m
        from .protocol.client import ask, hang_up
        from .protocol.connection import open_connection

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        where = f"{self.host}:{self.port}"
        conn = await open_connection(self.host, self.port, token=self._token, role="client",
                                     access=self.access, ssl=self._ssl, name="wait")
        try:
            for rid in range(1, 2**62):
                try:
                    rep = await ask(conn, m.status(rid, False), self.timeout_s, AjugError(
                        f"the coordinator at {where} did not answer within {self.timeout_s:g} s"))
                except (ConnectionClosed, OSError) as e:
                    raise ConnectError(f"the coordinator at {where} went away before its run "
                                       f"finished ({e})") from None
                st: dict[str, Any] = rep["status"]
                if st.get("state") == "finished":
                    return st
                if deadline is not None and loop.time() >= deadline:
                    raise TimeoutError(f"the run at {where} is not finished after {timeout:g} s: "
                                       f"{st['totals']}")
                left = interval if deadline is None else max(0.0, min(interval,
                                                                      deadline - loop.time()))
                await asyncio.sleep(left)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            await hang_up(conn)

    def invalidate(self, tasks: Iterable[Any]) -> None:
        """Run these tasks (Tasks or their keys) and everything downstream of them again."""
        from .protocol.client import invalidate

        keys = [t if isinstance(t, str) else t.decode() if isinstance(t, bytes) else t.key
                for t in tasks]
        if self.access != "full":
            raise UsageError("invalidate needs the full token (this client has read access)")
        self._call(invalidate(self.host, self.port, self._token, self._ssl, keys,
                              self.timeout_s))


def connect(address: str, token: str | bytes | None = None, *, token_file: str | None = None,
            read_only: bool = False, tls_ca: str | None = None, tls_cert: str | None = None,
            tls_key: str | None = None, timeout: float = 10.0) -> Client:
    """A ``Client`` for the coordinator at ``address`` ("host:port"). The token: ``token``,
    else ``token_file``, else ``AJUG_TOKEN`` (``read_only``: ``AJUG_READ_TOKEN``, status
    only). The address is checked now; the coordinator is first asked at the first call."""
    from .access import read_token
    from .cliparams import parse_address, tls_context

    host, port = parse_address(address)
    if isinstance(token, bytes):
        tok = token
    else:
        tok = read_token(token, token_file, "AJUG_READ_TOKEN" if read_only else "AJUG_TOKEN")
    if not tok:
        raise UsageError("no token: pass token= or token_file=, or set "
                         + ("AJUG_READ_TOKEN" if read_only else "AJUG_TOKEN"))
    ctx = tls_context(False, tls_cert, tls_key, tls_ca)
    return Client(host, port, tok, "read" if read_only else "full", ctx, timeout)

