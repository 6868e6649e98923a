"""The coordinator's dashboard: one web page, its JSON, and Prometheus metrics, over HTTP/1.1.

A deliberately tiny server on asyncio streams in the coordinator's own event loop (no new
dependency, no build step, no CDN): ``GET /`` is ``dashboard_static/index.html`` (inline CSS and
JS, polling ``/api/status`` every second), ``/api/status`` is ``coord.status(detail=True)`` as
``ajug status --json`` prints it, ``/api/history`` the (unix time, tasks done) samples behind
the throughput chart, and ``/metrics`` the Prometheus text format. One request per connection
(``Connection: close``); anything but GET/HEAD of these paths gets 404/405.

It has no authentication: it binds 127.0.0.1 unless told otherwise, and says so when it is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("dashboard_static")
REQUEST_TIMEOUT_S = 10.0
MAX_HEADER_LINES = 100
MAX_LINE_BYTES = 8192
#: Used when the coordinator does not say which buckets its ``durations`` counts are for.
DEFAULT_DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
STATES = ("waiting", "ready", "running", "done", "failed", "blocked")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(v)


def duration_histogram(coord: Any) -> tuple[tuple[float, ...], list[int], float] | None:
    """(bucket upper bounds, cumulative counts incl. +Inf, sum) from the coordinator's hooks.

    Contract: ``coord.durations`` holds one count per bucket of ``DURATION_BUCKETS_S`` (tasks
    whose run time was at most that bound and above the previous one), optionally followed by
    one count for longer tasks; ``coord.duration_sum_s`` the total run time. None if absent.
    """
    counts = getattr(coord, "durations", None)
    if counts is None:
        return None
    bounds = getattr(coord, "DURATION_BUCKETS_S", None)
    if bounds is None:
        from . import coordinator as _c

        bounds = getattr(_c, "DURATION_BUCKETS_S", DEFAULT_DURATION_BUCKETS_S)
    bounds = tuple(float(b) for b in bounds or ())
    counts = list(counts)
    if len(counts) == len(bounds):
        counts.append(0)
    if len(counts) != len(bounds) + 1:
        log.debug("coord.durations has %d counts for %d buckets: skipped", len(counts), len(bounds))
        return None
    cum, run = [], 0
    for c in counts:
        run += int(c)
        cum.append(run)
    return bounds, cum, float(getattr(coord, "duration_sum_s", 0.0) or 0.0)


def metrics_text(coord: Any) -> str:
    """The Prometheus exposition (text format 0.0.4) of the coordinator's counters."""
    st = coord.status()
    sched = coord.sched
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_num(v)}" for labels, v in samples)

    tasks = []
    for f in st["functions"]:
        for s in STATES:
            tasks.append((f'{{function="{_label(f["name"])}",state="{s}"}}', f.get(s, 0)))
    metric("ajug_tasks", "gauge", "Tasks of the graph by function and state.", tasks)
    metric("ajug_tasks_total", "gauge", "Tasks in the graph (so far, with a barrier).",
           [("", st["tasks"])])
    metric("ajug_leases_active", "gauge", "Leases currently held by workers.",
           [("", len(sched.leases) if sched is not None else 0)])
    metric("ajug_reclaimed_total", "counter",
           "Leases taken back from workers that disconnected or missed their deadline.",
           [("", st.get("reclaimed", 0))])
    metric("ajug_completed_total", "counter", "Tasks reported done by workers.",
           [("", getattr(sched, "completed", 0))])
    metric("ajug_duplicates_total", "counter", "Late DONEs for tasks another worker also ran.",
           [("", st.get("duplicates", 0))])
    metric("ajug_workers_connected", "gauge", "Worker connections.", [("", len(st["workers"]))])
    metric("ajug_barrier_pending", "gauge", "1 while more tasks follow a barrier.",
           [("", int(bool(st.get("barrier"))))])
    metric("ajug_uptime_seconds", "gauge", "Seconds since the coordinator started.",
           [("", float(st.get("uptime_s", 0.0)))])
    jobs = st.get("jobs")
    if jobs:  # the launcher of --workers slurm (pbs, sge, lsf, exec)
        metric("ajug_jobs", "gauge", "Worker jobs of this run by state.",
               [(f'{{state="{s}"}}', jobs.get(s, 0))
                for s in ("pending", "running", "submitting", "cancelling")])
        metric("ajug_jobs_max", "gauge", "The most worker jobs at once (--max-jobs).",
               [("", jobs.get("max", 0))])
        metric("ajug_jobs_submitted_total", "counter", "Worker jobs submitted.",
               [("", jobs.get("submitted", 0))])
        metric("ajug_jobs_ended_total", "counter", "Worker jobs that left the queue.",
               [("", jobs.get("ended_total", 0))])
        metric("ajug_jobs_submit_failures", "gauge",
               "Failed submissions in a row (0: submitting works).", [("", jobs.get("failures", 0))])
    hist = duration_histogram(coord)
    if hist is not None:
        bounds, cum, total = hist
        samples = [(f'_bucket{{le="{_num(b)}"}}', c) for b, c in zip(bounds, cum)]
        samples.append(('_bucket{le="+Inf"}', cum[-1]))
        out.append("# HELP ajug_task_duration_seconds Run time of completed tasks.")
        out.append("# TYPE ajug_task_duration_seconds histogram")
        out.extend(f"ajug_task_duration_seconds{lab} {_num(v)}" for lab, v in samples)
        out.append(f"ajug_task_duration_seconds_sum {_num(total)}")
        out.append(f"ajug_task_duration_seconds_count {cum[-1]}")
    return "\n".join(out) + "\n"


