"""Chaos: workers SIGKILLed about every second and replaced, the coordinator killed and restarted
once, across a barrier. Every result must be present, loadable and correct."""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from procs import Procs, children, env, read_log, run_records, status

HERE = Path(__file__).parent
N_TASKS = 2000


def expected_answer() -> int:
    total = sum(i * i for i in range(1000))
    return sum(total + i for i in range(978))


@pytest.mark.timeout(170)
@pytest.mark.slow
def test_chaos(procs: Procs, tmp_path: Path, free_tcp_port: int) -> None:
    rng = random.Random(1234)
    jugfile = tmp_path / "chaos.py"
    shutil.copy(HERE / "jugfiles" / "chaos.py", jugfile)
    runlog = tmp_path / "runs.log"
    e = env(AJUG_TEST_RUNLOG=str(runlog))
    store = tmp_path / "chaos.ajugdata"

    coord, port = procs.serve(jugfile, "--lease-ttl", "5", port=free_tcp_port, env=e)
    workers = [procs.work(port, "--connect-timeout", "60", env=e) for _ in range(4)]
    kills = 0
    coordinator_restarted = False
    deadline = time.monotonic() + 120
    next_kill = time.monotonic() + 1.0
    while coord.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if time.monotonic() < next_kill:
            continue
        next_kill = time.monotonic() + rng.uniform(0.7, 1.3)
        if not coordinator_restarted:
            try:
                done = status(port)["totals"]["done"]
            except AssertionError:
                done = 0
            if done >= 700:
                coord.kill()
                coord.wait(10)
                coord, port = procs.serve(jugfile, "--lease-ttl", "5", port=free_tcp_port, env=e)
                coordinator_restarted = True
                continue
        alive = [w for w in workers if w.poll() is None]
        if alive:
            victim = rng.choice(alive)
            victim.kill()
            victim.wait(10)
            kills += 1
            workers.remove(victim)
        workers.append(procs.work(port, "--connect-timeout", "60", env=e))
    assert coord.wait(max(1.0, deadline - time.monotonic())) == 0, read_log(coord)[-3000:]
    assert coordinator_restarted, "the run ended before the coordinator could be killed"

    # every result present, loadable (no corrupt file) and correct
    code = (
        "import json, sys, ajug\n"
        "from ajug.stores import open_store\n"
        f"s = open_store({str(store)!r})\n"
        "keys = list(s.list())\n"
        "for k in keys: s.load(k)\n"
        f"_, ns = ajug.init({str(jugfile)!r})\n"
        "print(json.dumps({'n': len(keys), 'answer': ajug.value(ns['answer'])}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"n": N_TASKS, "answer": expected_answer()}
    runs = collections.Counter(runlog.read_text().split())
    assert len(runs) == N_TASKS
    twice = sum(1 for c in runs.values() if c > 1)
    print(f"\nchaos: {kills} workers killed, coordinator restarted once; "
          f"{twice} of {N_TASKS} tasks ran more than once ({sum(runs.values()) - N_TASKS} extra runs)")


# -- everything hostile at once ------------------------------------------------------------------

LEASE_TTL_S = 2.0  # the owner lock then lives 10 s


class Hostile:
    """Keeps the record of what the test did to whom and when, for the overlap check."""

    def __init__(self) -> None:
        self.frozen: dict[int, list[tuple[float, float]]] = {}  # pid -> [(from, to)] (time.time)
        self.killed: dict[int, float] = {}  # pid -> when

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.killed[pid] = time.time()

    def freeze(self, pid: int) -> float:
        os.kill(pid, signal.SIGSTOP)
        return time.time()

    def thaw(self, pid: int, since: float) -> None:
        os.kill(pid, signal.SIGCONT)
        self.frozen.setdefault(pid, []).append((since, time.time()))


def forbidden_overlaps(records: list[dict[str, Any]], hostile: Hostile, a_pids: set[int],
                       a_frozen: tuple[float, float]) -> list[tuple[dict[str, Any], ...]]:
    """Pairs of executions of one task that ran at once while both could hold a valid lease.
    An execution still counts as valid unless, before the other one started, its worker had
    been frozen past the TTL (after it started), or it ran under the frozen coordinator A and
    had started before A froze plus a TTL (the last moment a lease of A's could be valid)."""
    ends = {}
    starts = []
    for r in records:
        if "end" in r:
            ends[(r["task"], r["pid"], r["start"])] = r["end"]
        else:
            starts.append(r)
    runs = []
    for r in starts:
        end = ends.get((r["task"], r["pid"], r["start"]), hostile.killed.get(r["pid"]))
        if end is not None:  # unfinished and never killed: a worker stopped at the end
            runs.append({**r, "end": end})
    bad = []
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_task.setdefault(r["task"], []).append(r)
    for rs in by_task.values():
        rs.sort(key=lambda r: r["start"])
        for i, e1 in enumerate(rs):
            for e2 in rs[i + 1 :]:
                if e2["start"] >= e1["end"]:
                    continue
                frozen = any(e1["start"] <= f0 < e2["start"] and f1 - f0 > LEASE_TTL_S
                             for f0, f1 in hostile.frozen.get(e1["pid"], []))
                late_under_a = (e1["pid"] in a_pids and e2["pid"] not in a_pids
                                and e1["start"] <= a_frozen[0] + LEASE_TTL_S)
                if not (frozen or late_under_a):
                    bad.append((e1, e2))
    return bad


def damage_results(store: Path, rng: random.Random, n: int = 6) -> int:
    """Delete some results, cut some short, empty some."""
    files = [p for p in store.glob("??/*") if p.is_file()]
    hit = rng.sample(files, min(len(files), 3 * n))
    for k, p in enumerate(hit):
        try:
            if k % 3 == 0:
                p.unlink()
            elif k % 3 == 1:
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
            else:
                p.write_bytes(b"")
        except FileNotFoundError:
            pass
    return len(hit)


def damage_redis(url: str, namespace: str, rng: random.Random, n: int = 6) -> int:
    import redis

    r = redis.Redis.from_url(url)
    try:
        keys = sorted(r.scan_iter(match=f"{namespace}r:*", count=1000))
        hit = rng.sample(keys, min(len(keys), 3 * n))
        for k, key in enumerate(hit):
            if k % 3 == 0:
                r.delete(key)
            elif k % 3 == 1:
                value = r.get(key) or b""
                r.set(key, value[: len(value) // 2])
            else:
                r.set(key, b"")
        return len(hit)
    finally:
        r.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["file", "redis"])
@pytest.mark.slow
def test_everything_hostile_at_once(backend: str, procs: Procs, tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    """Workers SIGKILLed every second, one frozen past the TTL; results deleted, cut short and
    emptied during the run (file) or redis restarted without persistence twice and results
    deleted and cut short in it (redis); the coordinator frozen past its owner lock while a
    second one takes over. The run ends with every value right, every result whole, and no
    task run twice at once under two valid leases."""
    rng = random.Random(11)
    jugfile = tmp_path / "hostile.py"
    shutil.copy(HERE / "jugfiles" / "hostile.py", jugfile)
    runlog, gate = tmp_path / "runs.jsonl", tmp_path / "gate"
    e = env(AJUG_TEST_RUNLOG=str(runlog), AJUG_TEST_GATE=str(gate))
    store_dir = tmp_path / "hostile.ajugdata"
    store_args: list[str] = []
    server = None
    namespace = "chaos:"
    if backend == "redis":
        server = request.getfixturevalue("make_redis_server")()  # no persistence
        store_url = f"{server.url}?namespace={namespace}"
        store_args = ["--store", store_url]
    else:
        store_url = str(store_dir)
    opts = ["--lease-ttl", str(LEASE_TTL_S), "--max-attempts", "10", *store_args]
    hostile = Hostile()

    def supervisor(port: int, timeout: str) -> Any:
        return procs.start(["work", f"127.0.0.1:{port}", "-j", "3", "--connect-timeout", timeout],
                           "supervise", env=e)

    def workers_of(sup: Any) -> list[int]:
        return [k for k in children(sup.pid) if _alive(k)]

    def attack(sup: Any, seconds: float, damages: list[float], restarts: list[float],
               freeze_at: float | None = None) -> None:
        """For ``seconds``: a worker of ``sup`` killed every second; results damaged and redis
        restarted at the given offsets; one worker frozen for 1.5 TTL at ``freeze_at``."""
        t0 = time.monotonic()
        next_kill = t0 + 1.0
        frozen: tuple[int, float] | None = None
        while time.monotonic() - t0 < seconds:
            now = time.monotonic() - t0
            if freeze_at is not None and now >= freeze_at and frozen is None:
                kids = workers_of(sup)
                if kids:
                    frozen = (kids[0], hostile.freeze(kids[0]))
                    freeze_at = None
            if frozen is not None and time.time() - frozen[1] > 1.5 * LEASE_TTL_S:
                hostile.thaw(*frozen)
                frozen = None
            if damages and now >= damages[0]:
                damages.pop(0)
                if backend == "file":
                    damage_results(store_dir, rng)
                else:
                    damage_redis(server.url, namespace, rng)
            if restarts and now >= restarts[0]:
                restarts.pop(0)
                server.restart(down_s=0.3)
            if time.monotonic() >= next_kill:
                next_kill += 1.0
                kids = [k for k in workers_of(sup) if frozen is None or k != frozen[0]]
                if kids:
                    hostile.kill(rng.choice(kids))
            time.sleep(0.05)
        if frozen is not None:
            hostile.thaw(*frozen)

    t_start = time.monotonic()
    a, port_a = procs.serve(jugfile, *opts, env=e)
    sup_a = supervisor(port_a, "3")
    redis_restarts = [3.0] if backend == "redis" else []
    attack(sup_a, 8.0, damages=[2.5, 5.5], restarts=redis_restarts, freeze_at=1.5)

    # the coordinator freezes past its lock; a second one takes the store over
    a_frozen_at = hostile.freeze(a.pid)
    b = None
    while b is None and time.monotonic() - t_start < 60:
        try:
            b, port_b = procs.serve(jugfile, *opts, env=e)
        except AssertionError as err:
            assert "served by another coordinator" in str(err), err
            time.sleep(0.5)
    assert b is not None, "B never took over the store"
    hostile.thaw(a.pid, a_frozen_at)
    a_frozen = hostile.frozen[a.pid][0]
    assert a.wait(20) == 2, read_log(a)[-3000:]
    assert "lost the owner lock" in read_log(a).strip().splitlines()[-1]
    sup_b = supervisor(port_b, "60")
    attack(sup_b, 6.0, damages=[1.5] if backend == "file" else [],
           restarts=[2.0] if backend == "redis" else [])
    gate.write_text("")
    assert b.wait(60) == 0, read_log(b)[-3000:]
    assert sup_b.wait(30) == 0, read_log(sup_b)[-3000:]
    sup_a.wait(30)  # its workers lost coordinator A for good: they gave up
    elapsed = time.monotonic() - t_start

    # every value equals the sequential reference; every result is there and whole
    code = (
        "import json, sys, ajug\n"
        f"store, ns = ajug.init({str(jugfile)!r}, {store_url!r})\n"
        "keys = [t.key for t in ns['squares'] + ns['blocks'] + [ns['result']]]\n"
        "print(json.dumps({'values': {n: ajug.value(ns[n]) for n in ('squares', 'blocks', "
        "'result')}, 'reference': ns['reference'](), 'present': sum(store.exists(keys)), "
        "'n': len(keys), 'damaged': [d for d in store.verify(keys) if d]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["values"] == got["reference"]
    assert got["present"] == got["n"] and got["damaged"] == []

    a_pids = {int(pid) for pid in re.findall(r"worker [^\s:]+:(\d+):\w+ connected",
                                             read_log(a))}
    records = run_records(runlog)
    assert forbidden_overlaps(records, hostile, a_pids, a_frozen) == []
    log_b = read_log(b)
    print(f"\nhostile ({backend}): {len(hostile.killed)} workers killed, "
          f"{sum(len(v) for v in hostile.frozen.values())} freezes, coordinator taken over; "
          f"{len([r for r in records if 'end' in r])} executions of {got['n']} tasks; "
          f"{'vanished' in log_b and 'results vanished' or 'nothing vanished'} at B; "
          f"{elapsed:.0f} s")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
