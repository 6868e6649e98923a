"""The end-of-run check: before the coordinator calls a run finished (or loads the jugfile past
a barrier) it asks the store, in one batched call, whether every result of the graph is still
there and whole. Results found at start can vanish too (a redis restarted without persistence,
a deleted file), and nobody may load them again; what vanished is computed again first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger("ajug.coordinator")


def log_vanished(c: Coordinator) -> None:
    """One line per tick at most, however many results vanished meanwhile."""
    sched = c.sched
    assert sched is not None
    n, c._vanished_logged = sched.vanished - c._vanished_logged, sched.vanished
    log.warning(
        "%d result(s) vanished from the store %s (deleted, damaged, or a redis that lost "
        "its data): computing them again (%d vanished, %d recomputed so far)", n,
        c.store.url if c.store else "", sched.vanished, sched.recomputed,
    )


async def confirm_results(c: Coordinator) -> bool:
    """Is every result of the graph in the store, whole? Asked whenever something was done
    since the last such check (the start-up scan is one). True when everything is confirmed;
    False while the check runs elsewhere, could not be made, or found results gone (they are
    ready again)."""
    loop = asyncio.get_running_loop()
    while True:
        sched, graph, store = c.sched, c.graph, c.store
        assert sched is not None and graph is not None and store is not None
        n = len(sched.unverified)
        if n == 0:
            return sched.finished()
        if c._verifying:
            return False
        idxs = sched.done_indices()
        c._verifying = True
        keys, sizes = [graph.keys[i] for i in idxs], [c.sizes[i] for i in idxs]
        try:
            ok = await loop.run_in_executor(None, store.intact, keys, sizes)
        except StoreError as e:
            log.warning("cannot confirm that this run's results are in the store (%s); "
                        "asking again", e)
            return False
        finally:
            c._verifying = False
        if c.sched is not sched:
            return False
        del sched.unverified[:n]
        if sched.lost_results([i for i, good in zip(idxs, ok) if not good]):
            log_vanished(c)
            c._notify()
            return False
