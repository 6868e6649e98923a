"""Rendering status (live from a coordinator, or offline from a jugfile and its store)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .scheduler import STATE_NAMES

COLUMNS = ("waiting", "ready", "running", "done", "failed", "blocked")


def status_table(st: dict[str, Any]) -> Table:
    title = f"{st.get('jugfile', '')}  [{st.get('state', '')}]"
    t = Table(title=title, title_justify="left")
    t.add_column("function")
    for c in COLUMNS:
        t.add_column(c, justify="right")
    for f in st["functions"]:
        t.add_row(f["name"], *(str(f.get(c, 0)) for c in COLUMNS))
    tot = st["totals"]
    t.add_row("[b]total[/b]", *(f"[b]{tot.get(c, 0)}[/b]" for c in COLUMNS))
    return t


def workers_table(st: dict[str, Any]) -> Table:
    t = Table(title="workers", title_justify="left")
    for c in ("worker", "host", "pid", "running", "longest", "done", "failed", "last heartbeat"):
        t.add_column(c, justify="right" if c not in ("worker", "host") else "left")
    for w in st.get("workers", []):
        ages = [a for a in w.get("running_s", []) if a is not None]
        t.add_row(
            w.get("name") or w["id"], w["host"], str(w["pid"]), str(w["n_running"]),
            _age(max(ages)) if ages else "", str(w["done"]), str(w["failed"]),
            f"{w['last_seen_s']:.1f}s ago",
        )
    return t


def _age(s: float) -> str:
    """How long a task has run: 42s, 3m05, 2h10."""
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}"


def jobs_table(jobs: dict[str, Any]) -> Table:
    """The launcher's jobs (``--workers slurm``): each with its state and node."""
    t = Table(title=f"{jobs['kind']} jobs {jobs['name']} (min {jobs['min']}, max {jobs['max']})",
              title_justify="left")
    for c in ("job", "state", "node", "workers", "age", "note"):
        t.add_column(c, justify="right" if c in ("workers", "age") else "left")
    for j in jobs.get("jobs", []):
        note = j.get("reason") or ("kept (--min-jobs)" if j.get("base") else "")
        t.add_row(j["id"], j["raw"].lower() if j["state"] != "cancelling" else "cancelling",
                  j.get("node") or "", str(j.get("workers", 0)), f"{j.get('age_s', 0):.0f}s",
                  note)
    return t


def render_jobs(jobs: dict[str, Any], console: Console) -> None:
    console.print(jobs_table(jobs))
    console.print(f"jobs: {jobs['reason']}", markup=False, highlight=False)
    if jobs.get("error"):
        console.print(f"[red]jobs: {jobs['error']}[/red]", highlight=False)
    if jobs.get("list_error"):
        console.print(f"[yellow]jobs: cannot list them: {jobs['list_error']}[/yellow]",
                      highlight=False)


def render(st: dict[str, Any], console: Console, failed_tracebacks: bool = False) -> None:
    console.print(status_table(st))
    if st.get("workers"):
        console.print(workers_table(st))
    if st.get("jobs"):
        render_jobs(st["jobs"], console)
    if st.get("barrier"):
        console.print("more tasks follow a barrier once these are done")
    for f in st.get("stale", []):
        of = "" if f["exact"] else f" (of {f['checked']} checked)"
        console.print(
            f"[yellow]stale:[/yellow] {f['name']}: {f['stale']} of {f['stored']} stored "
            f"result(s){of} came from different code; `ajug invalidate JUGFILE --stale` redoes them",
            highlight=False,
        )
    fails = st.get("failures", [])
    if fails:
        console.print(f"[b red]{len(fails)} failure(s)[/b red]")
        for f in fails:
            line = f"  {f['func']} {f['key'][:12]} [{f['kind']}] {f['type']}: {f['msg']}"
            console.print(line, markup=False, highlight=False)
            if failed_tracebacks and f.get("tb"):
                console.print(f["tb"], markup=False, highlight=False)


def plain_line(st: dict[str, Any]) -> str:
    tot = st["totals"]
    n = st.get("tasks", sum(tot.values()))
    parts = [f"{tot.get(c, 0)} {c}" for c in STATE_NAMES if tot.get(c, 0)]
    rate = st.get("rate")
    r = f", {rate:g} tasks/s" if rate else ""
    if st.get("vanished"):
        r += (f"; {st['vanished']} result(s) vanished from the store, "
              f"{st.get('recomputed', 0)} computed again")
    jobs = st.get("jobs")
    if jobs:  # --workers slurm: the jobs too
        r += f"; jobs: {jobs.get('running', 0)} running, {jobs.get('pending', 0)} pending"
        if jobs.get("error"):
            r += f" ({jobs['error']})"
    return f"[{st.get('state', '')}] {tot.get('done', 0)}/{n} done ({', '.join(parts)}){r}"


def offline_status(jugfile: str, store_url: str) -> dict[str, Any]:
    """The same counts as a live status, from the graph and the store (no coordinator)."""
    import os
    import socket
    from pathlib import Path

    from .graph import build_graph
    from .jugfile import load_jugfile
    from .offline import exists_all, stale_functions
    from .scheduler import Scheduler
    from .stores import open_store

    store = open_store(store_url)
    try:
        loaded = load_jugfile(jugfile, store)
        graph = build_graph(loaded.tasks, Path(loaded.path).parent, encode=False)
        done = exists_all(store, graph.keys)  # one call: the file store lists each dir once
        sched = Scheduler(graph)
        sched.start(done)
        tot = sched.totals()
        funcs = [
            {"name": f.name, **{STATE_NAMES[s]: c[s] for s in range(6)}}
            for f, c in zip(graph.functions, sched.counts)
        ]
        return {
            "jugfile": str(jugfile),
            "store": store.url,
            "state": "offline",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "tasks": len(graph),
            "totals": {STATE_NAMES[s]: tot[s] for s in range(6)},
            "functions": funcs,
            "workers": [],
            "failures": [],
            "barrier": loaded.hit_barrier,
            "stale": stale_functions(graph, store, done),
        }
    finally:
        store.close()
