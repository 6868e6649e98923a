"""The benchmark runner: ajug against the raw store floor and against jug, in one table.

    python -m benchmarks [--workloads independent,chain,mapreduce,bulk,scale,connections]
                         [--systems ajug-file,ajug-redis,floor,jug] [--n 20000] [--repeat 3]
                         [--jobs 2] [--json out.json] [--quick] [--full]

Every measurement runs the real command as a subprocess of this one and times all of it
(interpreter start, jugfile load, graph, serving, workers, shutdown):

- ``ajug-file`` / ``ajug-redis``: ``ajug run J -j JOBS --no-progress --store S``.
- ``floor-file`` / ``floor-redis``: one process, no coordinator: loads the jugfile with ajug's
  loader, then for every task in order loads its inputs from the store, runs it and saves the
  result as a worker does (``save_many`` batches of 64, the same metadata). What ajug could do
  with zero overhead.
- ``jug-file`` / ``jug-redis``: JOBS ``jug execute J --jugdir D`` processes on one jugdir, as jug
  users run it (``--wait-cycle-time 0.05``: jug's default 12 s sleep while waiting for another
  process's task would dominate every chain).

Processes run under a tiny wrapper (``WRAP``) that writes ``getrusage`` at exit: the peak RSS of
the process itself (the coordinator, for ``ajug run``) apart from its children (the workers).
Results are checked after the last repeat of each system (a sample of values, loaded with
``ajug.init``/``jug.init`` in a subprocess); on ajug's stores every repeat also reads all the
results' metadata, whose write times give the serving span and the steady-state rate. The redis
systems use a redis-server of their own, on a free port, stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import import_module
from pathlib import Path
from typing import Any

from benchmarks.workloads import REGISTRY, Workload, fmt

REPO = Path(__file__).resolve().parents[1]
WORKLOAD_DIR = Path(__file__).resolve().parent / "workloads"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: every workload (benchmarks/workloads/__init__.py has the registry; this order is the table's)
WORKLOADS = tuple(REGISTRY)
#: Workloads that every system runs to completion (the others are ajug's alone).
GRAPH_WORKLOADS = tuple(w.name for w in REGISTRY.values() if w.systems in ("all", "ajug+jug"))
SYSTEMS = ("ajug-file", "ajug-redis", "floor-file", "floor-redis", "jug-file", "jug-redis")
DEFAULT_SYSTEMS = "ajug-file,ajug-redis,floor,jug"
SIZES = {w.name: w.size for w in REGISTRY.values()}
QUICK_SIZES = {w.name: w.quick_size for w in REGISTRY.values()}
#: A run is stopped after max(MIN_TIMEOUT_S, tasks / MIN_RATE) seconds unless --timeout says.
MIN_TIMEOUT_S = 60.0
MIN_RATE = 50.0
CHECK_TIMEOUT_S = 600.0
SERVE_TIMEOUT_S = 600.0
JUG_WAIT_CYCLE_S = 0.05
STATUS_SAMPLES = 10
STATUS_SPACING_S = 0.2
SCALE_WARMUP_S = 0.5
CHECK_SAMPLES = 50
#: The floor writes results in batches as a worker does (ajug.worker.SaveBatch's limits).
FLOOR_BATCH = 64
FLOOR_BATCH_BYTES = 8 << 20
SUMMARY_RE = re.compile(r"(\d+)/(\d+) done.*?(?:, ([\d.]+) tasks/s)?$", re.M)
SERVING_RE = re.compile(r"serving \S+ on (\S+):(\d+)")

#: Runs ``target`` (ajug's CLI, jug's CLI or the floor) and writes its rusage at exit: the
#: process's own peak RSS and CPU apart from those of its (reaped) children.
WRAP = r"""
import atexit, json, resource, sys
out, target, args = sys.argv[1], sys.argv[2], sys.argv[3:]
def dump():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        json.dump({"self_rss_kib": s.ru_maxrss, "children_rss_kib": c.ru_maxrss,
                   "self_cpu_s": s.ru_utime + s.ru_stime,
                   "children_cpu_s": c.ru_utime + c.ru_stime}, f)
atexit.register(dump)
sys.argv = [target, *args]
if target == "ajug":
    from ajug.cli import main
    main()
elif target == "jug":
    from jug.jug import main
    sys.exit(main(sys.argv))
else:
    from benchmarks.run import floor_main
    sys.exit(floor_main(args))
