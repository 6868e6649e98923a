"""Chaos: workers SIGKILLed about every second and replaced, the coordinator killed and restarted
once, across a barrier. Every result must be present, loadable and correct."""

from __future__ import annotations

import collections
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import Procs, env, read_log, status

HERE = Path(__file__).parent
N_TASKS = 2000


def expected_answer() -> int:
    total = sum(i * i for i in range(1000))
    return sum(total + i for i in range(978))


@pytest.mark.timeout(170)
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
