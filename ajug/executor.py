"""Run tasks here, one after another: for tests, scripts and ``value()`` users.

The real engine is the coordinator and its workers; this executor keeps the same contract on a
small scale: a task runs only if its result is not in the store, after its inputs, and its
result is saved with metadata (``ajug.task.result_meta``). A task that raises is recorded with
its traceback; the tasks that need it are skipped (blocked) and everything else still runs.
``execute_jugfile`` also handles ``barrier()``/``bvalue()`` by loading the jugfile again once
the tasks before the barrier are done.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from . import task as _task
from .errors import TaskFailed, UsageError
from .task import Task, result_meta

log = logging.getLogger(__name__)

__all__ = ["ExecResult", "Failure", "execute", "execute_jugfile"]

#: ``execute_jugfile`` gives up after this many loads (a barrier that is never passed).
MAX_JUGFILE_LOADS = 1000


@dataclass
class Failure:
    """A task that raised: the exception and its formatted traceback."""

    key: str
    name: str
    error: BaseException
    traceback: str


@dataclass
class ExecResult:
    """What one ``execute`` (or ``execute_jugfile``) did. Lists hold task keys, in run order."""

    #: run and saved by this call
    executed: list[str] = field(default_factory=list)
    #: found in the store already (not run)
    loaded: list[str] = field(default_factory=list)
    #: raised: key -> Failure
    failures: dict[str, Failure] = field(default_factory=dict)
    #: not run because an input failed (or was itself blocked)
    blocked: list[str] = field(default_factory=list)
    #: times the jugfile was loaded (``execute_jugfile`` only)
    loads: int = 0
    #: the last load of the jugfile (``execute_jugfile`` only): its tasks and module
    jugfile: Any = None

    @property
    def ok(self) -> bool:
        """Every task's result is in the store."""
        return not self.failures and not self.blocked

    def raise_for_failures(self) -> None:
        """Raise ``TaskFailed`` for the first failure (with its traceback), if any."""
        if not self.failures:
            return
        first = next(iter(self.failures.values()))
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        raise TaskFailed(
            f"task {first.name} ({first.key[:12]}) raised "
            f"{type(first.error).__name__}: {first.error}{more}",
            first.traceback,
        )

    def _merge(self, other: ExecResult) -> None:
        self.executed += other.executed
        self.loaded += other.loaded
        self.failures.update(other.failures)
        self.blocked += other.blocked


def _in_dependency_order(tasks: list[Task]) -> list[Task]:
    """``tasks`` and everything they need, each dependency before its dependents.

    Iterative (a chain of 100 000 tasks must not hit the recursion limit); tasks are tracked by
    object while sorting and deduplicated by identity afterwards, computing keys in this order
    so that each key's dependencies are already cached.
    """
    order: list[Task] = []
    seen: set[int] = set()
    for root in tasks:
        if id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, iter(list(root.dependencies())))]
        while stack:
            node, deps = stack[-1]
            for d in deps:
                if id(d) not in seen:
                    seen.add(id(d))
                    stack.append((d, iter(list(d.dependencies()))))
                    break
            else:
                stack.pop()
                order.append(node)
    unique: dict[str, Task] = {}
    for t in order:
        unique.setdefault(t.key, t)
    return list(unique.values())


def execute(tasks: list[Task] | None = None, store: Any = None) -> ExecResult:
    """Run every task (default: all tasks defined so far) whose result is not in ``store``.

    ``store`` defaults to ``Task.store``; it becomes ``Task.store`` (so that ``value()`` reads
    from it afterwards, as after ``ajug.init``). Dependencies of the given tasks are included.
    Failures do not raise: see ``ExecResult.failures`` and ``ExecResult.raise_for_failures``.
    """
    if store is None:
        store = Task.store
    if store is None:
        raise UsageError("no store to execute into: pass store= (e.g. open_store('memory:'))")
    Task.store = store
    order = _in_dependency_order(list(_task.alltasks) if tasks is None else list(tasks))
    res = ExecResult()
    present = store.exists([t.key for t in order]) if order else []
    done: set[str] = set()
    bad: set[str] = set()
    for t, here in zip(order, present, strict=True):
        key = t.key
        if here:
            done.add(key)
            res.loaded.append(key)
            continue
        if any(d.key in bad for d in t.dependencies()):
            bad.add(key)
            res.blocked.append(key)
            continue
        if _run_one(t, store, res):
            done.add(key)
        else:
            bad.add(key)
    return res


def _run_one(t: Task, store: Any, res: ExecResult) -> bool:
    key = t.key
    start = time.perf_counter()
    # each task gets its inputs as stored, loaded afresh: a task that changes an input in place
    # must not change what the next one receives (as on workers; jug would hand on the live
    # object here and a stored copy elsewhere)
    for d in t.dependencies():
        d.unload()
    try:
        result = t.execute()
        rt = time.perf_counter() - start
        store.save(key, result, result_meta(t, rt))
    except Exception as e:
        tb = traceback.format_exc()
        log.warning("task %s (%s) failed: %s: %s", t.name, key[:12], type(e).__name__, e)
        res.failures[key] = Failure(key, t.name, e, tb)
        return False
    for d in t.dependencies():
        d.unload()  # jug's aggressive unload: what was loaded for this task is not kept
    res.executed.append(key)
    return True


def execute_jugfile(jugfile: str | os.PathLike[str], store: Any = None) -> ExecResult:
    """Load the jugfile and run its tasks; past a barrier, load it again, until it is complete.

    Stops when a load hits no barrier, when a load runs nothing new, or when a task fails (a
    barrier behind a failure is never passed). ``store`` is a Store or a URL (default: the file
    store beside the jugfile). ``ExecResult.jugfile`` is the last ``LoadedJugfile``.
    """
    from .jugfile import default_store_url, load_jugfile

    if store is None or isinstance(store, (str, os.PathLike)):
        from .stores import open_store

        store = open_store(str(store) if store is not None else default_store_url(jugfile))
    total = ExecResult()
    while total.loads < MAX_JUGFILE_LOADS:
        loaded = load_jugfile(jugfile, store)
        total.loads += 1
        total.jugfile = loaded
        res = execute(loaded.tasks, store)
        total._merge(res)
        if not loaded.hit_barrier or not res.executed or res.failures:
            break
    return total