"""


# -- helpers run in subprocesses -----------------------------------------------------------------
def floor_main(args: list[str]) -> int:
    """The store floor: every task of the jugfile run in order in this process, with no
    coordinator. Results are written as a worker writes them (``save_many`` in batches of
    FLOOR_BATCH items or FLOOR_BATCH_BYTES, with the same metadata) and every input is loaded
    from the store (a batch holding one is written first)."""
    jugfile, store_url, out = args
    t0 = time.perf_counter()
    from ajug.jugfile import load_jugfile
    from ajug.stores import open_store
    from ajug.task import source_hash, value

    store = open_store(store_url)
    loaded = load_jugfile(jugfile, store)
    t1 = time.perf_counter()
    ident = f"{socket.gethostname()}:{os.getpid()}"
    save_many = getattr(store, "save_many", None) or (lambda items: [store.save(*i) for i in items])
    pending: list[tuple[str, Any, dict[str, Any]]] = []
    pending_keys: set[str] = set()
    size = 0
    for t in loaded.tasks:
        if pending_keys and any(d.key in pending_keys for d in t.dependencies()):
            save_many(pending)
            pending, size = [], 0
            pending_keys.clear()
        s = time.perf_counter()
        result = t.f(*[value(a) for a in t.args], **{k: value(v) for k, v in t.kwargs.items()})
        meta = {"func": t.name, "src": source_hash(t.f), "rt": time.perf_counter() - s,
                "worker": ident, "ts": time.time()}
        pending.append((t.key, result, meta))
        pending_keys.add(t.key)
        size += getattr(result, "nbytes", 64)
        if len(pending) >= FLOOR_BATCH or size >= FLOOR_BATCH_BYTES:
            save_many(pending)
            pending, size = [], 0
            pending_keys.clear()
    if pending:
        save_many(pending)
    t2 = time.perf_counter()
    store.close()
    Path(out).write_text(json.dumps({"tasks": len(loaded.tasks), "load_s": t1 - t0,
                                     "exec_s": t2 - t1}))
    return 0


def check_main(args: list[str]) -> int:
    """Compare a sample of results, loaded with the engine's own ``init``/``value``, with what
    they must be (when ``verify``); for ajug's stores also read every result's metadata and
    derive the serving timeline from the times the results were written. Prints one JSON line."""
    workload, engine, jugfile, store_url, verify = args
    if engine == "jug":
        import jug

        store, ns = jug.init(jugfile, store_url)
        value = jug.value
    else:
        import ajug

        store, ns = ajug.init(jugfile, store_url)
        value = ajug.value
    out: dict[str, Any] = {"problem": None}
    if verify == "1":
        out["problem"] = _verify(workload, ns, value)
    if engine != "jug":
        out.update(_timeline(store))
    print(json.dumps(out))
    return 0


def _verify(workload: str, ns: dict[str, Any], value: Any) -> str | None:
    verify = REGISTRY[workload].verify
    if verify is None:
        return None
    n = int(os.environ["BENCH_N"])
    picks = sorted({round(i * (n - 1) / max(1, CHECK_SAMPLES - 1)) for i in range(CHECK_SAMPLES)})
    bad = verify(ns, value, picks)
    return f"wrong or missing results: {', '.join(bad[:5])}" if bad else None


def _timeline(store: Any) -> dict[str, Any]:
    """From the write times of all results: first to last (the serving span) and the rate
    between the 25th and the 75th percentile (steady state, without start-up and the tail)."""
    from ajug import task as _task
    from ajug.jugfile import unique_tasks

    keys = [t.key for t in unique_tasks(_task.alltasks)]
    ts: list[float] = []
    for i in range(0, len(keys), 5000):
        ts += [m["ts"] for m in store.metadata(keys[i : i + 5000]) if m and m.get("ts")]
    if len(ts) < 8:
        return {}
    ts.sort()
    lo, hi = len(ts) // 4, 3 * len(ts) // 4
    dt = ts[hi] - ts[lo]
    return {"span_s": ts[-1] - ts[0], "steady_rate": (hi - lo) / dt if dt > 0 else None}


# -- the environment of one benchmark run -------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(p: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM this process (by its pid), then SIGKILL it if it does not go."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_tree(p: subprocess.Popen[Any], grace_s: float = 30.0) -> None:
    """SIGTERM a process and then its children (``ajug run``'s workers), by pid."""
    if p.poll() is not None:
        return
    try:
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    except OSError:
        kids = []
    p.send_signal(signal.SIGTERM)
    for k in kids:
        try:
            os.kill(int(k), signal.SIGTERM)
        except ProcessLookupError:
            pass
    stop_process(p, grace_s)


class Bench:
    """Temp directory, redis-server, environment and the subprocesses of one runner call."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.o = opts
        self.tmp = Path(tempfile.mkdtemp(prefix="ajug-bench-"))
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_port = 0
        self.notes: list[str] = []
        self._baseline: int | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        #: set while a run without results measures what the workers hold without them
        self.env_extra: dict[str, str] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AJUG_", "BENCH_", "JUG_"))}
        pp = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")
        self.env = env

    # redis
    def start_redis(self) -> bool:
        binary = shutil.which("redis-server")
        if binary is None:
            return False
        self.redis_port = free_port()
        d = self.tmp / "redis"
        d.mkdir()
        log = open(d / "redis.log", "wb")
        self.redis = subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(d)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.redis_port).ping()
                return True
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.redis.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def flush_redis(self) -> None:
        import redis

        r = redis.Redis(port=self.redis_port)
        r.flushall()
        r.close()

    def close(self) -> None:
        for p in self.procs:  # whatever an interruption left running
            stop_tree(p, 10)
        if self.redis is not None:
            stop_process(self.redis)
        if not self.o.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # stores and jugfiles
    def store(self, engine: str, kind: str, name: str) -> str:
        """A fresh, empty store for one run."""
        if kind == "redis":
            self.flush_redis()
            return (f"redis://127.0.0.1:{self.redis_port}/" if engine == "jug"
                    else f"redis://127.0.0.1:{self.redis_port}/0")
        path = self.tmp / f"{name}.{'jugdata' if engine == 'jug' else 'ajugdata'}"
        shutil.rmtree(path, ignore_errors=True)
        return str(path)

    def drop_store(self, kind: str, url: str) -> None:
        if kind == "redis":
            self.flush_redis()
        else:
            shutil.rmtree(url, ignore_errors=True)

    def jugfile(self, workload: str) -> Path:
        src = REGISTRY[workload].source if workload in REGISTRY else "independent"  # "baseline"
        dst = self.tmp / f"{workload}.py"
        if not dst.exists():
            shutil.copyfile(WORKLOAD_DIR / f"{src}.py", dst)
        return dst

    def wl_env(self, workload: str, engine: str, n: int) -> dict[str, str]:
        env = dict(self.env, BENCH_ENGINE=engine, BENCH_N=str(n))
        if workload in REGISTRY:
            env.update(REGISTRY[workload].env(self.o))
        env.update(self.env_extra)
        return env

    def baseline_rss(self) -> int:
        """VmRSS of ``ajug serve`` on a one-task jugfile: the bytes that are not per task."""
        if self._baseline is None:
            self._baseline = 0
            try:
                p, *_ = _serve(self, "baseline", "file", 1, "baseline")
            except RuntimeError:
                return 0
            try:
                time.sleep(0.5)
                self._baseline = _proc_mem(p.pid)["VmRSS"]
            finally:
                stop_process(p, 10)
        return self._baseline

    def timeout(self, wl: str, n: int) -> float:
        return self.o.timeout or max(MIN_TIMEOUT_S, tasks_of(wl, n) / MIN_RATE)

    def spawn(self, cmd: list[str], env: dict[str, str], tag: str) -> subprocess.Popen[bytes]:
        # every measurement starts with nothing left to write back: the previous run's dirty
        # files would otherwise be flushed (and the file system's journal committed) during
        # this one, which makes creating files stall for whoever runs next
        os.sync()
        with open(self.tmp / f"{tag}.out", "wb") as out, open(self.tmp / f"{tag}.err", "wb") as err:
            p = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdout=out, stderr=err)
        self.procs = [q for q in self.procs if q.poll() is None] + [p]
        return p

    def log_tail(self, tag: str, lines: int = 5) -> str:
        text = (self.tmp / f"{tag}.err").read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def check(self, workload: str, engine: str, store: str, n: int, verify: bool) -> dict[str, Any]:
        """``{"check": problem}`` when sampled results are wrong (``verify``), plus the serving
        timeline from the results' metadata on ajug's stores (``span_s``, ``steady_rate``)."""
        if not verify and engine == "jug":
            return {}
        code = "import sys; from benchmarks.run import check_main; sys.exit(check_main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, workload, engine, str(self.jugfile(workload)), store,
               "1" if verify else "0"]
        p = subprocess.run(cmd, env=self.wl_env(workload, engine, n), cwd=self.tmp,
                           capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        try:
            res = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            lines = f"{p.stdout}\n{p.stderr}".strip().splitlines()
            return {"check": " | ".join(lines[-3:]) or f"check failed ({p.returncode})"}
        out = {k: v for k, v in res.items() if k != "problem" and v is not None}
        if res.get("problem"):
            out["check"] = res["problem"]
        return out


def _rusage(path: Path) -> dict[str, float]:
    try:
        ru = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {"main_rss_mib": ru["self_rss_kib"] / 1024, "worker_rss_mib": ru["children_rss_kib"] / 1024,
            "main_cpu_s": ru["self_cpu_s"], "worker_cpu_s": ru["children_cpu_s"]}


class TimedOut(Exception):
    """A command ran past --timeout; it was stopped (SIGTERM, so ajug prints its summary)."""


def _wait(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                stop_tree(q)
            raise TimedOut(f"timed out after {timeout_s:g} s") from None
    return codes


# -- one run of each system ----------------------------------------------------------------------
def run_ajug(b: Bench, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    tag = f"ajug-{kind}-{wl}-{rep}"
    store = b.store("ajug", kind, tag)
    rus = b.tmp / f"{tag}.rusage"
    cmd = [sys.executable, "-c", WRAP, str(rus), "ajug", "run", str(b.jugfile(wl)),
           "-j", str(b.o.jobs), "--no-progress", "--store", store]
    t0 = time.perf_counter()
    p = b.spawn(cmd, b.wl_env(wl, "ajug", n), tag)
    try:
        (rc,) = _wait([p], b.timeout(wl, n))
    except TimedOut as e:
        summary = SUMMARY_RE.findall((b.tmp / f"{tag}.err").read_text(errors="replace"))
        done = int(summary[-1][0]) if summary else 0
        b.drop_store(kind, store)
        return {"error": f"{e} with {done}/{tasks_of(wl, n)} done (~{done / b.timeout(wl, n):.1f} tasks/s)",
                "timed_out": True, "done": done, "partial_rate": done / b.timeout(wl, n)}
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"wall_s": wall, **_rusage(rus)}
    summary = SUMMARY_RE.findall((b.tmp / f"{tag}.err").read_text(errors="replace"))
    if summary:
        done, total, rate = summary[-1]
        out.update(done=int(done), total=int(total), reported_rate=float(rate or 0))
    if rc != 0 or not summary or summary[-1][0] != summary[-1][1]:
        out["error"] = f"exit {rc}: {b.log_tail(tag)}"
    else:
        out.update(b.check(wl, "ajug", store, n, last))
    b.drop_store(kind, store)
    return out


def run_floor(b: Bench, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    tag = f"floor-{kind}-{wl}-{rep}"
    store = b.store("ajug", kind, tag)
    rus, res = b.tmp / f"{tag}.rusage", b.tmp / f"{tag}.json"
    cmd = [sys.executable, "-c", WRAP, str(rus), "floor", str(b.jugfile(wl)), store, str(res)]
    t0 = time.perf_counter()
    p = b.spawn(cmd, b.wl_env(wl, "ajug", n), tag)
    (rc,) = _wait([p], b.timeout(wl, n))
    out: dict[str, Any] = {"wall_s": time.perf_counter() - t0, **_rusage(rus)}
    if rc != 0:
        out["error"] = f"exit {rc}: {b.log_tail(tag)}"
    else:
        out.update(json.loads(res.read_text()))
        out.update(b.check(wl, "ajug", store, n, last))
    b.drop_store(kind, store)
    return out


def run_jug(b: Bench, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    tag = f"jug-{kind}-{wl}-{rep}"
    store = b.store("jug", kind, tag)
    env = b.wl_env(wl, "jug", n)
    procs, rus = [], []
    t0 = time.perf_counter()
    for i in range(b.o.jobs):
        rus.append(b.tmp / f"{tag}-{i}.rusage")
        cmd = [sys.executable, "-c", WRAP, str(rus[-1]), "jug", "execute", str(b.jugfile(wl)),
               "--jugdir", store, "--wait-cycle-time", str(JUG_WAIT_CYCLE_S),
               "--nr-wait-cycles", str(int(1800 / JUG_WAIT_CYCLE_S)), "--will-cite"]
        procs.append(b.spawn(cmd, env, f"{tag}-{i}"))
    codes = _wait(procs, b.timeout(wl, n))
    out: dict[str, Any] = {"wall_s": time.perf_counter() - t0}
    rss = [_rusage(r) for r in rus]
    if all(rss):
        out.update(main_rss_mib=max(r["main_rss_mib"] for r in rss),
                   main_cpu_s=sum(r["main_cpu_s"] for r in rss))
    if any(codes):
        bad = codes.index(next(c for c in codes if c))
        out["error"] = f"exit {codes[bad]}: {b.log_tail(f'{tag}-{bad}')}"
    else:
        out.update(b.check(wl, "jug", store, n, last))
    b.drop_store(kind, store)
    return out


def _proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in bytes."""
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(rest.split()[0]) * 1024
    return mem


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve(b: Bench, wl: str, kind: str, n: int, tag: str, stay: bool = False,
           prefix: list[str] | None = None
           ) -> tuple[subprocess.Popen[bytes], str, int, bytes, str, float]:
    """``ajug serve`` on a free port; returns once it prints its address. ``stay``: keep
    serving once everything is done (to be asked about it afterwards). ``kind`` "memory": a
    store of the coordinator's own (for simulated workers, which store nothing). ``prefix``:
    what runs ``ajug`` (default ``python -m ajug``)."""
    token = secrets.token_hex(16)
    store = "memory:" if kind == "memory" else b.store("ajug", kind, tag)
    env = dict(b.wl_env(wl, "ajug", n), AJUG_TOKEN=token)
    cmd = [*(prefix or [sys.executable, "-m", "ajug"]), "serve", str(b.jugfile(wl)),
           "--port", "0", "--store", store, *(["--stay"] if stay else [])]
    t0 = time.perf_counter()
    p = b.spawn(cmd, env, tag)
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        m = SERVING_RE.search((b.tmp / f"{tag}.out").read_text(errors="replace"))
        if m:
            return p, m.group(1), int(m.group(2)), token.encode(), store, time.perf_counter() - t0
        if p.poll() is not None or time.monotonic() > deadline:
            stop_process(p, 5)
            raise RuntimeError(f"ajug serve did not start: {b.log_tail(tag)}")
        time.sleep(0.02)


async def _status_samples(host: str, port: int, token: bytes, k: int) -> tuple[list[float], list[dict[str, Any]]]:
    from ajug.protocol.client import query_status

    lat, sts = [], []
    for _ in range(k):
        t0 = time.perf_counter()
        sts.append(await query_status(host, port, token, None))
        lat.append(time.perf_counter() - t0)
        await asyncio.sleep(STATUS_SPACING_S)
    return lat, sts


def run_scale(b: Bench, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    tag = f"scale-{kind}-{rep}"
    workers: list[subprocess.Popen[bytes]] = []
    # held open (--stay): a small graph may be done before the samples, and then the
    # coordinator would be gone (issue 17: the scale workload failed at 100k tasks)
    coord, host, port, token, store, load_s = _serve(b, wl, kind, n, tag, stay=True)
    try:
        at_load = _proc_mem(coord.pid)
        env = dict(b.env, AJUG_TOKEN=token.decode())
        t0 = time.perf_counter()
        for i in range(b.o.jobs):
            cmd = [sys.executable, "-m", "ajug", "work", f"{host}:{port}", "--connect-timeout", "10",
                   "--name", f"bench{i}"]
            workers.append(b.spawn(cmd, env, f"{tag}-w{i}"))
        time.sleep(SCALE_WARMUP_S)
        pids = [coord.pid] + [w.pid for w in workers]
        cpu0, c0 = [_proc_cpu(pid) for pid in pids], time.perf_counter()
        lat, sts = asyncio.run(_status_samples(host, port, token, STATUS_SAMPLES))
        cpu1, c1 = [_proc_cpu(pid) for pid in pids], time.perf_counter()
        serving = _proc_mem(coord.pid)
        busy = [(b1 - b0) / (c1 - c0) * 100 for b0, b1 in zip(cpu0, cpu1)]
        # the rate while serving: over the samples taken before everything was done
        serving_sts = [s for s in sts if s["totals"]["done"] < n] or sts[:1]
        last_st = next((s for s in sts if s["totals"]["done"] >= n), serving_sts[-1])
        d0, d1 = sts[0]["totals"]["done"], last_st["totals"]["done"]
        span = last_st["uptime_s"] - sts[0]["uptime_s"]
        out: dict[str, Any] = {
            "load_s": load_s,
            "rss_loaded_mib": at_load["VmRSS"] / 2**20,
            "main_rss_mib": serving["VmHWM"] / 2**20,
            "rss_serving_mib": serving["VmRSS"] / 2**20,
            "peak_b_per_task": serving["VmHWM"] / n,
            "steady_b_per_task": serving["VmRSS"] / n,
            "status_ms": statistics.median(lat) * 1000,
            "status_ms_max": max(lat) * 1000,
            "serving_rate": (d1 - d0) / span if span > 0 else 0.0,
            "workers_seen": len(sts[-1]["workers"]),
            "worker_rss_mib": max(_proc_mem(w.pid)["VmHWM"] for w in workers) / 2**20,
            "coord_cpu_pct": busy[0],
            "workers_cpu_pct": sum(busy[1:]),
        }
        base = b.baseline_rss()
        if base:
            out["net_peak_b_per_task"] = (serving["VmHWM"] - base) / n
            out["net_steady_b_per_task"] = (serving["VmRSS"] - base) / n
        if b.o.full:
            deadline = time.monotonic() + b.timeout(wl, n)
            while True:
                st = asyncio.run(_status_samples(host, port, token, 1))[1][-1]
                if st["totals"]["done"] >= n or st["state"] == "finished":
                    break
                if coord.poll() is not None or time.monotonic() > deadline:
                    out["error"] = f"not finished: {st['totals']}: {b.log_tail(tag)}"
                    break
            out["wall_s"] = time.perf_counter() - t0  # from the first worker's start
            if "error" not in out:
                out.update(b.check(wl, "ajug", store, n, last))
    finally:
        for w in workers:
            stop_process(w, 10)
        stop_process(coord, 30)
        b.drop_store(kind, store)
    return out


async def _simulate(host: str, port: int, token: bytes, conns: int, rounds: int,
                    store_url: str) -> dict[str, Any]:
    """``conns`` light workers at once: handshake, then ``rounds`` lease requests each, each
    reporting the previous lease done (nothing is computed; a tiny result is saved, since the
    coordinator confirms a run's results are in the store before it calls the run finished)."""
    from ajug.protocol import messages as m
    from ajug.protocol.client import query_status
    from ajug.protocol.connection import open_connection
    from ajug.stores import open_store

    errors: list[str] = []
    t0 = time.perf_counter()
    opened = await asyncio.gather(
        *(open_connection(host, port, token=token, role="worker", name=f"sim{i}")
          for i in range(conns)), return_exceptions=True)
    live = [c for c in opened if not isinstance(c, BaseException)]
    errors += [f"{type(e).__name__}: {e}" for e in opened if isinstance(e, BaseException)]
    t1 = time.perf_counter()
    seen = len((await query_status(host, port, token, None))["workers"])

    store = open_store(store_url)
    loop = asyncio.get_running_loop()

    async def work(conn: Any) -> int:
        prev: list[list[Any]] = []
        got = 0
        for r in range(rounds + 1):
            want = 1 if r < rounds else 0
            conn.send(m.lease(r + 1, want=want, wait_ms=1000 * want, done=prev))
            await conn.drain()
            rep = await asyncio.wait_for(conn.recv(), 60)
            if rep["op"] != "leases":
                raise RuntimeError(f"answer {rep['op']}: {rep.get('msg')}")
            keys = [(x["key"], x["tok"]) for x in rep["leases"]]
            sizes = await loop.run_in_executor(
                None, store.save_many, [(k, None, {"rt": 0.0}) for k, _ in keys])
            prev = [m.done_item(k, tok, rt=0.0, size=sz) for (k, tok), sz in zip(keys, sizes)]
            got += len(rep["leases"])
        conn.send(m.bye())
        await conn.drain()
        return got

    results = await asyncio.gather(*(work(c) for c in live), return_exceptions=True)
    t2 = time.perf_counter()
    errors += [f"{type(e).__name__}: {e}" for e in results if isinstance(e, BaseException)]
    for c in live:
        await c.aclose()
    store.close()
    st = await query_status(host, port, token, None)
    return {"connect_s": t1 - t0, "lease_s": t2 - t1, "wall_s": t2 - t0, "errors": len(errors),
            "error_sample": errors[:3], "workers_seen": seen,
            "leases": sum(r for r in results if isinstance(r, int)), "done": st["totals"]["done"]}


def run_connections(b: Bench, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    tag = f"conns-{kind}-{rep}"
    tasks = n * b.o.rounds
    coord, host, port, token, store, _ = _serve(b, wl, kind, tasks, tag, stay=True)
    try:
        out = asyncio.run(_simulate(host, port, token, n, b.o.rounds, store))
        out["main_rss_mib"] = _proc_mem(coord.pid)["VmHWM"] / 2**20
        if coord.poll() is not None:
            out["error"] = f"the coordinator exited ({coord.returncode}): {b.log_tail(tag)}"
        elif out["errors"] or out["done"] != tasks or out["workers_seen"] != n:
            out["error"] = (f"{out['errors']} error(s) {out['error_sample']}, {out['workers_seen']}/{n} "
                            f"workers seen, {out['done']}/{tasks} done")
    finally:
        stop_process(coord, 30)
        b.drop_store(kind, store)
    return out


RUNNERS = {"ajug": run_ajug, "floor": run_floor, "jug": run_jug}


def runner_of(w: Workload, engine: str) -> Any:
    """The function that makes one measurement of workload ``w`` on ``engine``."""
    if not w.runner:
        return RUNNERS[engine]
    module, _, name = w.runner.partition(":")
    return getattr(import_module(module), name.format(engine=engine))


def tasks_of(wl: str, n: int) -> int:
    return REGISTRY[wl].tasks(n) if wl in REGISTRY else n


# -- summary, ratios, targets ----------------------------------------------------------------------
def _median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def summarize(wl: str, system: str, n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"workload": wl, "system": system, "n": n, "tasks": tasks_of(wl, n),
                           "runs": runs}
    problems = [r["error"] for r in runs if "error" in r]
    problems += [f"check: {r['check']}" for r in runs if r.get("check")]
    if problems:
        row["error"] = problems[0]
    good = [r for r in runs if "error" not in r]
    partial = [r["partial_rate"] for r in runs if "partial_rate" in r]
    if partial and not good:
        row["partial_rate"] = statistics.median(partial)
    med = _median_of(good)
    row["median"] = med
    custom = REGISTRY[wl].summarize if wl in REGISTRY else None
    if custom is not None:
        custom(row, med, good)
    elif "wall_s" in med:
        row["tasks_per_s"] = row["tasks"] / med["wall_s"]
    walls = [r["wall_s"] for r in good if "wall_s" in r]
    if walls:
        row["wall_s"], row["wall_min_s"], row["wall_max_s"] = med["wall_s"], min(walls), max(walls)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """ajug rows get ``vs_jug`` (tasks/s of ajug / tasks/s of jug on the same store kind) and
    ``vs_floor`` (wall of ajug / wall of the floor on the same store kind), from this run."""
    by = {(r["workload"], r["system"]): r for r in rows}
    for r in rows:
        engine, _, kind = r["system"].partition("-")
        if engine != "ajug" or r["workload"] not in GRAPH_WORKLOADS or "error" in r:
            continue
        jug, floor = by.get((r["workload"], f"jug-{kind}")), by.get((r["workload"], f"floor-{kind}"))
        if jug and "error" not in jug and jug.get("tasks_per_s"):
            r["vs_jug"] = r["tasks_per_s"] / jug["tasks_per_s"]
        if floor and "error" not in floor and floor.get("wall_s"):
            r["vs_floor"] = r["wall_s"] / floor["wall_s"]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, measured by this run (those whose rows ran)."""
    by = {(r["workload"], r["system"]): r for r in rows}
    out: list[dict[str, Any]] = []

    def add(what: str, row: dict[str, Any] | None, value: Any, goal: float, at_most: bool = False,
            unit: str = "") -> None:
        if row is None:
            return
        if "error" in row or value is None:
            shown = row.get("partial_rate") if unit == "/s" else None  # what a timed-out run did
            out.append({"target": what, "value": shown, "goal": goal, "unit": unit,
                        "at_most": at_most, "pass": False})
            return
        ok = value <= goal if at_most else value >= goal
        out.append({"target": what, "value": value, "goal": goal, "unit": unit,
                    "at_most": at_most, "pass": bool(ok)})

    for kind, rate, speedup in (("redis", 20_000, 7), ("file", 10_000, 6)):
        r = by.get(("independent", f"ajug-{kind}"))
        add(f"independent, ajug-{kind}: tasks/s", r, r and r.get("tasks_per_s"), rate, unit="/s")
        if r and ("independent", f"jug-{kind}") in by:
            add(f"independent, ajug-{kind}: × jug-{kind} (speed)", r, r.get("vs_jug"), speedup, unit="×")
        if r and ("independent", f"floor-{kind}") in by:
            add(f"independent, ajug-{kind}: × floor-{kind} (time)", r, r.get("vs_floor"), 2,
                at_most=True, unit="×")
    for kind, rate in (("redis", 20_000), ("file", 10_000)):
        r = by.get(("independent", f"ajug-{kind}"))
        add(f"independent, ajug-{kind}: steady tasks/s (not the issue's measure)", r,
            r and r["median"].get("steady_rate"), rate, unit="/s")
    for kind in ("file", "redis"):
        r = by.get(("chain", f"ajug-{kind}"))
        add(f"chain, ajug-{kind}: tasks/s", r, r and r.get("tasks_per_s"), 2_000, unit="/s")
    for kind in ("file", "redis"):
        r = by.get(("scale", f"ajug-{kind}"))
        m = r["median"] if r else {}
        add(f"scale, ajug-{kind}: coordinator peak B/task", r, m.get("peak_b_per_task"), 1024,
            at_most=True, unit="B")
        add(f"scale, ajug-{kind}: coordinator steady B/task", r, m.get("steady_b_per_task"), 500,
            at_most=True, unit="B")
        add(f"scale, ajug-{kind}: status while serving, ms", r, m.get("status_ms"), 50,
            at_most=True, unit="ms")
        add(f"scale, ajug-{kind}: serving after, s (goal for 1M tasks)", r, m.get("load_s"), 3.0,
            at_most=True, unit=" s")
        r = by.get(("status", f"ajug-{kind}"))
        add(f"status, ajug-{kind}: `ajug status JUGFILE`, s (goal for 1M tasks)", r, r and r.get("wall_s"),
            3.0, at_most=True, unit=" s")
    for wl in ("bulk", "bulk64"):
        for kind, speedup in (("redis", 1.5), ("file", 1.2)):
            r = by.get((wl, f"ajug-{kind}"))
            if r and (wl, f"jug-{kind}") in by:
                add(f"{wl}, ajug-{kind}: × jug-{kind} (speed)", r, r.get("vs_jug"), speedup, unit="×")
            if r and (wl, f"floor-{kind}") in by:
                add(f"{wl}, ajug-{kind}: × floor-{kind} (time)", r, r.get("vs_floor"), 1.3,
                    at_most=True, unit="×")
            add(f"{wl}, ajug-{kind}: worker peak RSS above no results, in result sizes", r,
                r and r["median"].get("rss_x_result"), 1.3, at_most=True, unit="×")
    r = by.get(("coordinator", "ajug-memory"))
    add("coordinator: tasks per coordinator core-second", r,
        r and r["median"].get("tasks_per_core_s"), 100_000, unit="/s")
    for kind in ("file", "redis"):
        r = by.get(("connections", f"ajug-{kind}"))
        add(f"connections, ajug-{kind}: errors", r, r and r["median"].get("errors"), 0, at_most=True)
    return out


# -- output ---------------------------------------------------------------------------------------
def notes(r: dict[str, Any]) -> str:
    m = r.get("median", {})
    if "error" in r:
        return f"FAILED: {r['error']}"[:160]
    custom = REGISTRY[r["workload"]].notes if r["workload"] in REGISTRY else None
    if custom is not None:
        return custom(r)
    rss = (f"tasks' process +{m['wkr_net_mib']:.0f} MiB over no results: "
           f"{m['rss_x_result']:.2f}× a result" if "rss_x_result" in m else "")
    if r["system"].startswith("floor"):
        out = f"load {fmt(m.get('load_s'))} s + tasks {fmt(m.get('exec_s'))} s"
    elif r["system"].startswith("ajug") and m.get("reported_rate"):
        out = f"coord. says {m['reported_rate']:.0f}/s"
    else:
        out = ""
    return "; ".join(x for x in (out, rss) if x)


def print_table(rows: list[dict[str, Any]], tgts: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(180, shutil.get_terminal_size().columns))
    t = Table(title=f"ajug benchmarks — {meta['host']}, {meta['cpus']} cores, {meta['jobs']} "
                    f"worker processes, median of {meta['repeat']}; load average "
                    f"{meta['loadavg'][0]} before, {meta['loadavg'][1]} after; hiredis "
                    f"{meta['hiredis'] or 'not installed'}, uvloop {meta['uvloop'] or 'not installed'}",
              title_justify="left")
    for c in ("workload", "system", "tasks", "tasks/s", "wall s (min–max)", "steady/s",
              "span s", "RSS MiB", "wkr MiB", "CPU s", "× jug", "× floor", "notes"):
        t.add_column(c, justify="left" if c in ("workload", "system", "notes") else "right",
                     overflow="fold")
    last = None
    for r in rows:
        m = r.get("median", {})
        cpu = m.get("main_cpu_s")
        cpu_s = "—" if cpu is None else (f"{cpu:.1f}+{m['worker_cpu_s']:.1f}"
                                         if "worker_cpu_s" in m else f"{cpu:.1f}")
        t.add_row(
            r["workload"] if r["workload"] != last else "", r["system"], f"{r['tasks']:,}",
            fmt(r.get("tasks_per_s"), ",.0f") if "partial_rate" not in r else f"~{r['partial_rate']:.1f}",
            f"{r['wall_s']:.2f} ({r['wall_min_s']:.2f}–{r['wall_max_s']:.2f})" if "wall_s" in r
            else "—",
            fmt(m.get("steady_rate"), ",.0f"), fmt(m.get("span_s")), fmt(m.get("main_rss_mib"), ".0f"), fmt(m.get("worker_rss_mib"), ".0f"), cpu_s,
            fmt(r.get("vs_jug"), ".2f"), fmt(r.get("vs_floor"), ".2f"), notes(r),
            end_section=False,
        )
        last = r["workload"]
    console.print(t)
    console.print("tasks/s: tasks ÷ wall of the whole command. steady/s: rate between the 25th and "
                  "75th percentile of the results' write times; span: first to last result written "
                  "(wall − span = start-up and shut-down). × jug: ajug tasks/s ÷ jug tasks/s (higher "
                  "is better); × floor: ajug wall ÷ floor wall (lower is better). RSS: peak of the "
                  "coordinator / jug process / floor process; wkr: workers' peak; CPU s: main + "
                  "workers.", style="dim")
    if tgts:
        tt = Table(title="targets", title_justify="left")
        for c in ("target", "measured", "goal", ""):
            tt.add_column(c, justify="left" if c == "target" else "right")
        for g in tgts:
            v = g["value"]
            unit = g["unit"]
            val = "—" if v is None else (f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:.2f}{unit}")
            goal = f"{'≤' if g.get('at_most') else '≥'} {g['goal']:,}{unit}"
            tt.add_row(g["target"], val, goal, "[green]pass[/]" if g["pass"] else "[red]FAIL[/]")
        console.print(tt)
    for note in meta["notes"]:
        console.print(f"note: {note}", style="yellow")


def _git() -> dict[str, Any]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ajug"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": head, "ajug_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {}


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


# -- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(w.name for w in REGISTRY.values() if w.default),
                   help="comma-separated, from: " + ", ".join(WORKLOADS))
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help="comma-separated, from: " + ", ".join(SYSTEMS) + "; 'floor', 'jug' and "
                   "'ajug' mean that engine on the store kinds of the other systems chosen")
    for w in REGISTRY.values():
        p.add_argument(w.size_flag, dest=w.dest, type=int, help=w.size_help)
    for w in REGISTRY.values():
        for flags, kwargs in w.options:
            p.add_argument(*flags, **kwargs)
    p.add_argument("--repeat", type=int, help="runs per measurement, median reported (default 3; --quick: 1)")
    p.add_argument("--scale-repeat", type=int, help="runs of scale (default: --repeat)")
    p.add_argument("--jobs", "-j", type=int, default=2, help="worker processes for ajug and jug")
    p.add_argument("--json", help="write the results here (default benchmarks/results/<time>.json)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    p.add_argument("--full", action="store_true", help="scale: serve all tasks to the end")
    p.add_argument("--timeout", type=float, help="seconds per command (default: max(60, tasks/50))")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (logs, stores)")
    o = p.parse_args(argv)
    sizes = QUICK_SIZES if o.quick else SIZES
    for w in REGISTRY.values():
        if getattr(o, w.dest) is None:
            setattr(o, w.dest, sizes[w.name])
    o.sizes = {w.name: getattr(o, w.dest) for w in REGISTRY.values()}
    if o.repeat is None:
        o.repeat = 1 if o.quick else 3
    if o.scale_repeat is None:
        o.scale_repeat = o.repeat
    o.workloads = [w.strip() for w in o.workloads.split(",") if w.strip()]
    for w in o.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}: choose from {', '.join(WORKLOADS)}")
    o.systems = expand_systems(o.systems, p)
    return o


def expand_systems(text: str, p: argparse.ArgumentParser) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    explicit = [s for s in names if s in SYSTEMS]
    kinds = sorted({s.partition("-")[2] for s in explicit}) or ["file", "redis"]
    out: list[str] = []
    for s in names:
        if s in SYSTEMS:
            out.append(s)
        elif s in ("ajug", "floor", "jug"):
            out += [f"{s}-{k}" for k in kinds]
        else:
            p.error(f"unknown system {s!r}: choose from {', '.join(SYSTEMS)}, ajug, floor, jug")
    return [s for s in SYSTEMS if s in out]  # canonical order, no duplicates


def _worker_peak_mib(system: str, r: dict[str, Any]) -> float | None:
    """The peak RSS of the process that ran the tasks: ajug's biggest worker, the floor
    process, the biggest jug process."""
    return r.get("worker_rss_mib" if system.startswith("ajug-") else "main_rss_mib")


def rss_per_result(b: Bench, w: Workload, system: str, runs: list[dict[str, Any]]) -> None:
    """Each run gets ``wkr_net_mib``: the peak RSS of what ran its tasks above that of the same
    system on the same jugfile with empty results (two tasks, ``BENCH_MIB=0``: the interpreter,
    numpy, ajug or jug), and ``rss_x_result``: that in result sizes (issue 17: ≤ 1.3)."""
    assert w.result_mib is not None
    mib = w.result_mib(b.o)
    engine, _, kind = system.partition("-")
    b.env_extra = {"BENCH_MIB": "0"}
    try:
        base = runner_of(w, engine)(b, w.name, kind, 2, -1, False)
    except Exception as e:  # noqa: BLE001 - the table says so; the runs stay
        base = {"error": f"{type(e).__name__}: {e}"}
    finally:
        b.env_extra = {}
    base_peak = _worker_peak_mib(system, base)
    if "error" in base or base_peak is None or mib <= 0:
        b.notes.append(f"{w.name} {system}: no RSS without results ({base.get('error')})")
        return
    for r in runs:
        peak = _worker_peak_mib(system, r)
        if "error" not in r and peak is not None:
            r["wkr_base_mib"] = base_peak
            r["wkr_net_mib"] = peak - base_peak
            r["rss_x_result"] = (peak - base_peak) / mib


def run_all(o: argparse.Namespace, b: Bench) -> list[dict[str, Any]]:
    systems = list(o.systems)
    if any(s.endswith("-redis") for s in systems) and not b.start_redis():
        b.notes.append("redis-server not found on PATH: the redis systems are skipped")
        systems = [s for s in systems if not s.endswith("-redis")]
    if any(s.startswith("jug-") for s in systems) and _version("jug") is None:
        b.notes.append("jug is not installed (pip install jug): the jug systems are skipped")
        systems = [s for s in systems if not s.startswith("jug-")]
    rows = []
    for wl in o.workloads:
        n, w = o.sizes[wl], REGISTRY[wl]
        if w.systems == "ajug-memory":  # no store: the workers are simulated
            mine = ["ajug-memory"]
        else:
            mine = (systems if w.systems == "all" else
                    [s for s in systems if not s.startswith("floor-")] if w.systems == "ajug+jug"
                    else [s for s in systems if s.startswith("ajug-")])
        if not mine:
            b.notes.append(f"{wl}: no ajug system chosen, nothing to run")
            continue
        repeat = getattr(o, w.repeat_option)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in mine}
        for rep in range(repeat):
            for s in mine:
                if any(r.get("timed_out") for r in runs[s]):
                    continue  # no point in timing out again
                engine, _, kind = s.partition("-")
                fn = runner_of(w, engine)
                try:
                    r = fn(b, wl, kind, n, rep, rep == repeat - 1)
                except TimedOut as e:
                    r = {"error": str(e), "timed_out": True}
                except Exception as e:  # noqa: BLE001 - one failed run is a row, not the end
                    r = {"error": f"{type(e).__name__}: {e}"}
                runs[s].append(r)
                what = r.get("error") or r.get("check") or (
                    f"{r['wall_s']:.2f} s" if "wall_s" in r else "ok")
                print(f"[{wl} n={n:,}] {s} #{rep + 1}/{repeat}: {what}", file=sys.stderr, flush=True)
        if w.result_mib is not None:
            for s in mine:
                rss_per_result(b, w, s, runs[s])
        rows += [summarize(wl, s, n, runs[s]) for s in mine]
    return rows


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so that the finally blocks stop what this run started

    signal.signal(signal.SIGTERM, interrupted)
    b = Bench(o)
    started = time.time()
    load_before = os.getloadavg()
    git = _git()  # the code measured is the code at the start
    try:
        rows = run_all(o, b)
    finally:
        b.close()
    add_ratios(rows)
    tgts = targets(rows)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "host": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "ajug": _version("ajug"), "jug": _version("jug"),
        "hiredis": _version("hiredis"), "uvloop": _version("uvloop"), **git, "jobs": o.jobs, "repeat": o.repeat, "quick": o.quick, "sizes": o.sizes,
        "systems": o.systems, "workloads": o.workloads, "argv": sys.argv[1:], "notes": b.notes,
        # other work on the machine skews every number: the 1-minute load before and after
        "loadavg": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    path = Path(o.json) if o.json else RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows, "targets": tgts}, indent=1, default=str))
    print_table(rows, tgts, meta)
    print(f"results written to {path}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
