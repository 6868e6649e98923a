"""Rendering status (live from a coordinator, or offline from a jugfile and its store)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from .scheduler import STATE_NAMES

COLUMNS = ("waiting", "ready", "running", "done", "failed", "blocked")


def status_table(st: dict[str, Any]) -> Table:
    title = escape(f"{st.get('jugfile', '')}  [{st.get('state', '')}]")
    t = Table(title=title, title_justify="left")
    t.add_column("function", no_wrap=True)
    for c in COLUMNS:
        t.add_column(c, justify="right", no_wrap=True)
    for f in st["functions"]:
        t.add_row(f["name"], *(str(f.get(c, 0)) for c in COLUMNS))
    tot = st["totals"]
    t.add_row("[b]total[/b]", *(f"[b]{tot.get(c, 0)}[/b]" for c in COLUMNS))
    return t


def status_lines(st: dict[str, Any]) -> list[str]:
    """The same counts with the function names last, for a terminal too narrow for the table
    (or a pipe, which rich takes to be 80 columns): a name is never cut; one longer than the
    line goes on, as the terminal wraps it."""
    widths = [max(len(c), *(len(str(f.get(c, 0))) for f in st["functions"]),
                  len(str(st["totals"].get(c, 0)))) for c in COLUMNS]
    out = [f"{st.get('jugfile', '')}  [{st.get('state', '')}]",
           "  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)) + "  function"]
    rows = [(f["name"], f) for f in st["functions"]] + [("total", st["totals"])]
    for name, counts in rows:
        out.append("  ".join(str(counts.get(c, 0)).rjust(w) for c, w in zip(COLUMNS, widths))
                   + "  " + name)
    return out


def workers_table(st: dict[str, Any]) -> Table:
    t = Table(title="workers", title_justify="left")
    for c in ("worker", "host", "pid", "running", "longest", "done", "failed", "last heartbeat"):
        t.add_column(c, justify="right" if c not in ("worker", "host") else "left",
                     overflow="fold")
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
def _fits(console: Console, table: Table) -> bool:
    wide = console.options.update_width(10_000)
    return Measurement.get(console, wide, table).maximum <= console.width


def failure_line(f: dict[str, Any]) -> str:
    """One failed task: function, identity, kind, exception; attempts, worker and time."""
    about = [f"attempt {f['attempts']}"] if f.get("attempts") else []
    who = f.get("worker_name") or f.get("worker")
    if who:
        about.append(f"on {who}")
    if f.get("ts"):
        about.append(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f["ts"])))
    tail = f" ({', '.join(about)})" if about else ""
    return f"  {f['func']} {f['key'][:12]} [{f['kind']}] {f['type']}: {f['msg']}{tail}"


def render(st: dict[str, Any], console: Console, failed_tracebacks: bool = False) -> None:
    table = status_table(st)
    if _fits(console, table):
        console.print(table)
    else:
        for line in status_lines(st):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if st.get("workers"):
        console.print(workers_table(st))
    if st.get("jobs"):
        render_jobs(st["jobs"], console)
    if st.get("barrier"):
        console.print("more tasks follow a barrier once these are done")
    for u in st.get("unplaceable", []):
        console.print(f"[yellow]{waiting_line(u)}[/yellow]", highlight=False, soft_wrap=True)
    for f in st["functions"]:
        if f.get("options"):
            console.print(f"options: {f['name']}: " + "; ".join(
                options_text(o) for o in f["options"]), markup=False, highlight=False,
                soft_wrap=True)
    jugfile = st.get("jugfile") or "JUGFILE"
    for f in st.get("stale", []):
        of = "" if f["exact"] else f" (of {f['checked']} checked)"
        console.print(
            f"[yellow]stale:[/yellow] {f['name']}: {f['stale']} of {f['stored']} stored "
            f"result(s){of} came from different code; `ajug invalidate {jugfile} --stale` "
            "redoes them", highlight=False, soft_wrap=True,
        )
    fails = st.get("failures", [])
    if fails:
        console.print(f"[b red]{len(fails)} failure(s)[/b red]")
        for f in fails:
            console.print(failure_line(f), markup=False, highlight=False, soft_wrap=True)
            if failed_tracebacks and f.get("tb"):
                console.print(f["tb"].rstrip("\n"), markup=False, highlight=False,
                              soft_wrap=True)


def options_text(o: dict[str, Any]) -> str:
    """``gpus=1, memory=68719476736, timeout 3600 s, retries 1, priority 5``."""
    parts = [f"{k}={v:g}" for k, v in sorted(o.get("resources", {}).items())]
    if "timeout" in o:
        parts.append(f"timeout {o['timeout']:g} s")
    for k in ("retries", "priority"):
        if k in o:
            parts.append(f"{k} {o[k]}")
    return ", ".join(parts)


def waiting_line(u: dict[str, Any]) -> str:
    """Ready tasks no connected worker can hold (``placement.unplaceable``)."""
    return (f"{u['tasks']} task(s) waiting for a worker with {u['needs']}: no connected "
            "worker offers that (ajug work --resources)")


def plain_line(st: dict[str, Any]) -> str:
    tot = st["totals"]
    n = st.get("tasks", sum(tot.values()))
    parts = []
    for c in STATE_NAMES:
        k = tot.get(c, 0)
        if c == "running" and k and "executing" in st:  # leases held ahead are not running
            parts += [f"{st['executing']} running"] + (
                [f"{k - st['executing']} queued"] if k > st["executing"] else [])
        elif k:
            parts.append(f"{k} {c}")
    rate = st.get("rate")
    r = f", {rate:g} tasks/s" if rate else ""
    if st.get("vanished"):
        r += (f"; {st['vanished']} result(s) vanished from the store, "
              f"{st.get('recomputed', 0)} computed again")
    for u in st.get("unplaceable", []):
        r += f"; {u['tasks']} waiting for a worker with {u['needs']}"
    jobs = st.get("jobs")
    if jobs:  # --workers slurm: the jobs too
        r += f"; jobs: {jobs.get('running', 0)} running, {jobs.get('pending', 0)} pending"
        if jobs.get("error"):
            r += f" ({jobs['error']})"
    return f"[{st.get('state', '')}] {tot.get('done', 0)}/{n} done ({', '.join(parts)}){r}"


def recorded_failures(graph: Any, store: Any, done: list[bool], sched: Any,
                      detail: bool) -> list[dict[str, Any]]:
    """The failures the store records for tasks of ``graph`` that are not done, marked failed in
    ``sched`` (what needs them: blocked), as a live status lists them."""
    from .scheduler import Failure

    out = []
    records = store.failures()
    for key, r in sorted(records.items(), key=lambda kv: kv[1].get("ts") or 0):
        i = graph.index.get(key)
        if i is None or done[i]:
            continue  # another jugfile's task, or done since (a record not cleared yet)
        f = Failure(i, str(r.get("kind", "exception")), str(r.get("type", "")),
                    str(r.get("msg", "")), str(r.get("tb", "")), str(r.get("worker", "")),
                    int(r.get("attempts") or 1))
        sched.mark_failed(i, f)
        out.append({"key": key, "func": graph.functions[graph.fn[i]].name, "kind": f.kind,
                    "type": f.type, "msg": f.msg, "tb": f.tb if detail else "",
                    "attempts": f.attempts, "worker": f.worker, "worker_name": f.worker,
                    "ts": r.get("ts")})
    return out


def offline_status(jugfile: str, store_url: str, detail: bool = False) -> dict[str, Any]:
    """The same counts as a live status, from the graph and the store (no coordinator); tasks
    whose failure the store records count as failed (``detail``: with their tracebacks)."""
    import os
    import socket
    from pathlib import Path

    from .graph import build_graph
    from .jugfile import gc_paused, load_jugfile
    from .offline import exists_all, stale_functions
    from .scheduler import Scheduler
    from .statusdata import function_rows
    from .stores import open_store

    store = open_store(store_url)
    try:
        with gc_paused():  # a full pass over a big graph's Task objects is long
            loaded = load_jugfile(jugfile, store)
            graph = build_graph(loaded.tasks, Path(loaded.path).parent, encode=False,
                                index=loaded.index)
        done = exists_all(store, graph.keys)  # one call: the file store lists each dir once
        sched = Scheduler(graph)
        sched.start(done)
        failures = recorded_failures(graph, store, done, sched, detail)
        tot = sched.totals()
        funcs = function_rows(graph, sched.counts)
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
            "failures": failures,
            "barrier": loaded.hit_barrier,
            "stale": stale_functions(graph, store, done),
        }
    finally:
        store.close()
