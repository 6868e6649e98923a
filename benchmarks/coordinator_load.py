"""The coordinator at its ceiling: simulated workers, no store, no task code.

``ajug serve`` holds a graph of N independent tasks on a ``memory:`` store (nothing is ever
written: the workers are simulated). SIM_PROCS processes each open CONNS connections through
ajug's own client (handshake, authenticated frames) and do what a real worker does on the wire,
as fast as the coordinator answers: a ``lease`` asking for BATCH tasks that reports the previous
BATCH done, then the next. Nothing runs and nothing is stored, so the coordinator is the only
thing that limits the rate.

Measured over a window in the steady state (after WARMUP_S): tasks reported done per second
(from the coordinator's own status), the coordinator's CPU time over the same window (from
/proc), hence tasks per coordinator core-second and µs of coordinator CPU per task. A second,
profiled run (cProfile around the same ``ajug serve``) tells where those µs go.

    python -m benchmarks --workloads coordinator [--coord-n 1000000] [--coord-conns 8]
    python -m benchmarks.coordinator_load sim HOST:PORT CONNS BATCH SECONDS OUT   (one sim process)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: simulated worker processes (this machine has two cores: one for the coordinator)
SIM_PROCS = 1
WARMUP_S = 2.0
WINDOW_S = 5.0
SAMPLE_S = 0.25
BATCH = 64
PROFILE_TOP = 12

#: Runs ``ajug serve`` under cProfile; writes the top functions (by own time) when it exits.
PROFILED_SERVE = r"""
import cProfile, io, json, pstats, sys
out, args = sys.argv[1], sys.argv[2:]
import time
prof = cProfile.Profile(time.process_time)  # CPU time: waiting for the network is not work
from ajug.cli import main
try:
    prof.enable()
    main(args)
except SystemExit:
    pass
finally:
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP]
    def name(k):
        if k[0].endswith("asyncio/runners.py"):  # uvloop's C loop: socket I/O and callbacks
            return "event loop and socket I/O (uvloop, C)"
        return f"{k[0].rsplit('/', 2)[-1]}:{k[1]}({k[2]})"
    top = [{"function": name(k), "calls": v[1],
            "own_s": round(v[2], 4), "share": round(v[2] / total, 4) if total else 0}
           for k, v in rows]
    json.dump({"total_s": total, "top": top}, open(out, "w"))
