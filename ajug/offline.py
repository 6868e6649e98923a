"""A jugfile's graph against its store, without a coordinator: what the offline commands share.

``invalidate``, ``cleanup``, ``check``, ``sleep-until``, ``shell``, ``graph`` and the offline
``status`` all load the jugfile with the store open (so ``barrier()``/``bvalue()`` go as far as
the stored results allow) and compile the compact graph without pickling anything for the wire.
Existence is asked in one batched call for the whole graph: the file store then lists each of
its 256 fan-out directories once, however many tasks there are.

Nothing here prints or exits; the click commands in ``ajug.commands`` do that.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .graph import Graph, build_graph
from .jugfile import LoadedJugfile, default_store_url, gc_paused, load_jugfile
from .stores import open_store
from .stores.base import Store

log = logging.getLogger(__name__)

#: Metadata is read in batches of this many keys (bounded memory, progress in logs).
META_BATCH = 5000
#: ``stale_functions`` reads at most this many results' metadata per function (evenly spread);
#: reading every header costs about 10 us per result on a local disk and far more on NFS.
STALE_SAMPLE_PER_FUNCTION = 1000
#: A task identity prefix must have at least this many hex digits (fewer would match too much).
MIN_KEY_PREFIX = 4
_HEX = re.compile(r"[0-9a-f]+")


@dataclass
class Offline:
    """A loaded jugfile, its compiled graph, its store, and which results the store holds."""

    store: Store
    loaded: LoadedJugfile
    graph: Graph
    done: list[bool]

    @property
    def partial(self) -> bool:
        """Loading stopped at a barrier whose inputs are not all stored: tasks after it are unknown."""
        return self.loaded.hit_barrier

    def close(self) -> None:
        self.store.close()


def exists_all(store: Store, keys: Sequence[str]) -> list[bool]:
    """One batched call for all ``keys`` (stores batch internally as suits them): a result
    counts if it is there and not visibly damaged (``Store.intact``: a file cut short does not
    count, as it does not for the coordinator)."""
    return store.intact(list(keys)) if keys else []


def open_offline(jugfile: str, store_url: str | None = None) -> Offline:
    """Open the store, load the jugfile against it, compile the graph and ask what exists."""
    store = open_store(store_url or default_store_url(jugfile))
    try:
        with gc_paused():  # a full pass over a big graph's Task objects is long
            loaded = load_jugfile(jugfile, store)
            graph = build_graph(loaded.tasks, Path(loaded.path).parent, encode=False,
                                index=loaded.index)
        done = exists_all(store, graph.keys)
    except BaseException:
        store.close()
        raise
    return Offline(store, loaded, graph, done)


# -- selecting tasks ----------------------------------------------------------------------------
def function_matches(graph: Graph, pattern: str) -> list[int]:
    """Function numbers whose name is ``pattern``: ``module.name``, bare ``name``, or a glob."""
    out = []
    glob = any(c in pattern for c in "*?[")
    for f in graph.functions:
        short = f.name.rpartition(".")[2]
        if glob:
            if fnmatch.fnmatchcase(f.name, pattern) or fnmatch.fnmatchcase(short, pattern):
                out.append(f.fid)
        elif pattern in (f.name, short):
            out.append(f.fid)
    return out


def select(graph: Graph, targets: Iterable[str]) -> set[int]:
    """Tasks named by each target: a function name (or glob), else a task identity prefix.

    Raises ``UsageError`` for a target that matches nothing, listing what would have matched.
    """
    chosen: set[int] = set()
    for target in targets:
        fids = set(function_matches(graph, target))
        if fids:
            chosen.update(i for i, f in enumerate(graph.fn) if f in fids)
            continue
        prefix = target.lower()
        if len(prefix) >= MIN_KEY_PREFIX and _HEX.fullmatch(prefix):
            hits = [i for i, k in enumerate(graph.keys) if k.startswith(prefix)]
            if hits:
                chosen.update(hits)
                continue
        names = ", ".join(f.name for f in graph.functions) or "none"
        raise UsageError(
            f"no function or task matches {target!r}: give a function name ({names}) or at "
            f"least {MIN_KEY_PREFIX} hex digits of a task's identity"
        )
    return chosen


def downstream(graph: Graph, seeds: Iterable[int]) -> list[int]:
    """``seeds`` and every task that needs one of them, directly or not, in graph order.

    One forward pass: the graph lists each task after its dependencies.
    """
    hit = bytearray(len(graph))
    for i in seeds:
        hit[i] = 1
    ds, di = graph.dep_start, graph.dep_idx
    for i in range(len(graph)):
        if not hit[i]:
            for p in range(ds[i], ds[i + 1]):
                if hit[di[p]]:
                    hit[i] = 1
                    break
    return [i for i in range(len(graph)) if hit[i]]


def count_by_function(graph: Graph, idxs: Iterable[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in idxs:
        name = graph.functions[graph.fn[i]].name
        out[name] = out.get(name, 0) + 1
    return out


# -- stale code ---------------------------------------------------------------------------------
def _is_stale(meta: dict[str, Any] | None, src: str) -> bool:
    """A result is stale when it records a source hash and it is not the current one.

    Results without one (written by jug) are not called stale: nothing says which code made them.
    """
    return meta is not None and bool(meta.get("src")) and meta["src"] != src


def stale_tasks(graph: Graph, store: Store, done: Sequence[bool]) -> list[int]:
    """Every stored result of the graph whose function's source has changed (reads all headers)."""
    stored = [i for i, d in enumerate(done) if d]
    out = []
    for b in range(0, len(stored), META_BATCH):
        batch = stored[b : b + META_BATCH]
        metas = store.metadata([graph.keys[i] for i in batch])
        for i, meta in zip(batch, metas):
            if _is_stale(meta, graph.functions[graph.fn[i]].src):
                out.append(i)
    return out


