"""Failure records: why a task failed, kept in the store, readable after the run.

The coordinator knows that a task failed, and its traceback, only while it runs; once ``ajug
run`` has ended that was lost, and ``ajug status JUGFILE`` showed the task as merely "ready".
So the coordinator writes a record for each failed task into the store (``Store.save_failure``:
kind, exception type and message, traceback, worker, time, attempts) and clears it when the
task later succeeds or is invalidated. ``ajug status JUGFILE --failed`` reads the records on
any machine that sees the store.

Nothing here is on the lease path: records are queued by the event loop and written by a
thread, once per tick; a success clears a record only for the keys known to have one (listed
once when the jugfile is loaded), so a run without failures costs a set lookup per task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .scheduler import Failure
from .stores.base import Store

if TYPE_CHECKING:
    from .graph import Graph
    from .scheduler import Scheduler

log = logging.getLogger(__name__)


def failure_record(func: str, failure: Failure, worker: str, ts: float | None = None) -> dict[str, Any]:
    """The stored form of a failure (``ajug.stores.base.FAILURE_FIELDS``)."""
    return {
        "func": func,
        "kind": failure.kind,
        "type": failure.type,
        "msg": failure.msg,
        "tb": failure.tb,
        "worker": worker,
        "ts": time.time() if ts is None else ts,
        "attempts": failure.attempts,
    }


class FailureRecords:
    """The coordinator's side: which records to write and clear, written off the loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: keys with a record in the store (or about to have one)
        self.known: set[str] = set()
        self._ops: dict[str, dict[str, Any] | None] = {}  # key -> record, or None: clear it
        self._busy: asyncio.Future[None] | None = None
        self._warned = False

    def start(self, index: Mapping[str, int], done: Sequence[bool]) -> None:
        """At load (in a thread): learn which keys have records; the records of tasks whose
        result is in the store are out of date (a run that ended before clearing them)."""
        self.known = set(self.store.failure_keys())
        for key in self.known:
            i = index.get(key)
            if i is not None and done[i]:
                self._ops[key] = None
        self.known.difference_update(k for k, r in self._ops.items() if r is None)

    def failed(self, key: str, record: dict[str, Any]) -> None:
        self.known.add(key)
        self._ops[key] = record

    def succeeded(self, key: str) -> None:
        """``key`` is done (or invalidated): its record goes, if it has one."""
        if key in self.known:
            self.known.discard(key)
            self._ops[key] = None

    def _write(self, ops: dict[str, dict[str, Any] | None]) -> None:
        try:
            for key, record in ops.items():
                if record is not None:
                    self.store.save_failure(key, record)
            gone = [k for k, r in ops.items() if r is None]
            if gone:
                self.store.clear_failures(gone)
        except StoreError as e:
            if not self._warned:
                self._warned = True
                log.warning("cannot record task failures in the store (%s): `ajug status "
                            "JUGFILE --failed` will not show them after the run", e)

    def flush(self) -> None:
        """Start writing what is pending, unless a write is still going (then next time)."""
        if not self._ops or (self._busy is not None and not self._busy.done()):
            return
        ops, self._ops = self._ops, {}
        self._busy = asyncio.get_running_loop().run_in_executor(None, self._write, ops)

    def drop(self) -> None:
        """Forget what is pending (the store has another coordinator now)."""
        self._ops.clear()

    async def close(self) -> None:
        """Wait for the writes in progress and write the rest."""
        if self._busy is not None:
            await self._busy
        if self._ops:
            ops, self._ops = self._ops, {}
            await asyncio.get_running_loop().run_in_executor(None, self._write, ops)


def clear_records(store: Store, keys: Sequence[str]) -> int:
    """Offline (``ajug invalidate``, the shell's ``invalidate``): the records of these keys go."""
    known = set(store.failure_keys())
    mine = [k for k in keys if k in known]
    return store.clear_failures(mine) if mine else 0


def record_new_failures(sched: Scheduler, graph: Graph, records: FailureRecords | None,
                        worker_name: Callable[[str], str]) -> None:
    """Log each task newly marked failed (once, here: not also in the worker's log) and have
    it recorded in the store; writes happen in a thread."""
    if not sched.new_failures:
        return
    new, sched.new_failures = sched.new_failures, []
    for i in new:
        f = sched.failures.get(i)
        if f is None:
            continue
        name = graph.functions[graph.fn[i]].name
        log.warning("task %s (%s) failed: %s: %s", name, graph.keys[i][:12], f.type, f.msg)
        if records is not None:
            records.failed(graph.keys[i], failure_record(name, f, worker_name(f.worker)))
    if records is not None:
        records.flush()
