"""The status as data (what ``ajug status`` prints and the dashboard serves): built live from a
coordinator, and the parts an offline status shares with it (rows per function, totals,
failures), so that both say the same thing the same way."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from .taskstate import STATE_NAMES, Failure

if TYPE_CHECKING:
    from .coordinator import Coordinator
    from .graph import Graph
    from .scheduler import Scheduler

#: failures listed in a status, at most
MAX_STATUS_FAILURES = 200
#: leases listed per worker in a status, at most (longest running first)
MAX_LISTED_LEASES = 50


def totals_map(totals: list[int]) -> dict[str, int]:
    return {STATE_NAMES[s]: totals[s] for s in range(6)}


def function_options(graph: Graph) -> dict[int, list[dict[str, Any]]]:
    """Per function, the distinct options its tasks have (resources, timeout, retries,
    priority; ``TaskOptions.to_json``), for functions that have any."""
    if graph.opt_of is None:
        return {}
    seen: dict[int, set[int]] = {}
    for fid, k in zip(graph.fn, graph.opt_of):
        if k:
            seen.setdefault(fid, set()).add(k)
    return {fid: [graph.options[k].to_json() for k in sorted(ks)] for fid, ks in seen.items()}


def function_rows(graph: Graph, counts: list[list[int]],
                  executing: list[int] | None = None) -> list[dict[str, Any]]:
    """One row per function: its tasks per state (and, live, how many are executing), and
    the options its tasks have, if any."""
    rows = []
    options = function_options(graph)
    for fid, (f, c) in enumerate(zip(graph.functions, counts)):
        row: dict[str, Any] = {"name": f.name, **totals_map(c)}
        if executing is not None:
            row["executing"] = executing[fid]
        if fid in options:
            row["options"] = options[fid]
        rows.append(row)
    return rows


def failure_entry(graph: Graph, f: Failure, detail: bool, worker_name: str) -> dict[str, Any]:
    """One failed task as a status lists it (``detail``: with its traceback)."""
    i = f.idx
    return {"key": graph.keys[i], "func": graph.functions[graph.fn[i]].name, "kind": f.kind,
            "type": f.type, "msg": f.msg, "tb": f.tb if detail else "", "attempts": f.attempts,
            "causes": f.causes, "worker": f.worker, "worker_name": worker_name}


def executing(sched: Scheduler, graph: Graph) -> list[int]:
    """Per function, the tasks being executed now: of each worker's leases, the oldest one
    that is not a follow-on (a worker runs its leases one at a time, in the order it got them;
    the others are queued there). ``running`` counts every lease."""
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


def worker_rows(sched: Scheduler, graph: Graph, now: float) -> list[dict[str, Any]]:
    """Each connected worker with its leases, longest running first: a hung task shows at the
    top with how long it has run (None for a follow-on lease still waiting for its inputs)."""
    rows = []
    leases, remaining = sched.leases, sched.remaining
    for w in sched.workers.values():
        held = sorted(w.leases, key=lambda i: leases[i].since)[:MAX_LISTED_LEASES]
        rows.append({
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
        })
    return rows


def done_rate(history: list[tuple[float, int]]) -> float:
    """Tasks done a second over the last ten ticks of ``history`` ((unix time, done) pairs)."""
    if len(history) < 2:
        return 0.0
    (t0, d0), (t1, d1) = history[max(0, len(history) - 11)], history[-1]
    return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


def worker_name(coord: Coordinator, wid: str) -> str:
    """A worker's name as it gave it (``local0``, ``--name``), or host:pid; remembered after
    it leaves, for the failures it is named in."""
    w = coord.sched.workers.get(wid) if coord.sched is not None else None
    if w is not None and w.name:
        coord._names[wid] = w.name
    host, _, rest = wid.partition(":")
    return coord._names.get(wid) or f"{host}:{rest.partition(':')[0]}"


def live_status(coord: Coordinator, detail: bool = False) -> dict[str, Any]:
    """The coordinator's status now, on its clock (leases' ages) and the wall clock (uptime)."""
    sched, graph = coord.sched, coord.graph
    assert sched is not None and graph is not None
    now = coord.clock()
    running = executing(sched, graph)
    failures = [failure_entry(graph, f, detail, worker_name(coord, f.worker))
                for f in list(sched.failures.values())[:MAX_STATUS_FAILURES]]
    return {
        "jugfile": str(coord.s.jugfile),
        "store": coord.store.url if coord.store else "",
        "state": coord.state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "uptime_s": round(time.time() - coord.started_at, 3),
        "tasks": len(graph),
        "totals": totals_map(sched.totals()),
        "executing": sum(running),
        "functions": function_rows(graph, sched.counts, running),
        "workers": worker_rows(sched, graph, now),
        "failures": failures,
        "barrier": bool(coord.loaded and coord.loaded.hit_barrier),
        "loads": coord.loads,
        "reclaimed": sched.reclaimed,
        "duplicates": sched.duplicates,
        "vanished": sched.vanished,
        "recomputed": sched.recomputed,
        "unplaceable": sched.unplaceable(),
        "rate": round(done_rate(coord.history), 2),
        **{name: section() for name, section in coord.status_sections.items()},
    }
