"""One connection to the coordinator: a worker (leases) or a client (status), after the
handshake. Requests are dispatched through ``HANDLERS`` (one handler an op), each checked first
with the protocol's one access policy (``messages.check_allowed``); lease requests are long polls
that may wait for work, the others are answered in order. The decisions are the Scheduler's."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import ProtocolError, StoreError
from .protocol import connection as conn_mod
from .protocol import messages as m
from .protocol.messages import ERROR_CODES
from .scheduler import DONE, FailureKind, LeaseRequest, Outcome

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger(__name__)

#: a lease request waits at most this long for work, whatever it asks
MAX_WAIT_MS = 60_000
MAX_LEASES_PER_REQUEST = 1024


class Waiter(LeaseRequest):
    """A lease request waiting for work, with the event that wakes its long poll."""

    def __init__(self, wid: str, want: int) -> None:
        super().__init__(wid, want)
        self.event = asyncio.Event()


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
        """Read and answer requests until the peer says bye, breaks the protocol or hangs up."""
        tasks: set[asyncio.Task[None]] = set()
        await self.c._loaded.wait()  # connected while the jugfile was loading
        self.register()
        try:
            while not self.conn.closed:
                if len(tasks) >= self.MAX_PENDING_LEASE_REQUESTS:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                msg = await self._next()
                if msg is None or not await self._dispatch(msg, tasks):
                    return
        finally:
            for t in tasks:
                t.cancel()

    async def _next(self) -> dict[str, Any] | None:
        """The next request to answer; None when the connection is over (bye, an error that
        ends it, a bad frame: recv() has told the peer and closed this connection only)."""
        while True:
            try:
                msg = await self.conn.recv()
            except ProtocolError as e:
                if not isinstance(e, conn_mod.ConnectionClosed):
                    log.warning("bad message from %s: %s", self.wid, e)
                return None
            op = msg["op"]
            if op == "bye":
                return None
            if op != "error":
                return msg
            # nobody answers an error with an error (SPEC 9)
            log.info("%s sent error %s: %s", self.wid, msg["code"][:40], msg["msg"][:200])
            if ERROR_CODES.get(msg["code"], False):
                return None

    async def _dispatch(self, msg: dict[str, Any], tasks: set[asyncio.Task[None]]) -> bool:
        """Answer one request through ``HANDLERS``, after the access check; False: the
        connection ends (an op that has no handler here)."""
        op = msg["op"]
        try:
            m.check_allowed(msg, self.role, self.access)
        except m.AccessDenied as e:
            self.error(msg.get("id"), "access", str(e))
            await self.conn.drain()
            return True
        except m.UnknownOp:
            pass  # hello or auth again: no handler, an "op" error and the close
        handler = HANDLERS.get(op)
        if handler is None:
            self.error(msg.get("id"), "op", f"unexpected operation {op!r}")
            await self.conn.drain()
            return False
        if op in LONG_POLLS:  # may wait for work: the next requests are read meanwhile
            t = asyncio.ensure_future(self._guarded(handler, msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        else:
            await self._guarded(handler, msg)
        return True

    async def _guarded(self, handler: Handler, msg: dict[str, Any]) -> None:
        """Run one request: a connection that broke meanwhile ends quietly; a bug in the
        coordinator answers ``internal`` (SPEC 9) and the connection carries on."""
        try:
            await handler(self, msg)
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
        sched.set_follow(self.wid, bool(msg.get("follow")))
        offer = msg.get("offer")
        if offer is not None:
            sched.set_offer(self.wid, offer["group"], offer["resources"])
        if self._report(msg):
            c._notify_from(self)
            await c._check_finished()
        want = min(int(msg["want"]), MAX_LEASES_PER_REQUEST)
        # the long poll's own time (it pairs with asyncio's timeouts), not a lease decision
        deadline = time.monotonic() + min(msg["wait_ms"], MAX_WAIT_MS) / 1000.0
        leases = await self._wait_for_leases(want, deadline)
        if leases is None:
            return
        self._reply_leases(msg["id"], leases)
        await self.conn.drain()

    async def _wait_for_leases(self, want: int, deadline: float) -> list[tuple[int, int]] | None:
        """Up to ``want`` leases, waiting until ``deadline`` for work (none when the run is
        finished); None when the owner lock was lost meanwhile (no reply: the coordinator
        stops)."""
        c = self.c
        leases: list[tuple[int, int]] = []
        while True:
            sched = c.sched
            assert sched is not None
            if want and c.state == "running" and not sched.resuming() and not sched.halted:
                if not await c.may_hand_out():
                    return None
                sched = c.sched
                assert sched is not None
                leases = sched.lease(self.wid, want)
            if leases or not want or c.over():
                return leases
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return leases
            waiter = Waiter(self.wid, want)
            c._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter.event.wait(), remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                c._waiters.discard(waiter)
            if waiter.leases:  # served directly by the coordinator's _notify_from
                return waiter.leases
            if time.monotonic() >= deadline:
                return leases

    def _report(self, msg: dict[str, Any]) -> bool:
        """The done and failed tasks a lease request reports; True if anything changed."""
        changed = self._report_done(msg["done"])
        changed = self._report_failed(msg["failed"]) or changed
        self.c.record_failures()
        return changed

    def _report_done(self, items: list[Any]) -> bool:
        c = self.c
        sched, graph = c.sched, c.graph
        assert sched is not None and graph is not None
        changed = False
        for key, tok, meta in items:
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
                c.note_run_time(meta.get("rt"))
            elif sched.state[i] != DONE and i not in c._late_pending:
                # the lease was reclaimed: the result counts if it reached the store
                c._late_pending.add(i)
                asyncio.ensure_future(self._late_done(i))
        return changed

    def _report_failed(self, items: list[Any]) -> bool:
        c = self.c
        sched, graph = c.sched, c.graph
        assert sched is not None and graph is not None
        changed = False
        for key, tok, err in items:
            i = graph.index.get(key)
            if i is None:
                continue
            j = self._missing_input(i, err)
            if j is not None:  # not the task's fault: its input is computed again, it waits
                sched.input_missing(self.wid, i, tok, j)
                changed = True
                continue
            if sched.fail(self.wid, i, tok, err) is not Outcome.STALE:
                changed = True
                if sched.halted:
                    c.record_failures()
                    log.error("stopping at the first failure (--fail-fast)")
                    c.halt()
        return changed

    def _missing_input(self, i: int, err: dict[str, Any]) -> int | None:
        """The input of ``i`` that its worker found missing from the store, if ``err`` says
        so and names one of the task's inputs (else the report is an ordinary failure)."""
        if err.get("kind") != FailureKind.INPUT_MISSING:
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
                                    [graph.keys[d] for d in sched.after(i)], sched.timeout_of(i)))
        if out:
            state = "run"
        elif c.over():
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


Handler = Callable[[ConnSession, dict[str, Any]], Awaitable[None]]

#: op -> its handler: every request a worker or client may send after the handshake (``bye``
#: and ``error`` end or skip in ``_next``)
HANDLERS: dict[str, Handler] = {
    "lease": ConnSession.on_lease,
    "renew": ConnSession.on_renew,
    "resume": ConnSession.on_resume,
    "code": ConnSession.on_code,
    "status": ConnSession.on_status,
    "shutdown": ConnSession.on_shutdown,
    "exited": ConnSession.on_exited,
    "invalidate": ConnSession.on_invalidate,
}
#: requests answered concurrently with the next ones: they may wait for work
LONG_POLLS = frozenset({"lease"})
