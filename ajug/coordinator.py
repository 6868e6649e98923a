"""The coordinator: asyncio glue between connections and the Scheduler.

It loads the jugfile (in a thread: a jugfile may take a while), builds the compact graph, asks
the store in batches which results exist, and then serves leases. Every decision is the
Scheduler's; this module only moves messages, wakes waiting lease requests, runs the expiry
timer, renews the store's owner lock, and reloads the jugfile past a barrier.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import errno
import gc
import logging
import os
import socket
import ssl as _ssl
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .codeship import MAX_BUNDLE_BYTES, collect_bundle
from .errors import AjugError, ProtocolError, StoreError, StoreLocked, UsageError
from .failures import FailureRecords, failure_record
from .graph import Graph, build_graph
from .jugfile import LoadedJugfile, load_jugfile
from .lockkeeper import LockKeeper, lock_ttl_for
from .protocol import connection as conn_mod
from .protocol import messages as m
from .protocol.messages import ERROR_CODES
from .protocol.refusals import RefusalLog
from .scheduler import BLOCKED, DONE, FAILED, READY, RUNNING, STATE_NAMES, WAITING, Scheduler
from .stores import open_store
from .stores.base import Store

log = logging.getLogger(__name__)

DEFAULT_PORT = 5555
#: upper bounds of the task duration histogram (Prometheus buckets, seconds)
DURATION_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
#: a lease request waits at most this long for work, whatever it asks
MAX_WAIT_MS = 60_000
MAX_LEASES_PER_REQUEST = 1024


@dataclass
class Settings:
    jugfile: str
    store_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: bytes = b""
    read_token: bytes | None = None
    lease_ttl_s: float = 30.0
    max_attempts: int = 3
    retries: int = 0
    stay: bool = False
    fail_fast: bool = False
    ssl: _ssl.SSLContext | None = None
    max_frame_bytes: int = 64 * 1024 * 1024
    handshake_timeout_s: float = 10.0
    finish_grace_s: float = 3.0
    resume_grace_s: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)


def bind_error(host: str, port: int, e: OSError, what: str = "listen on",
               port_flag: str = "--port", host_flag: str = "--host") -> str:
    """One line for a socket that cannot listen, saying what to change."""
    where = f"cannot {what} {host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (f"{where}: the port is in use (another `ajug serve`?); choose another "
                f"{port_flag}, or 0 for a free one")
    if e.errno == errno.EACCES:
        return (f"{where}: permission denied (ports below 1024 need privileges); choose a "
                f"{port_flag} from 1024 to 65535, or 0 for a free one")
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {host} is not an address of this machine ({host_flag})"
    return f"{where}: {e.strerror or e}"


def _trim_heap() -> None:
    """Give freed memory back to the OS (glibc keeps it otherwise); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
        self.loads = 0
        self.resume_until = 0.0
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
            self.resume_until = time.monotonic() + self.s.resume_grace_s
            log.info("restarted on a store whose coordinator died: waiting %gs for workers to "
                     "resume their tasks", self.s.resume_grace_s)
        try:
            self._server = await asyncio.start_server(
                self._on_connect, self.s.host, self.s.port, ssl=self.s.ssl, limit=2**20,
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
        if self.resume_until:  # the grace counts from when workers can be answered
            self.resume_until = time.monotonic() + self.s.resume_grace_s
        self._loaded.set()
        log.info("serving %s on %s:%d (store %s)", self.s.jugfile, self.s.host, self.port,
                 self.store.url if self.store else "")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        old = self.sched
        loaded = await loop.run_in_executor(None, load_jugfile, self.s.jugfile, self.store)
        if self.loaded is not None:  # past a barrier: sys.path already holds what it added
            loaded.code_roots = list(dict.fromkeys(self.loaded.code_roots + loaded.code_roots))
        jugdir = Path(loaded.path).parent
        graph = await loop.run_in_executor(None, build_graph, loaded.tasks, jugdir)
        self._release_tasks(loaded)
        found = await loop.run_in_executor(None, self._exists_all, graph.keys)
        done = [n is not None for n in found]
        if self.records is not None:
            await loop.run_in_executor(None, self.records.start, graph.index, done)
        sched = Scheduler(
            graph,
            lease_ttl_s=self.s.lease_ttl_s,
            max_attempts=self.s.max_attempts,
            retries=self.s.retries,
            clock=self.clock,
        )
        gone: list[int] = []
        gone_set: set[int] = set()
        if old is not None and self.graph is not None:
            # done before the barrier, missing now (a redis that lost its data, a deleted or
            # damaged file): computed again, like any result that vanishes
            old_index = self.graph.index
            for i, (k, d) in enumerate(zip(graph.keys, done)):
                if not d and k in old_index and old.state[old_index[k]] == DONE:
                    gone.append(i)
                    done[i] = True
        sched.start(done)
        if old is not None and self.graph is not None:  # past a barrier: same workers, counters
            sched.inherit(old, self.graph)
        if gone:
            gone_set = set(gone)
            sched.lost_results(gone)
            log.warning("%d result(s) done before the barrier vanished from the store: computing "
                        "them again", len(gone))
        self.loaded, self.graph, self.sched = loaded, graph, sched
        self.sizes = array("Q", (n or 0 for n in found))
        if self.took_over and old is None:
            # a restart in the middle of a run: what its previous coordinator had done is this
            # run's too, and is confirmed present before the run is called finished
            sched.unverified.extend(i for i, d in enumerate(done) if d and i not in gone_set)
        self.loads += 1
        self.state = "running"
        t = sched.totals()
        log.info(
            "jugfile loaded (%d): %d tasks, %d already done%s", self.loads, len(graph),
            t[DONE], ", stopped at a barrier" if loaded.hit_barrier else "",
        )

    @staticmethod
    def _release_tasks(loaded: LoadedJugfile) -> None:
        """The compact graph has all the coordinator needs: let the Task objects go (they cost
        most of a big graph's memory). They live in the jugfile's namespace too, which the
        coordinator does not use once the graph is built; a barrier reload runs it afresh."""
        from . import task as _task

        n = len(loaded.tasks)
        loaded.tasks = []
        _task.reset()
        loaded.module.__dict__.clear()
        if n >= 100_000:  # below that the memory is small and a full collection is not
            gc.collect()
            _trim_heap()

    def _exists_all(self, keys: list[str]) -> list[int | None]:
        """One call for the whole graph: the store batches it its own way (a listing per
        fan-out directory, pipelines of a thousand keys on redis). A damaged result (a file
        cut short, not ajug's) does not count as done (``Store.intact``); the lengths of the
        others are kept for the end-of-run check."""
        assert self.store is not None
        return self.store.intact_sizes(keys)

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
                    self._log_vanished()
                self.record_failures()
                self.history.append((time.time(), self.sched.totals()[DONE]))
                del self.history[:-120]
                if on_tick is not None:
                    on_tick(self)
                await self._check_finished()
                if self.state == "finished" and not self.s.stay:
                    if finished_at is None:
                        finished_at = time.monotonic()
                    # give workers a moment to hear "finished" and hang up
                    if not self._conns or time.monotonic() - finished_at > self.s.finish_grace_s:
                        break
        finally:
            if self.keeper is not None:
                lost = self.keeper.lost
            await self.close()
        if lost is not None:
            raise StoreLocked(lost)
        return self.exit_status()

    def _log_vanished(self) -> None:
        """One line per tick at most, however many results vanished meanwhile."""
        sched = self.sched
        assert sched is not None
        n, self._vanished_logged = sched.vanished - self._vanished_logged, sched.vanished
        log.warning(
            "%d result(s) vanished from the store %s (deleted, damaged, or a redis that lost "
            "its data): computing them again (%d vanished, %d recomputed so far)", n,
            self.store.url if self.store else "", sched.vanished, sched.recomputed,
        )

    async def _check_finished(self) -> None:
        sched = self.sched
        assert sched is not None and self.loaded is not None
        if self.state != "running" or self._reloading or not sched.finished():
            if self.state == "finished" and not sched.finished():
                self.state = "running"  # work came back (invalidate)
            return
        if not await self._confirm_results():
            return
        t = sched.totals()
        if self.loaded.hit_barrier and t[FAILED] == 0 and t[BLOCKED] == 0:
            self._reloading = True
            self.state = "loading"
            try:
                await self._load()
            except AjugError as e:
                log.error("%s", e)
                self.state = "finished"
                self._load_error = str(e)
            finally:
                self._reloading = False
            self._notify()
            return
        self.state = "finished"
        self._changed.set()
        self._notify()

    async def _confirm_results(self) -> bool:
        """Are the results done in this run still in the store? Asked in one batched call
        before the run is called finished (or the jugfile is loaded past a barrier); what
        vanished is computed again. True when everything done is confirmed present."""
        loop = asyncio.get_running_loop()
        while True:
            sched, graph, store = self.sched, self.graph, self.store
            assert sched is not None and graph is not None and store is not None
            n = len(sched.unverified)
            if n == 0:
                return sched.finished()
            if self._verifying:
                return False
            idxs = sched.unverified[:n]
            self._verifying = True
            keys, sizes = [graph.keys[i] for i in idxs], [self.sizes[i] for i in idxs]
            try:
                ok = await loop.run_in_executor(None, store.intact, keys, sizes)
            except StoreError as e:
                log.warning("cannot confirm that this run's results are in the store (%s); "
                            "asking again", e)
                return False
            finally:
                self._verifying = False
            if self.sched is not sched:
                return False
            del sched.unverified[:n]
            if sched.lost_results([i for i, good in zip(idxs, ok) if not good]):
                self._log_vanished()
                self._notify()
                return False

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

    def record_failures(self) -> None:
        """Log each task newly marked failed (once, here: not also in the worker's log) and
        have it recorded in the store; writes happen in a thread."""
        sched, graph = self.sched, self.graph
        if sched is None or graph is None or not sched.new_failures:
            return
        new, sched.new_failures = sched.new_failures, []
        for i in new:
            f = sched.failures.get(i)
            if f is None:
                continue
            name = graph.functions[graph.fn[i]].name
            worker = self._worker_name(f.worker)
            log.warning("task %s (%s) failed: %s: %s", name, graph.keys[i][:12], f.type, f.msg)
            if self.records is not None:
                self.records.failed(graph.keys[i], failure_record(name, f, worker))
        if self.records is not None:
            self.records.flush()

    async def close(self) -> None:
        self.record_failures()
        if self.records is not None:
            if self.keeper is not None and self.keeper.lost is not None:
                self.records.drop()  # another coordinator serves the store now: its records
            await self.records.close()
        if self.state == "finished" and self._waiters:
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
        """A report from ``session`` made work ready: its own waiting request is served first,
        here and now (the new tasks' inputs are in that worker's cache: chains stay on one
        worker), then the others are woken for whatever is left."""
        sched = self.sched
        if (sched is not None and self.state == "running" and time.monotonic() >= self.resume_until
                and self.lock_fresh()):
            for w in list(self._waiters):
                if w.session is session and not w.leases:
                    w.leases = sched.lease(session.wid, w.want)
                    if w.leases:
                        w.event.set()
        self._notify()

    # -- connections -----------------------------------------------------------------------
    def welcome_info(self) -> dict[str, Any]:
        return {
            "store": self.store_url_for_workers(),
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

    def store_url_for_workers(self) -> str:
        """The URL workers open: the user's URL for redis (it carries options), the absolute
        directory for a file store (a relative path would be relative to the coordinator)."""
        if "://" in self.s.store_url or self.store is None:
            return self.s.store_url
        return self.store.url

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
    def _worker_name(self, wid: str) -> str:
        """A worker's name as it gave it (``local0``, ``--name``), or host:pid."""
        w = self.sched.workers.get(wid) if self.sched is not None else None
        if w is not None and w.name:
            self._names[wid] = w.name
        host, _, rest = wid.partition(":")
        return self._names.get(wid) or f"{host}:{rest.partition(':')[0]}"

    def _executing(self) -> list[int]:
        """Per function, the tasks being executed now: of each worker's leases, the oldest
        one that is not a follow-on (a worker runs its leases one at a time, in the order it
        got them; the others are queued there). ``running`` counts every lease."""
        sched, graph = self.sched, self.graph
        assert sched is not None and graph is not None
        out = [0] * len(graph.functions)
        rem, leases = sched.remaining, sched.leases
        for w in sched.workers.values():
            best = None
            for i in w.leases:
                lz = leases.get(i)
                if lz is not None and not rem[i] and (best is None or lz.tok < best.tok):
                    best = lz
            if best is not None:
                out[graph.fn[best.idx]] += 1
        return out

    def status(self, detail: bool = False) -> dict[str, Any]:
        sched, graph = self.sched, self.graph
        assert sched is not None and graph is not None
        now = self.clock()
        executing = self._executing()
        funcs = []
        for f, c, e in zip(graph.functions, sched.counts, executing):
            funcs.append({"name": f.name, **{STATE_NAMES[s]: c[s] for s in range(6)},
                          "executing": e})
        totals = sched.totals()
        workers = []
        leases, remaining = sched.leases, sched.remaining
        for w in sched.workers.values():
            # longest running first: a hung task shows at the top, with how long it has run
            # (None for a follow-on lease still waiting for its inputs on that worker)
            held = sorted(w.leases, key=lambda i: leases[i].since)[:50]
            workers.append(
                {
                    "id": w.wid,
                    "host": w.host,
                    "pid": w.pid,
                    "name": w.name,
                    "running": [graph.keys[i] for i in held],
                    "running_functions": [graph.functions[graph.fn[i]].name for i in held],
                    "running_s": [None if remaining[i] else round(now - leases[i].since, 1)
                                  for i in held],
                    "n_running": len(w.leases),
                    "done": w.done,
                    "failed": w.failed,
                    "last_seen_s": round(now - w.last_seen, 3),
                }
            )
        failures = []
        for i, fl in list(sched.failures.items())[:200]:
            tb = fl.tb if detail else ""
            failures.append(
                {
                    "key": graph.keys[i],
                    "func": graph.functions[graph.fn[i]].name,
                    "kind": fl.kind,
                    "type": fl.type,
                    "msg": fl.msg,
                    "tb": tb,
                    "attempts": fl.attempts,
                    "causes": fl.causes,
                    "worker": fl.worker,
                    "worker_name": self._worker_name(fl.worker),
                }
            )
        rate = 0.0
        if len(self.history) >= 2:
            (t0, d0), (t1, d1) = self.history[max(0, len(self.history) - 11)], self.history[-1]
            if t1 > t0:
                rate = (d1 - d0) / (t1 - t0)
        return {
            "jugfile": str(self.s.jugfile),
            "store": self.store.url if self.store else "",
            "state": self.state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "tasks": len(graph),
            "totals": {STATE_NAMES[s]: totals[s] for s in range(6)},
            "executing": sum(executing),
            "functions": funcs,
            "workers": workers,
            "failures": failures,
            "barrier": bool(self.loaded and self.loaded.hit_barrier),
            "loads": self.loads,
            "reclaimed": sched.reclaimed,
            "duplicates": sched.duplicates,
            "vanished": sched.vanished,
            "recomputed": sched.recomputed,
            "rate": round(rate, 2),
            **{name: section() for name, section in self.status_sections.items()},
        }


class Waiter:
    """A lease request waiting for work (hashable by identity, kept in a set)."""

    __slots__ = ("session", "want", "event", "leases")

    def __init__(self, session: ConnSession, want: int) -> None:
        self.session = session
        self.want = want
        self.event = asyncio.Event()
        self.leases: list[tuple[int, int]] = []


class ConnSession:
    """One connection: a worker (leases) or a client (status). Requests may be pipelined."""

    def __init__(self, coord: Coordinator, conn: Any) -> None:
        self.c = coord
        self.conn = conn
        peer = conn.peer
        self.wid = f"{peer.host}:{peer.pid}:{uuid.uuid4().hex[:8]}"
        self.role = peer.role
        self.access = peer.access
        self.sent_funcs: set[int] = set()
        self.graph_epoch = -1
        self.peer = peer

    def register(self) -> None:
        if self.role == "worker" and self.access == "full":
            assert self.c.sched is not None
            self.c.sched.add_worker(self.wid, self.peer.host, self.peer.pid, self.peer.name)
            log.info("worker %s connected", self.wid)

    def closed(self) -> None:
        sched = self.c.sched
        if sched is not None and self.wid in sched.workers:
            lost = sched.remove_worker(self.wid)
            if lost:  # a worker lost in the middle of its work: worth a line without -v
                log.warning("worker %s disconnected, %d lease(s) back to ready", self.wid,
                            len(lost))
                self.c._notify()
            else:
                log.info("worker %s disconnected", self.wid)

    def error(self, re: int | None, code: str, msg: str) -> None:
        self.conn.send(m.error(re, code, msg))

    #: Lease requests of one connection handled at a time. A peer that pipelines more (and
    #: does not read the replies) is not read from until one is answered: TCP backpressure
    #: then keeps the coordinator's memory bounded.
    MAX_PENDING_LEASE_REQUESTS = 16

    async def serve(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        await self.c._loaded.wait()  # connected while the jugfile was loading
        self.register()
        try:
            while not self.conn.closed:
                if len(tasks) >= self.MAX_PENDING_LEASE_REQUESTS:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msg = await self.conn.recv()
                except ProtocolError as e:
                    # recv() has told the peer (error frame) and closed this connection only
                    if not isinstance(e, conn_mod.ConnectionClosed):
                        log.warning("bad message from %s: %s", self.wid, e)
                    return
                op = msg["op"]
                if op == "bye":
                    return
                if op == "error":  # nobody answers an error with an error (SPEC 9)
                    log.info("%s sent error %s: %s", self.wid, msg["code"][:40], msg["msg"][:200])
                    if ERROR_CODES.get(msg["code"], False):
                        return
                    continue
                try:
                    m.check_allowed(msg, self.role, self.access)
                except m.AccessDenied as e:
                    self.error(msg.get("id"), "access", str(e))
                    await self.conn.drain()
                    continue
                except m.UnknownOp:
                    pass  # hello or auth again: no handler below, an "op" error and the close
                if op == "lease":
                    t = asyncio.ensure_future(self._guarded(self.on_lease, msg))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    continue
                handler = getattr(self, "on_" + op, None)
                if handler is None:
                    self.error(msg.get("id"), "op", f"unexpected operation {op!r}")
                    await self.conn.drain()
                    return
                await self._guarded(handler, msg)
        finally:
            for t in tasks:
                t.cancel()

    async def _guarded(self, handler: Callable[[dict[str, Any]], Any], msg: dict[str, Any]) -> None:
        """Run one request: a connection that broke meanwhile ends quietly; a bug in the
        coordinator answers ``internal`` (SPEC 9) and the connection carries on."""
        try:
            await handler(msg)
        except ProtocolError:
            self.conn.close()
        except Exception:
            log.exception("%s request from %s failed", msg["op"], self.wid)
            try:
                self.error(msg.get("id"), "internal", "internal error")
                await self.conn.drain()
            except ProtocolError:
                self.conn.close()

    async def on_lease(self, msg: dict[str, Any]) -> None:
        c = self.c
        if not await c.may_hand_out():
            return
        sched = c.sched
        assert sched is not None
        sched.touch(self.wid)
        w = sched.workers.get(self.wid)
        if w is not None:
            w.follow = bool(msg.get("follow"))
        changed = self._report(msg)
        if changed:
            c._notify_from(self)
            await c._check_finished()
        want = min(int(msg["want"]), MAX_LEASES_PER_REQUEST)
        deadline = time.monotonic() + min(msg["wait_ms"], MAX_WAIT_MS) / 1000.0
        leases: list[tuple[int, int]] = []
        while True:
            sched = c.sched
            assert sched is not None
            if want and c.state == "running" and time.monotonic() >= c.resume_until:
                if not await c.may_hand_out():
                    return
                sched = c.sched
                assert sched is not None
                leases = sched.lease(self.wid, want)
            if leases or not want or c.state == "finished" and (not c.s.stay or c._closing):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiter = Waiter(self, want)
            c._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter.event.wait(), remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                c._waiters.discard(waiter)
            if waiter.leases:  # served directly by _notify_from
                leases = waiter.leases
                break
            if time.monotonic() >= deadline:
                break
        self._reply_leases(msg["id"], leases)
        await self.conn.drain()

    def _report(self, msg: dict[str, Any]) -> bool:
        c = self.c
        sched, graph = c.sched, c.graph
        assert sched is not None and graph is not None
        changed = False
        for key, tok, meta in msg["done"]:
            i = graph.index.get(key)
            if i is None:
                continue
            size = meta.get("size")
            if type(size) is int and 0 <= size < 1 << 64:
                c.sizes[i] = size
            if sched.complete(self.wid, i, tok):
                changed = True
                if c.records is not None and c.records.known:
                    c.records.succeeded(key)
                rt = meta.get("rt")
                if isinstance(rt, (int, float)) and rt >= 0:
                    c.durations[bisect.bisect_left(DURATION_BUCKETS_S, rt)] += 1
                    c.duration_sum_s += rt
            elif sched.state[i] != DONE and i not in c._late_pending:
                # the lease was reclaimed: the result counts if it reached the store
                c._late_pending.add(i)
                asyncio.ensure_future(self._late_done(i))
        for key, tok, err in msg["failed"]:
            i = graph.index.get(key)
            if i is None:
                continue
            j = self._missing_input(i, err)
            if j is not None:  # not the task's fault: its input is computed again, it waits
                sched.input_missing(self.wid, i, tok, j)
                changed = True
                continue
            r = sched.fail(self.wid, i, tok, err)
            if r != "stale":
                changed = True
                if r == "failed" and c.s.fail_fast:
                    c.record_failures()
                    log.error("stopping at the first failure (--fail-fast)")
                    c.stop()
        c.record_failures()
        return changed

    def _missing_input(self, i: int, err: dict[str, Any]) -> int | None:
        """The input of ``i`` that its worker found missing from the store, if ``err`` says
        so and names one of the task's inputs (else the report is an ordinary failure)."""
        if err.get("kind") != "input-missing":
            return None
        graph = self.c.graph
        assert graph is not None
        j = graph.index.get(err.get("input", ""))
        if j is None:
            return None
        ds, di = graph.dep_start, graph.dep_idx
        return j if any(di[q] == j for q in range(ds[i], ds[i + 1])) else None

    async def _late_done(self, i: int) -> None:
        c = self.c
        graph, store = c.graph, c.store
        assert graph is not None and store is not None
        key = graph.keys[i]
        try:
            ok = await asyncio.get_running_loop().run_in_executor(None, store.contains, key)
        except StoreError:
            return
        finally:
            c._late_pending.discard(i)
        if ok and c.graph is graph and c.sched is not None and c.sched.accept_late(self.wid, i):
            if c.records is not None:
                c.records.succeeded(key)
            c._notify()
            await c._check_finished()

    def _reply_leases(self, rid: int, leases: list[tuple[int, int]]) -> None:
        c = self.c
        graph, sched = c.graph, c.sched
        assert graph is not None and sched is not None
        if leases and not c.lock_fresh():  # frozen since the lock was checked: not these
            for i, tok in leases:
                sched.give_back(i, tok)
            leases = []
        if self.graph_epoch != c.loads:  # the graph was rebuilt past a barrier
            self.graph_epoch = c.loads
            self.sent_funcs = set()
        out, funcs = [], []
        for i, tok in leases:
            fid = graph.fn[i]
            if fid not in self.sent_funcs:
                self.sent_funcs.add(fid)
                f = graph.functions[fid]
                funcs.append(m.func_item(fid, f.name, f.src, f.code))
            out.append(m.lease_item(graph.keys[i], tok, fid, graph.args[i],
                                    [graph.keys[d] for d in sched.after(i)]))
        if out:
            state = "run"
        elif c.state == "finished" and (not c.s.stay or c._closing):
            state = "finished"
        else:
            state = "idle"
        self.conn.send(m.leases(rid, state=state, leases=out, funcs=funcs))

    async def on_renew(self, msg: dict[str, Any]) -> None:
        while True:
            if not await self.c.may_hand_out():
                return
            sched, graph = self.c.sched, self.c.graph
            assert sched is not None and graph is not None
            items, lost = [], []
            for key, tok in msg["leases"]:
                i = graph.index.get(key)
                if i is None:
                    lost.append(key)
                else:
                    items.append((i, tok))
            lost.extend(graph.keys[i] for i in sched.renew(self.wid, items))
            if self.c.lock_fresh():  # else frozen meanwhile: renew the lock, then these again
                break
        self.conn.send(m.renewed(msg["id"], lost))
        await self.conn.drain()

    async def on_resume(self, msg: dict[str, Any]) -> None:
        if not await self.c.may_hand_out():
            return
        sched, graph = self.c.sched, self.c.graph
        assert sched is not None and graph is not None
        idxs, lost = [], []
        for key in msg["running"]:
            i = graph.index.get(key)
            if i is None:
                lost.append(key)
            else:
                idxs.append(i)
        kept, lost_i = sched.resume(self.wid, idxs)
        lost.extend(graph.keys[i] for i in lost_i)
        if kept:
            log.info("worker %s resumed %d running task(s)", self.wid, len(kept))
        self.conn.send(m.resumed(msg["id"], [(graph.keys[i], t) for i, t in kept], lost))
        await self.conn.drain()

    async def on_code(self, msg: dict[str, Any]) -> None:
        """Where the jugfile's code lives, and (if asked) the coordinator's copy of it, for a
        worker on a machine without those directories (see codeship)."""
        c = self.c
        assert c.loaded is not None
        modules: list[dict[str, Any]] = []
        if msg["bundle"]:
            bundle = await c.code_bundle()
            modules = [m.module_item(x.name, x.path, x.is_pkg, x.source) for x in bundle]
        self.conn.send(m.code_reply(msg["id"], jugfile=str(c.loaded.path),
                                    roots=c.loaded.code_roots, modules=modules))
        await self.conn.drain()

    async def on_status(self, msg: dict[str, Any]) -> None:
        self.conn.send(m.status_reply(msg["id"], self.c.status(bool(msg["detail"]))))
        await self.conn.drain()

    async def on_shutdown(self, msg: dict[str, Any]) -> None:
        log.info("shutdown requested by %s", self.wid)
        self.conn.send(m.ok(msg["id"]))
        await self.conn.drain()
        self.c.stop()

    async def on_exited(self, msg: dict[str, Any]) -> None:
        """A supervisor (``ajug work -j N``) says how one of its worker processes ended."""
        self.c.worker_exited(msg["host"], msg["pid"], msg["cause"], msg["detail"])
        self.conn.send(m.ok(msg["id"]))
        await self.conn.drain()

    async def on_invalidate(self, msg: dict[str, Any]) -> None:
        sched, graph = self.c.sched, self.c.graph
        assert sched is not None and graph is not None
        idxs = [graph.index[k] for k in msg["keys"] if k in graph.index]
        n = sched.invalidate(idxs)
        log.info("invalidated %d task(s) on request", n)
        if self.c.records is not None and self.c.records.known:
            for k in msg["keys"]:
                self.c.records.succeeded(k)
            self.c.records.flush()
        if self.c.state == "finished":
            self.c.state = "running"
        self.c._notify()
        self.conn.send(m.ok(msg["id"]))
        await self.conn.drain()


__all__ = ["Coordinator", "Settings", "DEFAULT_PORT", "WAITING", "READY", "RUNNING"]
