"""The engine end to end over real TCP on 127.0.0.1: in this process (tests/inproc.py), and as
`ajug run` / `ajug serve` + `ajug work` processes where a process is the subject (signals)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from inproc import TOKEN, Engine
from procs import (
    Procs,
    ajug_cmd,
    copy_jugfile,
    env,
    offline_status,
    read_log,
    stamps,
    status,
    values,
    wait_for,
)
from rich.console import Console

from ajug.protocol.client import query_status
from ajug.status import render

HERE = Path(__file__).parent
EXPECTED_TOTAL = sum(x * x for x in range(60))


def result_stamps(jugfile: Path, store: str | None) -> dict[str, float]:
    """Each stored result's write time, to prove a second run computed nothing."""
    from ajug.jugfile import default_store_url

    return stamps(store or default_store_url(jugfile))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_serve_and_two_workers_run_mapreduce_with_barrier(
    backend: str, engine: Engine, tmp_path: Path, free_tcp_port: int,
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture,
) -> None:
    """In one process (tests/inproc.py): a coordinator and two workers, one of them started
    before the coordinator exists."""
    caplog.set_level(logging.INFO, logger="ajug")
    jugfile = copy_jugfile(tmp_path, "mr_barrier.py")
    store = None
    if backend == "redis":
        url = request.getfixturevalue("redis_server")
        store = f"{url}?namespace=t{free_tcp_port}:"
    # one worker before the coordinator exists, one after
    early = engine.run_worker(free_tcp_port, connect_timeout_s=60)
    wait_for(lambda: "waiting for the coordinator" in caplog.text, 30,
             what="the early worker to try to connect")
    coord = engine.make_coordinator(jugfile, store, port=free_tcp_port)
    late = engine.run_worker(coord.port)
    assert coord.wait(90) == 0
    assert early.wait(30) == 0
    assert late.wait(30) == 0
    # both workers took part: the one started before the coordinator and the one after
    assert len(re.findall(r"worker \S+ connected", caplog.text)) == 2, caplog.text
    got = values(jugfile, ["result", "total"], store)
    assert got["result"] == {"n": 60, "total": EXPECTED_TOTAL}
    assert got["total"] == EXPECTED_TOTAL
    before = result_stamps(jugfile, store)
    assert len(before) == 1 + 60 + 6 + 1 + 1
    # running it again computes nothing (what `ajug run` says of it: tests/test_runreport.py)
    # (with nothing to do, the coordinator ends without waiting for a worker)
    again = engine.make_coordinator(jugfile, store)
    assert again.wait(30) == 0
    assert again.coord is not None
    st = again.coord.status(False)
    assert st["state"] == "finished" and st["totals"]["done"] == st["tasks"] == len(before)
    assert result_stamps(jugfile, store) == before


@pytest.mark.timeout(120)
def test_run_example_and_its_status_offline(engine: Engine, tmp_path: Path) -> None:
    """The example run in this process (tests/inproc.py); the store read (``ajug status
    --json``, a fresh interpreter) once the coordinator has exited, and rendered as the command
    does."""
    ex = tmp_path / "primes.py"
    shutil.copy(HERE.parent / "examples" / "primes.py", ex)
    coord = engine.make_coordinator(ex)
    # one worker: two in one process can pick the same temp file name (ajug/stores/file.py
    # _tmp_name counts without a lock)
    worker = engine.run_worker(coord.port)
    assert coord.wait(90) == 0
    assert worker.wait(30) == 0
    got = values(ex, ["summary"])
    primes = [n for n in range(2, 20_000) if all(n % d for d in range(2, int(n**0.5) + 1))]
    assert got["summary"] == f"{len(primes)} primes below 20000, summing to {sum(primes)}"
    st = offline_status(ex)
    assert st["totals"]["done"] == st["tasks"] == 42
    assert {f["name"] for f in st["functions"]} == {
        "primes.primes_in", "primes.count_and_sum", "primes.report"}
    text = io.StringIO()  # as ``ajug status primes.py`` renders it
    render(st, Console(file=text, width=80, force_terminal=False))
    assert "primes.primes_in" in text.getvalue() and "40" in text.getvalue()



