"""A worker process: runs leased tasks in its main thread while a network thread keeps the
connection, renews the leases every TTL/3, and reports results.

Task code runs in the main thread (signals, libraries that insist on it); the network thread
runs an asyncio loop, so a task that computes for an hour still has its lease renewed. If the
coordinator goes away, the network thread reconnects with backoff and jitter, tells the new
coordinator which tasks it is still running (``resume``) and keeps them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import ssl as _ssl
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from . import codeship
from .errors import (
    AjugError,
    AuthError,
    ConnectError,
    ProtocolError,
    ResultMissing,
    StoreError,
    StoreFull,
    TLSError,
)
from .graph import decode_args
from .protocol import connection as conn_mod
from .protocol import messages as m
from .stores import encoding, open_store
from .task import Task, value
from .tracebacks import format_task_traceback, worker_file

log = logging.getLogger(__name__)
worker_file(__file__)

CACHE_BYTES = 256 * 1024 * 1024
SWITCH_INTERVAL_S = 0.0005
CACHE_ITEMS = 4096


@dataclass
class Lease:
    key: str
    tok: int
    fn: int
    args: bytes
    func_blob: bytes
    func_name: str
    func_src: str
    #: a follow-on lease: these inputs were leased to this worker too and must be produced
    #: here first (they come earlier in the queue)
    after: tuple[str, ...] = ()
    #: known to be this worker's until then (monotonic): when the request that granted or last
    #: renewed it was sent, plus the TTL (the coordinator's deadline is never earlier)
    valid_until: float = 0.0
    #: the coordinator said it is no longer ours: never started (set by the network thread)
    lost: bool = False


class Inbox:
    """Leases handed from the network thread to the main thread. A deque (appends and pops
    are atomic) and an event: one lock operation per reply instead of two per lease, which is
    what ``queue.Queue`` costs."""

    def __init__(self) -> None:
        self.items: deque[Lease | None] = deque()
        self.ready = threading.Event()

    def put(self, *items: Lease | None) -> None:
        self.items.extend(items)
        self.ready.set()

    def get_nowait(self) -> Lease | None:
        """The next lease; IndexError when there is none."""
        return self.items.popleft()

    def get(self) -> Lease | None:
        while True:
            try:
                return self.items.popleft()
            except IndexError:
                pass
            self.ready.wait()
            self.ready.clear()  # then look again: a put between the two is in ``items``

    def qsize(self) -> int:
        return len(self.items)


class RecentKeys:
    """Keys of the results this worker produced lately, for checking a follow-on's inputs."""

    def __init__(self, max_items: int = 65536) -> None:
        self.max_items = max_items
        self.keys: dict[str, None] = {}  # insertion-ordered: the oldest first

    def add(self, key: str) -> None:
        self.keys[key] = None
        if len(self.keys) > self.max_items:
            del self.keys[next(iter(self.keys))]

    def discard(self, key: str) -> None:
        self.keys.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self.keys


