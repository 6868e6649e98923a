"""A worker process: runs leased tasks in its main thread while a network thread keeps the
connection, renews the leases every TTL/3, and reports results.

Task code runs in the main thread (signals, libraries that insist on it); the network thread
runs an asyncio loop, so a task that computes for an hour still has its lease renewed. If the
coordinator goes away, the network thread reconnects with backoff and jitter, tells the new
coordinator which tasks it is still running (``resume``) and keeps them.

What to say and when is decided by ``WorkerSession`` (ajug/worksession.py, no I/O); what
becomes of results by ajug/workresults.py. This module moves leases and reports between the
threads and bytes between the connection and the session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from .errors import AjugError, ProtocolError
from .graph import decode_args
from .inbox import Inbox
from .protocol import messages as m
from .protocol.client import hang_up, new_loop_runner
from .stores import encoding, open_store
from .task import Task, value
from .tracebacks import worker_file
from .watchdog import Expired, Watchdog, replace_by_exit
from .workconnect import connect, fetch_code, say
from .workoptions import WorkerOptions
from .workresults import (  # noqa: F401 - CachingStore, RecentKeys: importable from here too
    CachingStore,
    RecentKeys,
    ResultCache,
    SaveBatch,
    failure_report,
    given_back_report,
    skipped_report,
)
from .worksession import Lease, Report, Update, WorkerSession, leases_wanted

log = logging.getLogger(__name__)
worker_file(__file__)

SWITCH_INTERVAL_S = 0.0005
#: how long a worker whose task timed out waits for the coordinator to have its reports
REPORT_WAIT_S = 10.0


class Worker:
    def __init__(self, opts: WorkerOptions) -> None:
        self.o = opts
        self.leases = Inbox()
        #: the conversation with the coordinator (touched by the network thread only)
        self.session = WorkerSession(offer=opts.offer)
        self.finished = threading.Event()
        self.fatal: BaseException | None = None
        self.store_url: str | None = opts.store_url
        self.store_ready = threading.Event()
        self.ran = 0
        self.failed = 0  # tasks that raised here
        self.idle_exited = False  # ended by --idle-exit, not by the coordinator
        self.avg_task_s = 0.0
        self.ident = f"{socket.gethostname()}:{os.getpid()}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._funcs: dict[bytes, Any] = {}
        self.produced = RecentKeys()
        self._code_ready = False
        self.cache = ResultCache()
        #: set by the network thread after each renew (or resume) answer
        self._renewed = threading.Event()
        self._running: Lease | None = None
        self._batch: SaveBatch | None = None
        #: events to set once every report so far has been answered (network thread)
        self._report_waiters: list[threading.Event] = []
        #: a task timed out: this process asks for no more leases
        self._stopping = False
        self._watchdog: Watchdog | None = None

    # -- main thread ------------------------------------------------------------------------
    def run(self) -> int:
        """Work until the coordinator says all is done. Returns the process exit status."""
        # The network thread must get the GIL promptly while task code runs in this one: a lease
        # reply waiting 5 ms (the default switch interval) for it starves the worker of work.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        net = threading.Thread(target=self._net_thread, name="ajug-net", daemon=True)
        net.start()
        while not self.store_ready.is_set():
            if self.store_ready.wait(0.1):
                break
            if self.fatal is not None or not net.is_alive():
                return self._fatal_status()
        assert self.store_url is not None
        try:
            store = open_store(self.store_url)
        except AjugError as e:
            self.fatal = e
            self._stop_net()
            return self._fatal_status()
        cache = self.cache = ResultCache()
        Task.store = CachingStore(store, cache)
        batch = self._batch = SaveBatch(store, cache, self._post, self._save_failed)
        self._watchdog = Watchdog(self._timed_out, below=__file__)
        try:
            self._work(batch)
            batch.close()
        except KeyboardInterrupt:
            log.info("interrupted")
            self._stop_net()
            return 130
        finally:
            self._watchdog.close()
        self._stop_net()
        net.join(10)
        store.close()
        return self._fatal_status() if self.fatal is not None else 0

    def _work(self, batch: SaveBatch) -> None:
        """Run leases as they come until there are no more (or --max-tasks)."""
        while True:
            if batch.items:
                try:
                    lease = self.leases.get_nowait()
                except IndexError:
                    batch.flush()  # nothing queued: report what we have now
                    continue
            else:
                lease = self.leases.get()
            if lease is None:
                return
            if not self._may_start(lease, batch):
                continue
            self._execute(lease, batch)
            if batch.due():
                batch.flush()
            if self.o.max_tasks is not None and self.ran >= self.o.max_tasks:
                return

    def _may_start(self, lease: Lease, batch: SaveBatch) -> bool:
        """Start a lease only while it is known to be ours: not declared lost, and confirmed
        within the TTL. A worker that was frozen (SIGSTOP, swapping) or cut off longer than
        that asks for a renewal first and waits for the answer, so that it never starts a task
        that the coordinator has meanwhile handed to another worker."""
        while not lease.lost:
            if time.monotonic() < lease.valid_until:
                return True
            if self.finished.is_set() or self.fatal is not None:
                return False
            if batch.items:
                batch.flush()
            self._renewed.clear()
            self._call_net(self._ask_renew)
            self._renewed.wait(1.0)
        log.info("task %s (%s) not started: its lease was reclaimed by the coordinator",
                 lease.func_name, lease.key[:12])
        return False

    def _call_net(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` in the network thread (if it still runs)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

    def _fatal_status(self) -> int:
        if self.fatal is None:
            return 0
        raise self.fatal

    def _execute(self, lease: Lease, batch: SaveBatch) -> None:
        if lease.after and not all(k in self.produced for k in lease.after):
            # an input failed here (or was lost): give the follow-on back, it never ran
            log.debug("task %s (%s) skipped: an input was not produced here", lease.func_name,
                      lease.key[:12])
            self._post([skipped_report(lease)])
            return
        t0 = time.perf_counter()
        try:
            f = self._funcs.get(lease.func_blob)
            if f is None:
                f = self._funcs[lease.func_blob] = cloudpickle.loads(lease.func_blob)
            args, kwargs = decode_args(lease.args)
            self._running = lease
            if self._watchdog is not None:
                self._watchdog.start(lease.key, lease.timeout)
            try:
                result = f(*[value(a) for a in args], **{k: value(v) for k, v in kwargs.items()})
            finally:
                if self._watchdog is not None:
                    self._watchdog.finish()
                self._running = None
            rt = time.perf_counter() - t0
            # pickled now: what is stored, and what dependents get, is the result as it was
            # returned, whatever the object goes through afterwards
            pickled = encoding.pickle_value(result)
            del result
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            self._post_failure(lease, e)
            self._count(time.perf_counter() - t0)
            return
        meta = {"func": lease.func_name, "src": lease.func_src, "rt": rt, "worker": self.ident,
                "ts": time.time()}
        try:
            enc = encoding.encode_pickled(pickled, meta, bool(getattr(batch.store, "compress", False)))
        except Exception as e:  # noqa: BLE001 - metadata that does not pack: a usage error
            self._post_failure(lease, e)
            self._count(time.perf_counter() - t0)
            return
        self.cache.put_produced(lease.key, pickled, self.leases.waits_on)
        self.produced.add(lease.key)
        batch.add(lease, enc, rt)
        self._count(time.perf_counter() - t0)

    def _count(self, dt: float) -> None:
        self.ran += 1
        self.avg_task_s = dt if self.ran == 1 else 0.8 * self.avg_task_s + 0.2 * dt

    def _post_failure(self, lease: Lease, e: BaseException) -> None:
        report, own = failure_report(lease, e)
        if own:
            self.failed += 1
        self._post([report])

    def _save_failed(self, lease: Lease, e: BaseException) -> None:
        """The batch could not save this result: not produced here after all."""
        self.produced.discard(lease.key)
        self._post_failure(lease, e)

    def _timed_out(self, exp: Expired) -> None:
        """The watchdog thread: the running task is past its timeout. Report it (kind
        ``timeout``, with its stack), give back the leases not started, wait (bounded) for
        the coordinator to have the reports, then replace this process: the task's code may
        be stuck anywhere, so this process is not reused."""
        lease = self._running
        if lease is None or lease.key != exp.key:
            return
        log.warning("task %s (%s) %s; replacing this worker process", lease.func_name,
                    lease.key[:12], exp.message())
        err = m.task_error("Timeout", exp.message(), exp.stack[-20000:], "timeout")
        reports: list[Report] = [("failed", m.failed_item(lease.key, lease.tok, err))]
        while True:
            try:
                queued = self.leases.get_nowait()
            except IndexError:
                break
            if queued is not None:
                reports.append(given_back_report(queued))
        self._stopping = True  # no more leases: the reports go in a request answered at once
        reported = threading.Event()
        self._call_net(self._on_reports, reports, reported)
        batch = self._batch
        if batch is not None and batch.items:
            batch.flush()  # results finished before this task: saved and reported first
        if not reported.wait(REPORT_WAIT_S):
            log.warning("the coordinator did not confirm the timeout report within %g s; it "
                        "will learn of it when this process's connection closes", REPORT_WAIT_S)
        self._stop_net()
        replace = self.o.replace or replace_by_exit
        replace()

    def _post(self, reports: list[Report]) -> None:
        """Any thread: hand reports to the session, to go with the next request."""
        self._call_net(self._on_reports, reports)

    def _stop_net(self) -> None:
        self.finished.set()
        if self._kick is not None:
            self._call_net(self._kick.set)

    # -- network thread ---------------------------------------------------------------------
    def _net_thread(self) -> None:
        try:
            new_loop_runner()(self._net_main())
        except BaseException as e:  # noqa: BLE001 - hand anything to the main thread
            if self.fatal is None:
                self.fatal = e
        finally:
            self.leases.put(None)

    def _on_reports(self, reports: list[Report], reported: threading.Event | None = None
                    ) -> None:
        """``reported``: set once these reports (and all before them) have been answered."""
        self.session.add_reports(reports)
        if reported is not None:
            self._report_waiters.append(reported)
        assert self._kick is not None
        self._kick.set()

    def _ask_renew(self) -> None:
        self.session.renew_soon()
        if self._kick is not None:
            self._kick.set()

    def _apply(self, up: Update) -> None:
        """Act on what a reply changed: lost leases out of the inbox, new ones in."""
        if up.lost_keys:
            dropped = 0
            for lz in up.lost:
                try:
                    self.leases.items.remove(lz)
                    dropped += 1
                except ValueError:  # running (or about to: the main thread checks ``lost``)
                    pass
            log.info("%d lease(s) were reclaimed by the coordinator (%d queued ones dropped)",
                     up.lost_keys, dropped)
        if up.new:
            self.leases.put(*up.new)
        if up.renewed:
            self._renewed.set()
        if up.finished:
            self.finished.set()
            self.leases.put(None)

    def _want(self) -> int:
        if self.finished.is_set() or self._stopping:
            return 0
        return leases_wanted(held=len(self.session.queued), unstarted=self.leases.qsize(),
                             ran=self.ran, avg_task_s=self.avg_task_s, prefetch=self.o.prefetch,
                             max_tasks=self.o.max_tasks)

    def _check_idle(self) -> None:
        """--idle-exit: idle that long, finish as if the run were done (a lease reply can no
        longer come)."""
        if self.o.idle_exit_s is None or self.finished.is_set():
            return
        idle = self.session.idle_for(time.monotonic())
        if idle is not None and idle >= self.o.idle_exit_s:
            log.info("no task for %gs (--idle-exit): exiting", self.o.idle_exit_s)
            self.idle_exited = True
            self.finished.set()
            self.leases.put(None)

    async def _net_main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        first = True
        while True:
            conn = await connect(self.o, first)
            info = conn.welcome_info
            self.session.lease_ttl_s = info.get("lease_ttl_ms", 30000) / 1000.0
            if self.store_url is None:
                self.store_url = info.get("store")
            self.store_ready.set()
            try:
                done = await self._session(conn, resume=not first)
            except (ProtocolError, OSError) as e:
                if self.finished.is_set():  # stopping anyway (Ctrl-C, --max-tasks)
                    return
                say(self.o, f"lost the coordinator ({e}); reconnecting for "
                          f"{self.o.connect_timeout_s:g} s", logging.WARNING)
                done = False
            finally:
                await hang_up(conn)  # bounded: a TLS shutdown done before the loop ends
            first = False
            if done:
                return

    async def _session(self, conn: Any, resume: bool) -> bool:
        """One connection: the code first (once), then the session's requests, until the run
        is over for this worker (True) or the connection fails (raises)."""
        awaiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        loop = asyncio.get_running_loop()

        def request(make: Callable[[int], dict[str, Any]]) -> asyncio.Future[dict[str, Any]]:
            """Send the message ``make(id)``; the future is resolved by its reply."""
            rid = self.session.next_id()
            fut = loop.create_future()
            awaiting[rid] = fut
            conn.send(make(rid))
            return fut

        rtask = asyncio.ensure_future(self._read(conn, awaiting))
        try:
            if not self._code_ready:
                await fetch_code(request, conn)
                self._code_ready = True
            # a new connection: idle from its first empty answer on
            self.session.on_reconnect(time.monotonic(), resume=resume)
            return await self._converse(conn, rtask)
        finally:
            rtask.cancel()
            try:
                await rtask
            except BaseException:
                pass

    async def _read(self, conn: Any, awaiting: dict[int, asyncio.Future[dict[str, Any]]]
                    ) -> None:
        """Replies to the futures awaiting them, or to the session."""
        try:
            while True:
                msg = await conn.recv()
                if msg["op"] == "error":
                    raise ProtocolError(f"coordinator refused: {msg.get('msg')}")
                fut = awaiting.pop(msg.get("re"), None) if "re" in msg else None
                if fut is not None:
                    if not fut.done():
                        fut.set_result(msg)
                    continue
                self._apply(self.session.on_reply(msg, time.monotonic()))
                assert self._kick is not None
                self._kick.set()
        except BaseException as e:
            for fut in awaiting.values():
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else ProtocolError(str(e)))
                    fut.exception()  # the session reports the reader's error, once
            awaiting.clear()
            raise

    async def _converse(self, conn: Any, rtask: asyncio.Future[Any]) -> bool:
        """Send what the session says is due, then wait for a reply, the main thread or the
        next renewal; say ``bye`` once the run is over and nothing is left to report."""
        session, kick = self.session, self._kick
        assert kick is not None
        while True:
            if rtask.done():
                rtask.result()
                raise ProtocolError("connection closed")
            self._check_idle()
            if self.finished.is_set() and session.quiet():
                conn.send(m.bye())
                await conn.drain()
                return True
            if self._report_waiters and session.quiet():
                for waiter in self._report_waiters:
                    waiter.set()
                self._report_waiters.clear()
            for msg in session.due_messages(time.monotonic(), self._want()):
                conn.send(msg)
            await conn.drain()
            kicked: asyncio.Future[Any] = asyncio.ensure_future(kick.wait())
            await asyncio.wait([kicked, rtask], timeout=session.next_wakeup(time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            kicked.cancel()
            kick.clear()