@pytest.mark.timeout(90)
def test_status_live_while_a_task_runs(engine: Engine, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow jugfile served in this process (tests/inproc.py): its status while it runs, and
    what ``ajug status`` prints of it (asked over the protocol, rendered here)."""
    slow = copy_jugfile(tmp_path, "slow.py")
    monkeypatch.setenv("AJUG_TEST_SLOW_S", "2")  # long enough to be seen running
    coord = engine.make_coordinator(slow)
    w = engine.run_worker(coord.port)
    live = wait_for(lambda: (s := coord.status())["totals"]["running"] >= 1 and s, 30,
                    what="a running task")
    assert live["tasks"] == 4
    assert live["totals"]["running"] == 1 and live["totals"]["ready"] == 2
    assert live["totals"]["waiting"] == 1
    assert len(live["workers"]) == 1 and live["workers"][0]["pid"] == os.getpid()
    human = coord.status_text()  # ``ajug status 127.0.0.1:PORT``, over the protocol
    assert "slow.slow_square" in human and "workers" in human, human
    assert coord.wait(60) == 0
    assert w.wait(30) == 0


def status_of(port: int) -> dict:  # type: ignore[type-arg]
    """What ``ajug status 127.0.0.1:PORT --json`` prints, asked over the protocol."""
    return asyncio.run(query_status("127.0.0.1", port, TOKEN, None))


def running_holder(port: int, key_func: str = "slow.slow_square") -> tuple[int, str] | None:
    st = status(port)
    for w in st["workers"]:
        if w["n_running"]:
            return w["pid"], w["running"][0]
    return None


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_sigkill_worker_mid_task(procs: Procs, tmp_path: Path) -> None:
    jugfile = copy_jugfile(tmp_path, "slow.py")
    e = env(AJUG_TEST_SLOW_S="3")
    coord, port = procs.serve(jugfile, env=e)
    w1 = procs.work(port, "--prefetch", "0", env=e)
    w2 = procs.work(port, "--prefetch", "0", env=e)
    wait_for(lambda: status(port)["totals"]["running"] == 2, 30, what="both workers busy")
    victim, key = running_holder(port)  # type: ignore[misc]
    os.kill(victim, signal.SIGKILL)
    other = w2 if victim == w1.pid else w1
    assert coord.wait(90) == 0, read_log(coord)
    assert other.wait(30) == 0
    assert values(jugfile, ["total"], AJUG_TEST_SLOW_S="3")["total"] == 0 + 1 + 4
    assert "back to ready" in read_log(coord)


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_sigstop_worker_lease_reclaimed_after_ttl(procs: Procs, tmp_path: Path) -> None:
    jugfile = copy_jugfile(tmp_path, "slow.py")
    e = env(AJUG_TEST_SLOW_S="4")
    coord, port = procs.serve(jugfile, "--lease-ttl", "2", env=e)
    w1 = procs.work(port, "--prefetch", "0", env=e)
    wait_for(lambda: status(port)["totals"]["running"] == 1, 30, what="a running task")
    frozen, key = running_holder(port)  # type: ignore[misc]
    assert frozen == w1.pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        w2 = procs.work(port, "--prefetch", "0", env=e)
        # reclaimed after the TTL, then run by the other worker
        wait_for(lambda: any(key in w["running"] for w in status(port)["workers"]
                             if w["pid"] == w2.pid), 30, what="the task to move to worker 2")
        assert status(port)["reclaimed"] >= 1
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert coord.wait(90) == 0, read_log(coord)
    assert values(jugfile, ["total"], AJUG_TEST_SLOW_S="4")["total"] == 5


@pytest.mark.timeout(120)
def test_barrier_example_with_jugfile_functions_as_arguments(tmp_path: Path) -> None:
    """mapreduce with plain jugfile functions: they travel by value, the workers' cwd is elsewhere."""
    ex = tmp_path / "wordcount_barrier.py"
    shutil.copy(HERE.parent / "examples" / "wordcount_barrier.py", ex)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(ajug_cmd("run", str(ex), "-j", "2", "--no-progress"), env=env(),
                         capture_output=True, text=True, timeout=90, cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    best = values(ex, ["best"])["best"]
    # "fox" and "dog" tie (600 each): their order is the merge tree's, not asserted
    assert list(best[0]) == ["the", 1200]
    assert sorted(tuple(x) for x in best[1:3]) == [("dog", 600), ("fox", 600)]
    assert all(n <= 400 for _, n in best[3:])
    st = offline_status(ex)
    assert st["barrier"] is False and st["totals"]["done"] == st["tasks"]


@pytest.mark.timeout(90)
def test_status_watch_follows_a_run_to_its_end(engine: Engine, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``ajug status --watch`` on a coordinator and a worker, all in this process."""
    jugfile = copy_jugfile(tmp_path, "steps.py")
    monkeypatch.setenv("AJUG_TEST_N", "12")
    monkeypatch.setenv("AJUG_TEST_STEP_S", "0.25")
    coord = engine.make_coordinator(jugfile, stay=True)
    engine.run_worker(coord.port)
    # --stay: the run finishes but the coordinator stays; --watch ends at "finished"
    assert coord.watch() == 0
    err = capsys.readouterr().err
    assert "13/13 done" in err, err
    assert err.strip().splitlines()[-1].startswith("ajug: the run has finished: [finished] "
                                                   "13/13 done"), err
    assert status_of(coord.port)["state"] == "finished"  # what `ajug status --json` says
    assert coord.rc is None  # still serving
    coord.stop()
    assert coord.wait(30) == 0
