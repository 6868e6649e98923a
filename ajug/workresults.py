"""A worker's results between its task and the coordinator: kept pickled for the tasks that
follow here (``ResultCache``, ``CachingStore``), saved in batches (``SaveBatch``), then reported
done, or failed with what went wrong (``failure_report``).

Nothing here knows the worker: the batch hands its reports, and the tasks whose save failed,
to the callbacks it was given.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .errors import ResultMissing, StoreError, StoreFull
from .protocol import messages as m
from .stores import encoding
from .tracebacks import format_task_traceback
from .worksession import Lease, Report

log = logging.getLogger(__name__)

CACHE_BYTES = 256 * 1024 * 1024
CACHE_ITEMS = 4096


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

    def put_produced(self, key: str, p: encoding.Pickled, waited_on: Callable[[str], bool]) -> None:
        """A result this worker has just produced. A small one is kept: it may wait in the save
        batch, where a follow-on run meanwhile finds it only here. A large one is saved before
        the next task starts, and is kept only when a follow-on lease held here waits on it:
        keeping every large result took 256 MiB in each worker and a quarter of the bulk
        benchmark's speed (each result in fresh memory), for dependents that mostly run on
        other workers, or never exist."""
        if p.nbytes < SaveBatch.MAX_BYTES or waited_on(key):
            self.put(key, p)

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


def failure_report(lease: Lease, e: BaseException) -> tuple[Report, bool]:
    """The ``failed`` report of a task that raised ``e`` (or whose result could not be
    saved), and whether it counts as this task's own failure: a missing input is not (the
    coordinator has the input computed again, then this task runs again, no attempt counted)."""
    kind = "store" if isinstance(e, StoreError) else "exception"
    tb = format_task_traceback(e) if e.__traceback__ is not None else ""
    msg = str(e)
    missing = e.key if isinstance(e, ResultMissing) and e.key != lease.key else None
    if missing:
        kind = "input-missing"
        log.info("task %s (%s): its input %s is missing from the store (%s); handed back",
                 lease.func_name, lease.key[:12], missing[:12], msg)
    else:
        if isinstance(e, StoreFull):
            msg = f"store is full: {e}"
        # the coordinator logs it (once) and records it; here it is a detail
        log.info("task %s (%s) failed: %s: %s", lease.func_name, lease.key[:12],
                 type(e).__name__, msg)
    err = m.task_error(type(e).__name__, msg[:2000], tb[-20000:], kind, missing)
    return ("failed", m.failed_item(lease.key, lease.tok, err)), not missing


def given_back_report(lease: Lease) -> Report:
    """A lease given back unstarted: its worker is being replaced (a task timed out)."""
    err = m.task_error("Skipped", "its worker was replaced before it started", "", "skipped")
    return ("failed", m.failed_item(lease.key, lease.tok, err))


def skipped_report(lease: Lease) -> Report:
    """A follow-on given back unrun: an input it was to follow failed here (or was lost)."""
    err = m.task_error("Skipped", "an input was not produced on this worker", "", "skipped")
    return ("failed", m.failed_item(lease.key, lease.tok, err))


class SaveBatch:
    """Results of quick tasks saved together (one redis round trip for many), then reported
    done together. A result is reported only after it is in the store; until then it is in
    this worker's cache, so a dependent task run here meanwhile finds it.

    The main thread flushes between tasks; a helper thread flushes a batch that has waited
    ``MAX_DELAY_S`` while the main thread is inside a long task, so a long task (a follow-on
    reduce, say) never holds back the reports of the quick ones run before it.

    ``report(reports)`` gets the done reports of each flush (from either thread);
    ``save_failed(lease, error)`` each result that could not be saved (dropped from the cache
    already)."""

    MAX_ITEMS = 64
    MAX_BYTES = 1024 * 1024
    MAX_DELAY_S = 0.02

    def __init__(self, store: Any, cache: ResultCache, report: Callable[[list[Report]], None],
                 save_failed: Callable[[Lease, BaseException], None]) -> None:
        self.store, self.cache = store, cache
        self.report, self.save_failed = report, save_failed
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
        try:
            sizes = self.store.save_many([(lz.key, enc, None) for lz, enc, _ in items])
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            reports = self._save_one_by_one(items)
        else:
            reports = [("done", m.done_item(lz.key, lz.tok, rt=rt, size=size))
                       for (lz, _, rt), size in zip(items, sizes)]
        if reports:
            self.report(reports)

    def _save_one_by_one(self, items: list[tuple[Lease, encoding.Encoded, float]]
                         ) -> list[Report]:
        """After a failed batch: each task gets its own outcome."""
        reports: list[Report] = []
        for lz, enc, rt in items:
            try:
                size = self.store.save(lz.key, enc, None)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:
                self.cache.drop(lz.key)
                self.save_failed(lz, e)
                continue
            reports.append(("done", m.done_item(lz.key, lz.tok, rt=rt, size=size)))
        return reports