def stale_functions(graph: Graph, store: Store, done: Sequence[bool],
                    per_function: int | None = STALE_SAMPLE_PER_FUNCTION) -> list[dict[str, Any]]:
    """Functions with stored results from different code: the stale-code report of ``status``.

    Reads the metadata of at most ``per_function`` results per function, evenly spread (None:
    all), so that status stays fast on large stores; ``exact`` says whether all were read.
    Each entry: ``{name, stale, checked, stored, exact, src}``; only functions with a stale
    result are listed. ``ajug invalidate --stale`` always reads every result.
    """
    by_fn: dict[int, list[int]] = {}
    for i, d in enumerate(done):
        if d:
            by_fn.setdefault(graph.fn[i], []).append(i)
    out = []
    for fid, idxs in by_fn.items():
        f = graph.functions[fid]
        sample = idxs
        if per_function is not None and len(idxs) > per_function:
            step = len(idxs) / per_function
            sample = [idxs[int(k * step)] for k in range(per_function)]
        stale = 0
        for b in range(0, len(sample), META_BATCH):
            batch = sample[b : b + META_BATCH]
            metas = store.metadata([graph.keys[i] for i in batch])
            stale += sum(1 for m in metas if _is_stale(m, f.src))
        if stale:
            out.append({"name": f.name, "stale": stale, "checked": len(sample),
                        "stored": len(idxs), "exact": len(sample) == len(idxs), "src": f.src})
    return out


# -- results the graph does not own -------------------------------------------------------------
def orphans(store: Store, graph: Graph) -> list[str]:
    """Keys with a result in the store that no task of ``graph`` owns."""
    index = graph.index
    return [k for k in store.list() if k not in index]


def result_bytes(store: Store, keys: Sequence[str]) -> int:
    """The stored size of these results, from their metadata (headers only, batched)."""
    total = 0
    for b in range(0, len(keys), META_BATCH):
        for m in store.metadata(keys[b : b + META_BATCH]):
            if m:
                total += int(m.get("size") or 0)
    return total


def remove(store: Store, keys: Sequence[str]) -> int:
    n = 0
    for b in range(0, len(keys), META_BATCH):
        n += store.remove(keys[b : b + META_BATCH])
    return n