""".replace("TOP", str(PROFILE_TOP))


async def _one(host: str, port: int, token: bytes, batch: int, until: float) -> int:
    from ajug.protocol import messages as m
    from ajug.protocol.connection import open_connection

    conn = await open_connection(host, port, token=token, role="worker", name="sim")
    done: list[list[Any]] = []
    n = 0
    rid = 0
    try:
        while time.monotonic() < until:
            rid += 1
            conn.send(m.lease(rid, want=batch, wait_ms=1000, done=done))
            await conn.drain()
            rep = await asyncio.wait_for(conn.recv(), 60)
            if rep["op"] != "leases":
                raise RuntimeError(f"answer {rep['op']}: {rep.get('msg')}")
            done = [[x["key"], x["tok"], {"rt": 0.0, "size": 0}] for x in rep["leases"]]
            n += len(done)
            if rep["state"] == "finished":
                break
        conn.send(m.lease(rid + 1, want=0, done=done))
        await conn.drain()
        await asyncio.wait_for(conn.recv(), 60)
        conn.send(m.bye())
        await conn.drain()
    finally:
        await conn.aclose()
    return n


async def _sim(address: str, conns: int, batch: int, seconds: float) -> int:
    host, _, port = address.rpartition(":")
    token = os.environ.get("AJUG_TOKEN", "").encode()
    until = time.monotonic() + seconds
    got = await asyncio.gather(*(_one(host, int(port), token, batch, until) for _ in range(conns)))
    return sum(got)


def sim_main(args: list[str]) -> int:
    """One simulated-worker process: CONNS connections for SECONDS; writes its lease count."""
    address, conns, batch, seconds, out = args
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    n = runner(_sim(address, int(conns), int(batch), float(seconds)))
    Path(out).write_text(json.dumps({"leased": n}))
    return 0


def run_coordinator(b: Any, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    """One measurement (the runner's ``coordinator`` workload). ``kind`` is ignored: the store
    is ``memory:`` (the workers are simulated and store nothing)."""
    from benchmarks import run as R

    tag = f"coordinator-{rep}"
    conns, batch = b.o.coord_conns, BATCH
    seconds = WARMUP_S + WINDOW_S + 2.0
    coord, host, port, token, _, load_s = R._serve(b, "coordinator", "memory", n, tag, stay=True)
    sims: list[Any] = []
    try:
        env = dict(b.env, AJUG_TOKEN=token.decode())
        per = max(1, conns // SIM_PROCS)
        for i in range(SIM_PROCS):
            cmd = [sys.executable, "-m", "benchmarks.coordinator_load", "sim", f"{host}:{port}",
                   str(per), str(batch), str(seconds), str(b.tmp / f"{tag}-sim{i}.json")]
            sims.append(b.spawn(cmd, env, f"{tag}-sim{i}"))
        # samples every SAMPLE_S; the window is from the first after WARMUP_S to the last
        # before 90 % of the graph is done (the rest would be the graph running out)
        samples: list[tuple[int, float, float]] = []
        start = time.perf_counter()
        while time.perf_counter() - start < WARMUP_S + WINDOW_S:
            st, cpu, now = _status(host, port, token), R._proc_cpu(coord.pid), time.perf_counter()
            if st["totals"]["done"] >= 0.9 * n:
                break
            samples.append((st["totals"]["done"], cpu, now))
            time.sleep(SAMPLE_S)
        R._wait(sims, seconds + 60)
        window = [x for x in samples if x[2] - start >= min(WARMUP_S, 0.5)] or samples[-2:]
        (d0, cpu0, t0), (d1, cpu1, t1) = window[0], window[-1]
        done = d1 - d0
        wall, cpu = t1 - t0, cpu1 - cpu0
        out: dict[str, Any] = {
            "load_s": load_s, "window_s": wall, "done_in_window": done,
            "tasks_per_s": done / wall if wall > 0 else 0.0,
            "coord_cpu_pct": 100 * cpu / wall if wall > 0 else 0.0,
            "tasks_per_core_s": done / cpu if cpu > 0 else 0.0,
            "us_per_task": 1e6 * cpu / done if done else None,
            "connections": per * SIM_PROCS, "batch": batch,
            "main_rss_mib": R._proc_mem(coord.pid)["VmHWM"] / 2**20,
        }
        bad = [s for s in sims if s.returncode]
        if bad:
            out["error"] = f"a simulated worker failed: {b.log_tail(f'{tag}-sim{sims.index(bad[0])}')}"
        elif done <= 0 or len(window) < 2:
            out["error"] = (f"no window of steady serving ({len(samples)} samples before 90 % "
                            f"of the graph was done): use a bigger --coord-n than {n}")
    finally:
        for s in sims:
            R.stop_process(s, 5)
        R.stop_process(coord, 30)
    if last and b.o.coord_profile and "error" not in out:
        out["profile"] = _profile(b, n, conns)
    return out


def _profile(b: Any, n: int, conns: int) -> dict[str, Any]:
    """The same load against a coordinator under cProfile: where its time goes (own time per
    function; cProfile roughly doubles the cost of each call, so shares matter, not µs)."""
    from benchmarks import run as R

    tag = "coordinator-profile"
    prof_out = b.tmp / f"{tag}.prof.json"
    seconds = WARMUP_S + WINDOW_S
    coord, host, port, token, _, _ = R._serve(
        b, "coordinator", "memory", n, tag, stay=True,
        prefix=[sys.executable, "-c", PROFILED_SERVE, str(prof_out)])
    try:
        env = dict(b.env, AJUG_TOKEN=token.decode())
        cmd = [sys.executable, "-m", "benchmarks.coordinator_load", "sim", f"{host}:{port}",
               str(conns), str(BATCH), str(seconds), str(b.tmp / f"{tag}-sim.json")]
        sim = b.spawn(cmd, env, f"{tag}-sim")
        R._wait([sim], seconds + 60)
    finally:
        R.stop_process(coord, 60)  # SIGTERM: the coordinator stops, the wrapper writes stats
    try:
        return json.loads(prof_out.read_text())
    except (OSError, ValueError):
        return {"error": f"no profile: {b.log_tail(tag)}"}


def _status(host: str, port: int, token: bytes) -> dict[str, Any]:
    from ajug.protocol.client import query_status

    return asyncio.run(query_status(host, port, token, None))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sim":
        sys.exit(sim_main(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.coordinator_load sim HOST:PORT CONNS BATCH SECONDS OUT")
