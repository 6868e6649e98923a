"""The coordinator's lifecycle: listen, load, serve, close; the asyncio glue between connections
and the Scheduler.

Every decision is the Scheduler's; each connection is a ``session.ConnSession``; loading the
jugfile is ``loading``; the status as data is ``statusdata``. This module opens the store and
takes its owner lock, listens, runs the expiry timer, renews the lock, wakes waiting lease
requests, has results confirmed (``endcheck``) before calling the run finished, and reloads past
a barrier.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import socket
import time
from array import array
from collections.abc import Callable
from typing import Any, cast

from .codeship import MAX_BUNDLE_BYTES, collect_bundle
from .endcheck import confirm_results, log_vanished
from .errors import AjugError, StoreLocked, UsageError
from .failures import FailureRecords, record_new_failures
from .graph import Graph
from .jugfile import LoadedJugfile
from .loading import load_run, store_url_for_workers
from .lockkeeper import LockKeeper, lock_ttl_for
from .protocol import connection as conn_mod
from .protocol.refusals import RefusalLog
from .scheduler import BLOCKED, DONE, FAILED, READY, RUNNING, WAITING, Scheduler
from .serving import DEFAULT_PORT, DURATION_BUCKETS_S, Settings, bind_error
from .session import MAX_LEASES_PER_REQUEST, MAX_WAIT_MS, ConnSession, Waiter
from .statusdata import live_status, worker_name
from .stores import open_store
from .stores.base import Store

log = logging.getLogger(__name__)

class Coordinator:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.s = settings
        self.clock = clock
        self.store: Store | None = None
        self.loaded: LoadedJugfile | None = None
        self.graph: Graph | None = None
        self.sched: Scheduler | None = None
        self.state = "loading"
        self.started_at = time.time()
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._waiters: set[Waiter] = set()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()  # wakes the main loop early: finished, a hang-up
        self._loaded = asyncio.Event()
        self._conns: dict[str, Any] = {}
        self.keeper: LockKeeper | None = None
        #: started on a store whose coordinator died mid-run (its expired lock taken over)
        self.took_over = False
        self._reloading = False
        self._reload_task: asyncio.Future[None] | None = None
        self.loads = 0
        self.DURATION_BUCKETS_S = DURATION_BUCKETS_S
        #: tasks done per duration bucket (one more for longer ones), and their total time
        self.durations = [0] * (len(DURATION_BUCKETS_S) + 1)
        self.duration_sum_s = 0.0
        self._late_pending: set[int] = set()
        self.refusals = RefusalLog()  # failed handshakes: a few lines a minute, whatever comes
        self.history: list[tuple[float, int]] = []  # (unix time, tasks done) for rates
        self._verifying = False
        self._vanished_logged = 0
        #: each result's encoded size as its worker reported it (0: not reported), for the
        #: end-of-run check (a file store compares it with the file's size: one stat a result)
        self.sizes = array("Q")
        self._bundle: tuple[LoadedJugfile, list[Any]] | None = None
        #: failure records in the store (``ajug.failures``); set once the store is open
        self.records: FailureRecords | None = None
        self._names: dict[str, str] = {}  # worker id -> name, remembered after it leaves
        #: stopping after everything was done (``serve --stay``): waiting workers are told so
        self._closing = False
        #: extra sections of status(), by name (the launcher's "jobs")
        self.status_sections: dict[str, Callable[[], Any]] = {}

    # -- startup ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store, take its owner lock, start listening, load the jugfile."""
        await self.listen()
        await self.load()

    async def listen(self) -> None:
        """Open the store, take its owner lock and start listening. Workers may connect at
        once (those of ``ajug serve`` may already be waiting); their requests wait until
        ``load`` is done."""
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(None, open_store, self.s.store_url)
        self.records = FailureRecords(self.store)
        ttl = lock_ttl_for(self.s.lease_ttl_s)
        lock = self.store.owner_lock(ttl_s=ttl)
        keeper = LockKeeper(lock, ttl, self.store.url)
        await keeper.acquire()
        self.keeper = keeper
        self.took_over = lock.took_over
        if lock.took_over:
            # a restart: workers of the previous coordinator are reconnecting; let them say
            # what they are still running (resume) before anything is handed out again
            log.info("restarted on a store whose coordinator died: waiting %gs for workers to "
                     "resume their tasks", self.s.resume_grace_s)
        try:
            self._server = await asyncio.start_server(
                self.serve_connection, self.s.host, self.s.port, ssl=self.s.ssl, limit=2**20,
                backlog=1024,
            )
        except BaseException as e:
            self.keeper = None
            await keeper.release()
            if isinstance(e, OSError):
                raise UsageError(bind_error(self.s.host, self.s.port, e)) from None
            raise
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets: what was actually bound (``access.check_bound`` looks)."""
        return list(self._server.sockets) if self._server is not None else []

    async def load(self) -> None:
        try:
            await self._load()
        except BaseException:
            await self.close()
            raise
        if self.took_over and self.sched is not None:
            # the grace counts from when workers can be answered
            self.sched.hold_for_resume(self.s.resume_grace_s)
        self._loaded.set()
        log.info("serving %s on %s:%d (store %s)", self.s.jugfile, self.s.host, self.port,
                 self.store.url if self.store else "")

    async def _load(self) -> None:
        old = self.sched
        loaded, graph, sched, sizes = await load_run(
            self.s, self.store, self.records, self.clock, previous=self.loaded, old=old,
            took_over=self.took_over)
        self.loaded, self.graph, self.sched, self.sizes = loaded, graph, sched, sizes
        self.loads += 1
        self.state = "running"
        t = sched.totals()
        log.info(
            "jugfile loaded (%d): %d tasks, %d already done%s", self.loads, len(graph),
            t[DONE], ", stopped at a barrier" if loaded.hit_barrier else "",
        )

    # -- main loop -------------------------------------------------------------------------
    async def run(self, on_tick: Callable[[Coordinator], None] | None = None) -> int:
        """Serve until done (or shut down); return the exit status (0: all done)."""
        tick = min(1.0, self.s.lease_ttl_s / 6)
        finished_at: float | None = None
        first = True
        lost: str | None = None
        try:
            while not self._stop.is_set():
                self._changed.clear()
                if not first:
                    try:
                        await asyncio.wait_for(self._changed.wait(), tick)
                    except asyncio.TimeoutError:
                        pass
                first = False
                assert self.sched is not None
                if self.keeper is not None:
                    await self.keeper.tick()
                    if self.keeper.lost is not None:
                        break
                if self.sched.expire():
                    self._notify()
                if self.sched.vanished > self._vanished_logged:
                    log_vanished(self)
                self.record_failures()
                self.history.append((time.time(), self.sched.totals()[DONE]))
                del self.history[:-120]
                if on_tick is not None:
                    on_tick(self)
                await self._check_finished()
                if self.state == "finished" and not self.s.stay or self.sched.halted:
                    if finished_at is None:
                        finished_at = time.monotonic()
                    # give workers a moment to hear "finished" and hang up; after a takeover,
                    # the previous coordinator's workers a resume grace to reconnect and hear it
                    if (not self._conns or time.monotonic() - finished_at > self.s.finish_grace_s
                            ) and not self._reconnects_due():
                        break
        finally:
            if self.keeper is not None:
                lost = self.keeper.lost
            await self.close()
        if lost is not None:
            raise StoreLocked(lost)
        return self.exit_status()

    def _reconnects_due(self) -> bool:
        """Restarted on a store whose coordinator died: its workers may still be reconnecting
        (backing off), for up to the resume grace since this one started."""
        return self.took_over and time.time() - self.started_at < self.s.resume_grace_s

    async def _check_finished(self) -> None:
        sched = self.sched
        assert sched is not None and self.loaded is not None
        if self.state != "running" or self._reloading or not sched.finished():
            if self.state == "finished" and not sched.finished():
                self.state = "running"  # work came back (invalidate)
            return
        if not await confirm_results(self):
            return
        t = sched.totals()
        if self.loaded.hit_barrier and t[FAILED] == 0 and t[BLOCKED] == 0:
            # in a task of the coordinator's own: the handler that found the barrier's inputs
            # done is cancelled when its connection closes, which must not stop the load
            self._reloading = True
            self.state = "loading"
            self._reload_task = asyncio.ensure_future(self._load_past_barrier())
            return
        self.state = "finished"
        self._changed.set()
        self._notify()

    async def _load_past_barrier(self) -> None:
        try:
            await self._load()
        except AjugError as e:
            log.error("%s", e)
            self.state = "finished"
            self._load_error = str(e)
        except BaseException:
            if self.state == "loading":  # cancelled (closing): not left half-way
                self.state = "running"
            raise
        finally:
            self._reloading = False
        self._notify()

    def exit_status(self) -> int:
        if self.sched is None:
            return 1
        if getattr(self, "_load_error", None):
            return 1
        t = self.sched.totals()
        hit_barrier = self.loaded is not None and self.loaded.hit_barrier
        return 0 if t[DONE] == len(self.sched.state) and not hit_barrier else 1

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        self._notify()

    def halt(self) -> None:
        """``--fail-fast``: the run is over at its first failure. Nothing more is handed out;
        workers hear "finished" at their next request (those waiting for work at once), and
        the coordinator stops once they hung up, or after the finish grace, as when all is
        done (they would otherwise try to reconnect until their --connect-timeout)."""
        self._changed.set()
        self._notify()

    def over(self) -> bool:
        """Workers asking for work are told the run is finished: all done (unless --stay
        keeps it open), or stopped at a failure (--fail-fast)."""
        if self.sched is not None and self.sched.halted:
            return True
        return self.state == "finished" and (not self.s.stay or self._closing)

    def record_failures(self) -> None:
        """Log each task newly marked failed and have it recorded in the store (``failures``)."""
        if self.sched is not None and self.graph is not None:
            record_new_failures(self.sched, self.graph, self.records,
                                functools.partial(worker_name, self))

    async def close(self) -> None:
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_task.cancel()
            await asyncio.gather(self._reload_task, return_exceptions=True)
        self.record_failures()
        if self.records is not None:
            if self.keeper is not None and self.keeper.lost is not None:
                self.records.drop()  # another coordinator serves the store now: its records
            await self.records.close()
        if (self.state == "finished" or self.sched is not None and self.sched.halted
                ) and self._waiters:
            # all was done (--stay): the workers waiting for work hear "finished" and exit,
            # rather than lose the connection and try to reconnect for a minute
            self._closing = True
            self._notify()
            deadline = time.monotonic() + 1.0
            while self._waiters and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # their replies are written; the connections close next
        conn_mod.flush_refusals(self.refusals, force=True)
        if self._server is not None:
            self._server.close()
            for c in list(self._conns.values()):
                c.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
            self._server = None
        if self.keeper is not None:
            keeper, self.keeper = self.keeper, None
            if keeper.lost is None:
                await keeper.release()
        if self.store is not None:
            self.store.close()

    def worker_exited(self, host: str, pid: int, cause: str, detail: str) -> None:
        """How a worker process ended, from its supervisor: only the deaths a task caused count
        against the tasks it was running (``Scheduler.worker_exited``)."""
        sched = self.sched
        if sched is None:
            return
        blamed = sched.worker_exited(host, pid, cause, detail)
        if blamed and cause == "outside":
            log.warning("worker pid %d on %s was killed from outside (%s): its %d task(s) are "
                        "not blamed for it", pid, host, detail, len(blamed))
            self._notify()
        elif blamed:
            log.info("worker pid %d on %s died: %s", pid, host, detail)

    def lock_fresh(self) -> bool:
        """The owner lock was renewed within its renewal period: leases may be handed out."""
        return self.keeper is None or self.keeper.fresh()

    async def may_hand_out(self) -> bool:
        """Before a batch of leases (or a renewal of them): the owner lock is fresh, renewed
        first if need be. False once it is lost: the coordinator then stops (``lockkeeper``)."""
        if self.keeper is None or await self.keeper.ensure():
            return True
        self.stop()
        return False

    def _notify(self) -> None:
        """Wake every lease request waiting for work."""
        for w in list(self._waiters):
            w.event.set()

    def _notify_from(self, session: ConnSession) -> None:
        """A report from ``session`` made work ready: its own waiting requests are served
        first (``Scheduler.serve_reporter``), then every waiting request is woken."""
        sched = self.sched
        if sched is not None and self.state == "running" and self.lock_fresh():
            for w in sched.serve_reporter(session.wid, list(self._waiters)):
                cast(Waiter, w).event.set()
        self._notify()

    def note_run_time(self, rt: Any) -> None:
        """A task done in ``rt`` seconds (as its worker measured it), for the histogram."""
        if isinstance(rt, (int, float)) and rt >= 0:
            self.durations[bisect.bisect_left(DURATION_BUCKETS_S, rt)] += 1
            self.duration_sum_s += rt

    # -- connections -----------------------------------------------------------------------
    def welcome_info(self) -> dict[str, Any]:
        return {
            "store": store_url_for_workers(self.s.store_url, self.store),
            "lease_ttl_ms": int(self.s.lease_ttl_s * 1000),
            "max_frame": self.s.max_frame_bytes,
            "jugfile": str(self.s.jugfile),
        }

    async def code_bundle(self) -> list[Any]:
        """The modules under the jugfile's code roots, read once per load (in a thread)."""
        loaded = self.loaded
        assert loaded is not None
        cached = self._bundle
        if cached is not None and cached[0] is loaded:
            return cached[1]
        limit = min(MAX_BUNDLE_BYTES, self.s.max_frame_bytes // 2)
        bundle = await asyncio.get_running_loop().run_in_executor(
            None, collect_bundle, loaded.code_roots, [loaded.path.stem], limit)
        self._bundle = (loaded, bundle)
        return bundle

    async def serve_connection(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        """Serve one connection until it ends: the handshake, then its requests. What the
        listening socket calls for each connection; a test may call it with any stream pair
        (the coordinator need not listen)."""
        try:
            conn = await conn_mod.accept(
                reader,
                writer,
                full_token=self.s.token,
                read_token=self.s.read_token,
                handshake_timeout_s=self.s.handshake_timeout_s,
                max_frame_bytes=self.s.max_frame_bytes,
                welcome_info=self.welcome_info(),
                refusals=self.refusals,
            )
        except Exception as e:  # never let one connection take the server down
            address = conn_mod.peer_address(writer)
            conn_mod.note_refusal(self.refusals, address, f"handshake with {address} failed: {e}")
            writer.close()
            return
        if conn is None:
            return
        session = ConnSession(self, conn)
        self._conns[session.wid] = conn
        try:
            await session.serve()
        finally:
            self._conns.pop(session.wid, None)
            self._changed.set()
            session.closed()
            conn.close()

    # -- status ----------------------------------------------------------------------------
    def status(self, detail: bool = False) -> dict[str, Any]:
        """The live status (``ajug status``, the dashboard's ``/api/status``): ``statusdata``."""
        return live_status(self, detail)


__all__ = ["Coordinator", "Settings", "DEFAULT_PORT", "DURATION_BUCKETS_S", "MAX_LEASES_PER_REQUEST",
           "MAX_WAIT_MS", "ConnSession", "Waiter", "bind_error", "WAITING", "READY", "RUNNING"]
