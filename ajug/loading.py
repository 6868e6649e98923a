"""Loading a run: the jugfile (in a thread: a jugfile may take a while), its compact graph, one
batched question to the store about which results exist, and a Scheduler started from that
(first, or past a barrier from the Scheduler before it)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import operator
from array import array
from collections.abc import Callable
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING

from .graph import Graph, build_graph
from .jugfile import LoadedJugfile, gc_paused, load_jugfile
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .coordinator import Settings
    from .failures import FailureRecords
    from .stores.base import Store

log = logging.getLogger(__name__)


def _trim_heap() -> None:
    """Give freed memory back to the OS (glibc keeps it otherwise); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def store_url_for_workers(store_url: str, store: Store | None) -> str:
    """The URL workers open: the user's URL for redis (it carries options), the absolute
    directory for a file store (a relative path would be relative to the coordinator)."""
    if "://" in store_url or store is None:
        return store_url
    return store.url


def release_tasks(loaded: LoadedJugfile) -> None:
    """The compact graph has all the coordinator needs: let the Task objects go (they cost
    most of a big graph's memory). They live in the jugfile's namespace too, which the
    coordinator does not use once the graph is built; a barrier reload runs it afresh."""
    from . import jugfile
    from . import task as _task

    n = len(loaded.tasks)
    loaded.tasks = []
    _task.reset()
    jugfile.big_graph_alive = False
    loaded.module.__dict__.clear()
    if n >= 100_000:  # below that the memory is small and a full collection is not
        gc.collect()
        _trim_heap()


async def load_run(
    settings: Settings,
    store: Store | None,
    records: FailureRecords | None,
    clock: Callable[[], float],
    *,
    previous: LoadedJugfile | None,
    old: Scheduler | None,
    took_over: bool,
) -> tuple[LoadedJugfile, Graph, Scheduler, array[int]]:
    """The jugfile loaded, its graph, a started Scheduler and each result's stored size.

    One call asks the store about the whole graph: it batches it its own way (a listing per
    fan-out directory, pipelines of a thousand keys on redis). A damaged result (a file cut
    short, not ajug's) does not count as done (``Store.intact``); the lengths of the others
    are kept for the end-of-run check. A coordinator that took over a store in the middle of a
    run confirms what the previous one had done before it calls the run finished."""
    assert store is not None
    loop = asyncio.get_running_loop()
    with gc_paused():  # until the Task objects are gone: a full pass over them is long
        loaded = await loop.run_in_executor(None, load_jugfile, settings.jugfile, store)
        if previous is not None:  # past a barrier: sys.path already holds what it added
            loaded.code_roots = list(dict.fromkeys(previous.code_roots + loaded.code_roots))
        jugdir = Path(loaded.path).parent
        graph = await loop.run_in_executor(
            None, partial(build_graph, loaded.tasks, jugdir, index=loaded.index))
        release_tasks(loaded)
    found = await loop.run_in_executor(None, store.intact_sizes, graph.keys)
    done = list(map(operator.is_not, found, repeat(None)))
    if records is not None:
        await loop.run_in_executor(None, records.start, graph.index, done)
    sched = Scheduler(
        graph,
        lease_ttl_s=settings.lease_ttl_s,
        max_attempts=settings.max_attempts,
        retries=settings.retries,
        task_timeout_s=settings.task_timeout_s,
        fail_fast=settings.fail_fast,
        clock=clock,
    )
    if old is None:
        sched.start(done, confirm=took_over)
    elif gone := sched.start_after_barrier(done, old):
        log.warning("%d result(s) done before the barrier vanished from the store: computing "
                    "them again", len(gone))
    sizes = array("Q", [n or 0 for n in found]) if any(done) else array("Q", bytes(8 * len(done)))
    return loaded, graph, sched, sizes