class ResultCache:
    """Recent results by key, kept pickled (``encoding.Pickled``), so a chain's next task does
    not reload what this worker just computed. Each use unpickles a new copy: a task that
    changes its input in place changes only its own copy, never what another task receives
    (every task gets its inputs equal to their stored values). Bounded by count and bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES, max_items: int = CACHE_ITEMS) -> None:
        self.max_bytes, self.max_items = max_bytes, max_items
        self.items: OrderedDict[str, encoding.Pickled] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> encoding.Pickled | None:
        hit = self.items.get(key)
        if hit is not None:
            self.items.move_to_end(key)
        return hit

    def drop(self, key: str) -> None:
        hit = self.items.pop(key, None)
        if hit is not None:
            self.bytes -= hit.nbytes

    def put(self, key: str, p: encoding.Pickled) -> None:
        size = p.nbytes
        if size > self.max_bytes // 4:
            return
        self.drop(key)
        self.items[key] = p
        self.bytes += size
        while self.items and (self.bytes > self.max_bytes or len(self.items) > self.max_items):
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes


class CachingStore:
    """The store as seen by task code on a worker (``Task.store``): loads go through the cache,
    and each load is a new copy of the stored value."""

    def __init__(self, store: Any, cache: ResultCache) -> None:
        self.store, self.cache = store, cache
        self.url = store.url

    def load(self, key: str) -> Any:
        hit = self.cache.get(key)
        if hit is not None:
            return hit.loads()
        v = self.store.load(key)
        if _approx_size(v) <= self.cache.max_bytes // 4:
            try:
                p = encoding.pickle_value(v)
            except Exception:  # noqa: BLE001 - loaded fine, just not cacheable
                return v
            # detached from ``v``, which the task may now change in place
            p.raws = [memoryview(bytes(r)) for r in p.raws]
            self.cache.put(key, p)
        return v

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _approx_size(v: Any) -> int:
    n = getattr(v, "nbytes", None)
    if isinstance(n, int):
        return n
    return sys.getsizeof(v)


class SaveBatch:
    """Results of quick tasks saved together (one redis round trip for many), then reported
    done together. A result is reported only after it is in the store; until then it is in
    this worker's cache, so a dependent task run here meanwhile finds it.

    The main thread flushes between tasks; a helper thread flushes a batch that has waited
    ``MAX_DELAY_S`` while the main thread is inside a long task, so a long task (a follow-on
    reduce, say) never holds back the reports of the quick ones run before it."""

    MAX_ITEMS = 64
    MAX_BYTES = 1024 * 1024
    MAX_DELAY_S = 0.02

    def __init__(self, store: Any, cache: ResultCache, worker: Worker) -> None:
        self.store, self.cache, self.worker = store, cache, worker
        self.items: list[tuple[Lease, encoding.Encoded, float]] = []
        self.bytes = 0
        self.first = 0.0
        self.lock = threading.Lock()  # held while saving: one save at a time
        self._waiting = threading.Event()  # set while the batch holds something
        self._closed = False
        threading.Thread(target=self._flush_late, name="ajug-flush", daemon=True).start()

    def add(self, lease: Lease, enc: encoding.Encoded, rt: float) -> None:
        """A result, encoded as its task returned (so later changes to the object are not
        what gets stored)."""
        with self.lock:
            if not self.items:
                self.first = time.monotonic()
                self._waiting.set()
            self.items.append((lease, enc, rt))
            self.bytes += enc.size
            if rt > self.MAX_DELAY_S or self.bytes >= self.MAX_BYTES:
                self._flush()  # a slow task or a big result: no point in waiting for company

    def due(self) -> bool:
        return bool(self.items) and (
            len(self.items) >= self.MAX_ITEMS
            or self.bytes >= self.MAX_BYTES
            or time.monotonic() - self.first >= self.MAX_DELAY_S
        )

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._waiting.set()

    def _flush_late(self) -> None:
        while True:
            self._waiting.wait()
            if self._closed:
                return
            time.sleep(max(0.0, self.first + self.MAX_DELAY_S - time.monotonic()) + 0.001)
            with self.lock:
                if self.items and time.monotonic() - self.first >= self.MAX_DELAY_S:
                    try:
                        self._flush()
                    except (KeyboardInterrupt, SystemExit):  # pragma: no cover - not here
                        return
                if not self.items:
                    self._waiting.clear()

    def _flush(self) -> None:
        items, self.items, self.bytes = self.items, [], 0
        if not items:
            return
        reports: list[tuple[str, list[Any]]] = []
        try:
            sizes = self.store.save_many([(lz.key, enc, None) for lz, enc, _ in items])
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # one by one, so that each task gets its own outcome
            for lz, enc, rt in items:
                try:
                    size = self.store.save(lz.key, enc, None)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as e:
                    self.cache.drop(lz.key)
                    self.worker.produced.discard(lz.key)
                    self.worker._post_failure(lz, e)
                    continue
                reports.append(("done", [lz.key, lz.tok, {"rt": rt, "size": size}]))
        else:
            for (lz, _, rt), size in zip(items, sizes):
                reports.append(("done", [lz.key, lz.tok, {"rt": rt, "size": size}]))
        if reports:
            self.worker._post(reports)


@dataclass
class WorkerOptions:
    host: str
    port: int
    token: bytes = b""
    name: str = ""
    prefetch: int | None = None  # None: adapt to task duration
    connect_timeout_s: float = 60.0
    store_url: str | None = None
    ssl: _ssl.SSLContext | None = None
    max_tasks: int | None = None
    #: says connecting / connected / lost to the user (``ajug work``); None: log lines
    say: Callable[[str], None] | None = None
    #: exit (status 0) after this long connected with no task to run or report: frees a
    #: batch job's node while the run waits on something else (a barrier, a long reduce)
    idle_exit_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    def __init__(self, opts: WorkerOptions) -> None:
        self.o = opts
        self.leases = Inbox()
        self.queued: dict[str, Lease] = {}  # leased, not finished (queued or running)
        self.reports_done: list[list[Any]] = []
        self.reports_failed: list[list[Any]] = []
        # reports sent in lease requests not yet answered: re-sent if the connection drops
        self.inflight: dict[int, tuple[list[list[Any]], list[list[Any]]]] = {}
        self.finished = threading.Event()
        self.fatal: BaseException | None = None
        self.store_url: str | None = opts.store_url
        self.store_ready = threading.Event()
        self.lease_ttl_s = 30.0
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
        self._renew_now = False
        self.idle_since: float | None = None  # monotonic time this worker last became idle

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
        batch = SaveBatch(store, cache, self)
        try:
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
                    break
                if not self._may_start(lease, batch):
                    continue
                self._execute(lease, batch)
                if batch.due():
                    batch.flush()
                if self.o.max_tasks is not None and self.ran >= self.o.max_tasks:
                    break
            batch.close()
        except KeyboardInterrupt:
            log.info("interrupted")
            self._stop_net()
            return 130
        self._stop_net()
        net.join(10)
        store.close()
        return self._fatal_status() if self.fatal is not None else 0

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

    def _call_net(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass

    def _ask_renew(self) -> None:
        self._renew_now = True
        if self._kick is not None:
            self._kick.set()

    def _drop_lost(self, keys: list[str]) -> None:
        """Network thread: leases the coordinator no longer counts as ours. Queued ones are
        never started; a running one finishes and its result is reported as a late one."""
        dropped = 0
        for key in keys:
            lz = self.queued.pop(key, None)
            if lz is None:
                continue
            lz.lost = True
            try:
                self.leases.items.remove(lz)
                dropped += 1
            except ValueError:  # running (or about to: the main thread checks ``lost``)
                pass
        if keys:
            log.info("%d lease(s) were reclaimed by the coordinator (%d queued ones dropped)",
                     len(keys), dropped)

    def _fatal_status(self) -> int:
        if self.fatal is None:
            return 0
        raise self.fatal

    def _execute(self, lease: Lease, batch: SaveBatch) -> None:
        if lease.after and not all(k in self.produced for k in lease.after):
            # an input failed here (or was lost): give the follow-on back, it never ran
            log.debug("task %s (%s) skipped: an input was not produced here", lease.func_name,
                      lease.key[:12])
            err = {"type": "Skipped", "msg": "an input was not produced on this worker", "tb": "",
                   "kind": "skipped"}
            self._post([("failed", [lease.key, lease.tok, err])])
            return
        t0 = time.perf_counter()
        try:
            f = self._funcs.get(lease.func_blob)
            if f is None:
                f = self._funcs[lease.func_blob] = cloudpickle.loads(lease.func_blob)
            args, kwargs = decode_args(lease.args)
            result = f(*[value(a) for a in args], **{k: value(v) for k, v in kwargs.items()})
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
        self.cache.put(lease.key, pickled)
        self.produced.add(lease.key)
        batch.add(lease, enc, rt)
        self._count(time.perf_counter() - t0)

    def _count(self, dt: float) -> None:
        self.ran += 1
        self.avg_task_s = dt if self.ran == 1 else 0.8 * self.avg_task_s + 0.2 * dt

    def _post_failure(self, lease: Lease, e: BaseException) -> None:
        kind = "store" if isinstance(e, StoreError) else "exception"
        tb = format_task_traceback(e) if e.__traceback__ is not None else ""
        msg = str(e)
        missing = e.key if isinstance(e, ResultMissing) and e.key != lease.key else None
        if missing:
            # not this task's fault: the coordinator has the input computed again, then this
            # task runs again (no attempt counted)
            kind = "input-missing"
            log.info("task %s (%s): its input %s is missing from the store (%s); handed back",
                     lease.func_name, lease.key[:12], missing[:12], msg)
        else:
            if isinstance(e, StoreFull):
                msg = f"store is full: {e}"
            # the coordinator logs it (once) and records it; here it is a detail
            log.info("task %s (%s) failed: %s: %s", lease.func_name, lease.key[:12],
                     type(e).__name__, msg)
            self.failed += 1
        err = m.task_error(type(e).__name__, msg[:2000], tb[-20000:], kind, missing)
        self._post([("failed", [lease.key, lease.tok, err])])

    def _post(self, reports: list[tuple[str, list[Any]]]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._on_reports, reports)
        except RuntimeError:
            pass

    def _stop_net(self) -> None:
        self.finished.set()
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._kick is not None:
            try:
                loop.call_soon_threadsafe(self._kick.set)
            except RuntimeError:
                pass

    # -- network thread ---------------------------------------------------------------------
    def _net_thread(self) -> None:
        try:
            try:
                import uvloop

                runner: Callable[..., Any] = uvloop.run
            except ImportError:  # pragma: no cover - not on Windows
                runner = asyncio.run
            runner(self._net_main())
        except BaseException as e:  # noqa: BLE001 - hand anything to the main thread
            if self.fatal is None:
                self.fatal = e
        finally:
            self.leases.put(None)

    def _on_reports(self, reports: list[tuple[str, list[Any]]]) -> None:
        for kind, item in reports:
            self.queued.pop(item[0], None)
            (self.reports_done if kind == "done" else self.reports_failed).append(item)
        assert self._kick is not None
        self._kick.set()

    def _want(self) -> int:
        if self.finished.is_set():
            return 0
        if self.o.max_tasks is not None:
            left = self.o.max_tasks - self.ran - len(self.queued)
            if left <= 0:
                return 0
        if self.o.prefetch is not None:
            hold = 1 + self.o.prefetch
            want = hold - len(self.queued)
        elif self.ran < 3 or self.avg_task_s > 0.05:
            hold = 2 if self.ran >= 3 else 1
            want = hold - len(self.queued)
        else:
            # tiny tasks: keep up to ~50 ms of work queued, counting only tasks not yet
            # started, so the next batch arrives while the worker still has work to do
            hold = int(min(64, max(2, 0.05 / max(self.avg_task_s, 1e-5))))
            want = hold - self.leases.qsize() if len(self.queued) < 4 * hold else 0
        if self.o.max_tasks is not None:
            want = min(want, self.o.max_tasks - self.ran - len(self.queued))
        return max(0, want)

    def _say(self, msg: str, level: int = logging.INFO) -> None:
        """What an ``ajug work`` user should see (its CLI passes ``say``): connecting,
        connected, lost; otherwise (workers of ``ajug run``) a log line."""
        if self.o.say is not None:
            self.o.say(msg)
        else:
            log.log(level, "%s", msg)

    @staticmethod
    def _reason(e: BaseException, where: str) -> str:
        """Why a connection failed, in a few words (not the whole sentence again)."""
        text = str(e) or type(e).__name__
        text = text.removeprefix(f"cannot reach the coordinator at {where}: ")
        return text.split("; is `ajug serve`")[0]

    def _check_idle(self, reports: bool) -> None:
        """--idle-exit: with no lease request in flight, nothing held and nothing to report for
        ``idle_exit_s``, finish as if the run were done (a lease reply can no longer come)."""
        if self.o.idle_exit_s is None or self.finished.is_set():
            return
        now = time.monotonic()
        if self.queued or reports:
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= self.o.idle_exit_s:
            log.info("no task for %gs (--idle-exit): exiting", self.o.idle_exit_s)
            self.idle_exited = True
            self.finished.set()
            self.leases.put(None)

    async def _connect(self, first: bool) -> Any:
        """Connect with backoff and jitter until connect_timeout; AuthError is final. The first
        failure is said at once, in one line; then one line when connected or given up."""
        t0 = time.monotonic()
        deadline = t0 + self.o.connect_timeout_s
        delay = 0.05
        where = f"{self.o.host}:{self.o.port}"
        told = False
        while True:
            try:
                conn = await conn_mod.open_connection(
                    self.o.host,
                    self.o.port,
                    token=self.o.token,
                    role="worker",
                    access="full",
                    ssl=self.o.ssl,
                    name=self.o.name or socket.gethostname(),
                )
            except (AuthError, TLSError):
                raise  # retrying cannot fix a wrong token or an untrusted certificate
            except (ConnectError, ProtocolError, OSError) as e:
                reason = self._reason(e, where)
                if time.monotonic() + delay > deadline:
                    what = "reach" if first else "reconnect to"
                    raise ConnectError(
                        f"cannot {what} the coordinator at {where} after "
                        f"{self.o.connect_timeout_s:g} s ({reason}): is `ajug serve` running "
                        "there? (--connect-timeout sets how long to keep trying)"
                    ) from None
                unreachable = isinstance(e, OSError) or str(e).startswith("cannot reach")
                if first and not told and unreachable:
                    # nothing listens there (yet): say so now, not after a minute of silence.
                    # (One that answers and then fails the handshake is said once, at the end.)
                    self._say(f"waiting for the coordinator at {where} ({reason}); retrying "
                              f"for {self.o.connect_timeout_s:g} s", logging.WARNING)
                    told = True
                log.debug("coordinator not reachable (%s); retrying in %.2fs", reason, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            after = f" after {time.monotonic() - t0:.1f} s" if told else ""
            if first:
                self._say(f"connected to the coordinator at {where}{after}")
            else:
                self._say(f"reconnected to the coordinator at {where}{after}")
            return conn

    async def _net_main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        first = True
        while True:
            conn = await self._connect(first)
            info = conn.welcome_info
            self.lease_ttl_s = info.get("lease_ttl_ms", 30000) / 1000.0
            if self.store_url is None:
                self.store_url = info.get("store")
            self.store_ready.set()
            try:
                done = await self._session(conn, resume=not first)
            except (ProtocolError, OSError) as e:
                if self.finished.is_set():  # stopping anyway (Ctrl-C, --max-tasks)
                    return
                self._say(f"lost the coordinator ({e}); reconnecting for "
                          f"{self.o.connect_timeout_s:g} s", logging.WARNING)
                done = False
            finally:
                conn.close()
            first = False
            if done:
                return

    async def _fetch_code(self, request: Callable[[Callable[[int], dict[str, Any]]], Any],
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
        self._code_ready = True

    async def _session(self, conn: Any, resume: bool) -> bool:
        ids = iter(range(1, 2**62))
        funcs: dict[int, tuple[bytes, str, str]] = {}
        pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        loop = asyncio.get_running_loop()

        async def reader() -> None:
            try:
                while True:
                    msg = await conn.recv()
                    fut = pending.pop(msg.get("re"), None) if "re" in msg else None
                    if msg["op"] == "error":
                        raise ProtocolError(f"coordinator refused: {msg.get('msg')}")
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
            except BaseException as e:
                for fut in pending.values():
                    if not fut.done():
                        fut.set_exception(e if isinstance(e, Exception) else ProtocolError(str(e)))
                        fut.exception()  # the session reports the reader's error, once
                pending.clear()
                raise

        def request(make: Callable[[int], dict[str, Any]]) -> asyncio.Future[dict[str, Any]]:
            """Send the message ``make(id)``; the future is resolved by its reply."""
            rid = next(ids)
            fut = loop.create_future()
            pending[rid] = fut
            conn.send(make(rid))
            return fut

        rtask = asyncio.ensure_future(reader())
        self.idle_since = None  # a new connection: idle from its first empty answer on
        try:
            if not self._code_ready:
                await self._fetch_code(request, conn)
            # reports that never got an answer go again, with the next request
            for done, failed in self.inflight.values():
                self.reports_done[:0] = done
                self.reports_failed[:0] = failed
            self.inflight = {}
            unreported = [r[0] for r in self.reports_done + self.reports_failed]
            if resume and (self.queued or unreported):
                running = list(self.queued) + unreported
                sent = time.monotonic()
                fut = request(lambda rid: m.resume(rid, running))
                await conn.drain()
                rep = await fut
                kept = dict(rep["kept"])
                for key, lz in self.queued.items():
                    if key in kept:
                        lz.tok = kept[key]
                        lz.valid_until = sent + self.lease_ttl_s
                for r in self.reports_done + self.reports_failed:
                    if r[0] in kept:
                        r[1] = kept[r[0]]
                if rep["lost"]:
                    log.info("%d task(s) no longer ours (done or handed to another worker "
                             "meanwhile)", len(rep["lost"]))
                    self._drop_lost(rep["lost"])
                if kept:
                    log.info("kept %d task(s) across the reconnection", len(kept))
                self._renewed.set()
            last_renew = time.monotonic()
            # two request slots: a long poll asking for work (it may wait on the coordinator),
            # and reports sent at once beside it, so a finished task's dependent is not held up
            # behind the poll (on a chain, the poll is what the dependent will come back on)
            poll_fut: asyncio.Future[dict[str, Any]] | None = None
            report_fut: asyncio.Future[dict[str, Any]] | None = None
            renew_fut: asyncio.Future[dict[str, Any]] | None = None
            renew_sent, held = 0.0, []
            sent_at: dict[int, float] = {}  # lease requests in flight: when they were sent
            assert self._kick is not None

            def send_lease(want: int) -> asyncio.Future[dict[str, Any]]:
                done, failed = self.reports_done, self.reports_failed
                self.reports_done, self.reports_failed = [], []
                sent = time.monotonic()
                fut = request(lambda rid: m.lease(rid, want=want, wait_ms=1000 if want else 0,
                                                  done=done, failed=failed, follow=True))
                self.inflight[id(fut)] = (done, failed)
                sent_at[id(fut)] = sent
                return fut

            def on_leases(fut: asyncio.Future[dict[str, Any]]) -> None:
                rep = fut.result()
                self.inflight.pop(id(fut), None)
                valid_until = sent_at.pop(id(fut), 0.0) + self.lease_ttl_s
                for fn in rep["funcs"]:
                    funcs[fn["fn"]] = (fn["code"], fn["name"], fn["src"])
                new = []
                for lz in rep["leases"]:
                    blob, name, src = funcs[lz["fn"]]
                    lease = Lease(lz["key"], lz["tok"], lz["fn"], lz["args"], blob, name, src,
                                  tuple(lz.get("after", ())), valid_until)
                    self.queued[lease.key] = lease
                    new.append(lease)
                if new:
                    self.leases.put(*new)
                if rep["state"] == "finished" and not self.queued:
                    self.finished.set()
                    self.leases.put(None)

            while True:
                if rtask.done():
                    rtask.result()
                    raise ProtocolError("connection closed")
                now = time.monotonic()
                if renew_fut is None and self.queued and (
                        self._renew_now or now - last_renew >= self.lease_ttl_s / 3):
                    held = [(k, lz.tok) for k, lz in list(self.queued.items())]
                    renew_fut = request(functools.partial(m.renew, leases=held))
                    last_renew = renew_sent = now
                    self._renew_now = False
                if renew_fut is not None and renew_fut.done():
                    lost = renew_fut.result()["lost"]
                    gone = set(lost)
                    for key, tok in held:
                        held_lease = self.queued.get(key)
                        if held_lease is not None and held_lease.tok == tok and key not in gone:
                            held_lease.valid_until = max(held_lease.valid_until, renew_sent + self.lease_ttl_s)
                    self._drop_lost(lost)
                    self._renewed.set()
                    renew_fut = None
                if poll_fut is not None and poll_fut.done():
                    on_leases(poll_fut)
                    poll_fut = None
                if report_fut is not None and report_fut.done():
                    on_leases(report_fut)
                    report_fut = None
                reports = bool(self.reports_done or self.reports_failed)
                if poll_fut is None and report_fut is None:
                    self._check_idle(reports)
                if self.finished.is_set() and poll_fut is None and report_fut is None and not reports:
                    conn.send(m.bye())
                    await conn.drain()
                    return True
                if poll_fut is None:
                    want = self._want()
                    if want or reports:
                        poll_fut = send_lease(want)
                        reports = False
                if reports and report_fut is None:
                    report_fut = send_lease(0)
                await conn.drain()
                waits = [w for w in (poll_fut, report_fut, renew_fut, rtask) if w is not None]
                if any(w.done() for w in waits):
                    continue
                kick = asyncio.ensure_future(self._kick.wait())
                timeout = max(0.01, self.lease_ttl_s / 3 - (time.monotonic() - last_renew))
                await asyncio.wait([kick, *waits], timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                kick.cancel()
                self._kick.clear()
        finally:
            rtask.cancel()
            try:
                await rtask
            except BaseException:
                pass