def _history(coord: Any) -> dict[str, Any]:
    return {"history": [[round(t, 3), d] for t, d in getattr(coord, "history", [])]}


class _Dashboard:
    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.page = (STATIC_DIR / "index.html").read_bytes()

    def route(self, path: str) -> tuple[int, str, bytes]:
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self.page
        if self.coord.sched is None:
            return 503, "text/plain; charset=utf-8", b"the coordinator is loading the jugfile\n"
        if path == "/api/status":
            body = json.dumps(self.coord.status(detail=True), sort_keys=True)
            return 200, "application/json", body.encode()
        if path == "/api/history":
            return 200, "application/json", json.dumps(_history(self.coord)).encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(self.coord).encode()
        return 404, "text/plain; charset=utf-8", b"not found\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, head = await asyncio.wait_for(self._read(reader), REQUEST_TIMEOUT_S)
            reason = _REASONS.get(status, "")
            hdr = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                   "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n")
            writer.write(hdr.encode() + (b"" if head else body))
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass
        except Exception:  # never let a page view take the coordinator down
            log.exception("dashboard request failed")
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        line = await reader.readline()
        parts = line.decode("latin-1").split()
        text = "text/plain; charset=utf-8"
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, text, b"bad request\n", False
        for _ in range(MAX_HEADER_LINES):
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
        else:
            return 400, text, b"too many headers\n", False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return 405, text, b"only GET and HEAD\n", False
        path = target.split("?", 1)[0]
        try:
            status, ctype, body = self.route(path)
        except Exception:
            log.exception("dashboard: %s failed", path)
            status, ctype, body = 500, text, b"internal error (see the coordinator's log)\n"
        return status, ctype, body, method == "HEAD"


async def start_dashboard(coord: Any, host: str, port: int) -> asyncio.base_events.Server:
    """Serve the dashboard for ``coord`` on host:port (0: a free port; see ``sockets``)."""
    from .access import all_loopback, bound_addresses

    d = _Dashboard(coord)
    server = await asyncio.start_server(d.handle, host, port, limit=MAX_LINE_BYTES)
    if not all_loopback(bound_addresses(server.sockets)):  # "" is every interface
        log.warning("the dashboard on %s:%d has no authentication: anyone who can reach it sees "
                    "task names, workers and tracebacks", host, server.sockets[0].getsockname()[1])
    return server


def dashboard_url(server: asyncio.base_events.Server, host: str) -> str:
    port = server.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"
