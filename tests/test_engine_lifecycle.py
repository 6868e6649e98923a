"""Leases and workers over a run's life, through the whole engine in this process
(tests/inproc.py: a real Coordinator and Workers in threads over real TCP): a lease its holder
does not renew goes to another worker and a late report of it counts once; a task that outlives
the lease TTL keeps its lease; a worker with ``--max-tasks`` leaves the rest to others; a
coordinator stopped mid-run and started again computes only what is left; a dropped connection
is taken up again; a peer that never says hello is let go; a late worker, two of one name, a
second coordinator on the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from inproc import TOKEN, Engine
from procs import copy_jugfile, executions, stamps, values, wait_for

from ajug.errors import StoreLocked
from ajug.protocol import messages as m
from ajug.protocol.connection import open_connection
from ajug.protocol.framing import HANDSHAKE_MAX_FRAME_BYTES, FrameDecoder

pytestmark = pytest.mark.timeout(90)


def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, task_s: float) -> Path:
    """tests/jugfiles/recorded.py with ``n`` squares of ``task_s`` each; executions logged."""
    monkeypatch.setenv("AJUG_TEST_N", str(n))
    monkeypatch.setenv("AJUG_TEST_TASK_S", str(task_s))
    monkeypatch.setenv("AJUG_TEST_RUNLOG", str(tmp_path / "runs.log"))
    return copy_jugfile(tmp_path, "recorded.py")


def ran(tmp_path: Path) -> Counter[str]:
    """Finished executions per task."""
    return Counter(r["task"] for r in executions(tmp_path / "runs.log"))


async def test_a_lease_its_holder_does_not_renew_goes_to_another_worker_and_a_late_report_counts_nothing(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that takes a lease and goes silent (frozen, its network gone) loses it after
    the TTL; another worker runs the task. When the silent one reports it done at last, the
    task is not completed a second time (a report with a stale token for a task done is not
    told apart from one sent again after a reconnect, so it is not a duplicate either)."""
    jug = recorded(tmp_path, monkeypatch, n=4, task_s=0.02)
    coord = engine.make_coordinator(jug, lease_ttl_s=1.0, stay=True)
    silent = await open_connection("127.0.0.1", coord.port, token=TOKEN, role="worker",
                                   name="silent")
    try:
        silent.send(m.lease(1, want=1))
        await silent.drain()
        rep = await asyncio.wait_for(silent.recv(), 10)
        (held,) = rep["leases"]
        w = engine.run_worker(coord.port, name="busy")
        st = await asyncio.to_thread(
            wait_for, lambda: (s := coord.status())["state"] == "finished" and s, 30, 0.05,
            "the run to finish without the silent worker")
        assert st["reclaimed"] == 1 and st["duplicates"] == 0, st
        assert st["totals"]["done"] == st["tasks"] == 5
        assert ran(tmp_path) == Counter({**{f"square:{i}": 1 for i in range(4)}, "add_all": 1})
        # the silent worker wakes up and reports the task it held (its result is in the store)
        silent.send(m.lease(2, want=0, done=[m.done_item(held["key"], held["tok"], rt=0.02,
                                                         size=16)]))
        await silent.drain()
        await asyncio.wait_for(silent.recv(), 10)
    finally:
        await silent.aclose()
    st = coord.status()
    assert st["duplicates"] == 0 and st["reclaimed"] == 1, st
    assert st["totals"]["done"] == 5 and st["failures"] == []
    assert coord.call(lambda c: c.sched.completed) == 5  # ajug_completed_total
    assert sum(ran(tmp_path).values()) == 5  # nothing ran again for it
    coord.stop()
    assert coord.wait(30) == 0
    assert w.wait(30) == 0


def test_a_task_longer_than_the_lease_ttl_keeps_its_lease(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker renews the lease of the task it runs: a task three times the TTL is neither
    reclaimed nor run twice."""
    jug = recorded(tmp_path, monkeypatch, n=1, task_s=1.8)
    coord = engine.make_coordinator(jug, lease_ttl_s=0.6)
    w = engine.run_worker(coord.port, prefetch=0)
    assert coord.wait(30) == 0
    assert w.wait(30) == 0
    assert coord.coord is not None
    st = coord.coord.status()
    assert st["reclaimed"] == 0 and st["duplicates"] == 0, st
    assert ran(tmp_path) == Counter({"square:0": 1, "add_all": 1})


def test_a_worker_with_max_tasks_stops_after_them_and_another_runs_the_rest(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ajug work --max-tasks 3``: three tasks, exit 0, the run goes on; nothing it held is
    lost or run twice."""
    jug = recorded(tmp_path, monkeypatch, n=8, task_s=0.02)
    coord = engine.make_coordinator(jug)
    first = engine.run_worker(coord.port, max_tasks=3)
    assert first.wait(30) == 0
    assert first.worker.ran == 3
    assert sum(ran(tmp_path).values()) == 3
    assert coord.rc is None  # the run is not over
    wait_for(lambda: coord.status()["workers"] == [], 10, what="the first worker to be gone")
    st = coord.status()
    assert st["totals"]["done"] == 3 and st["totals"]["running"] == 0, st["totals"]
    second = engine.run_worker(coord.port)
    assert coord.wait(30) == 0
    assert second.wait(30) == 0
    assert second.worker.ran == 6  # the five squares left and the sum
    assert ran(tmp_path) == Counter({**{f"square:{i}": 1 for i in range(8)}, "add_all": 1})
    assert values(jug, ["total"])["total"] == sum(i * i for i in range(8))


def test_a_coordinator_stopped_mid_run_and_started_again_computes_only_what_is_left(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Stopped as Ctrl-C stops ``ajug serve`` (gracefully: a crash is tests/test_faults.py's,
    with processes) and started again on the same store and port: its worker reconnects, the
    results stored before are kept, the rest is computed once."""
    caplog.set_level(logging.INFO, logger="ajug")
    jug = recorded(tmp_path, monkeypatch, n=30, task_s=0.05)
    coord = engine.make_coordinator(jug)
    port = coord.port
    w = engine.run_worker(port)
    wait_for(lambda: coord.status()["totals"]["done"] >= 5, 30, what="some tasks done")
    coord.stop()
    assert coord.wait(30) == 1  # stopped before the end
    store = str(tmp_path / "recorded.ajugdata")
    before = stamps(store)
    assert 5 <= len(before) < 31
    assert w.alive  # it waits for a coordinator to come back
    again = engine.make_coordinator(jug, port=port)
    assert again.coord is not None
    assert again.coord.status()["totals"]["done"] >= len(before)
    assert again.wait(60) == 0
    assert w.wait(30) == 0
    assert "reconnected to the coordinator" in caplog.text
    after = stamps(store)
    assert len(after) == 31
    assert {k: after[k] for k in before} == before  # nothing stored was computed again
    runs = ran(tmp_path)
    assert set(runs) == {*(f"square:{i}" for i in range(30)), "add_all"}
    assert all(n == 1 for n in runs.values()), runs


def test_a_worker_whose_connection_drops_reconnects_and_keeps_its_tasks(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The coordinator goes on, the connection does not (a network blip): the worker
    reconnects, says which tasks it still holds (resume), and every task runs once."""
    caplog.set_level(logging.INFO, logger="ajug")
    jug = recorded(tmp_path, monkeypatch, n=12, task_s=0.15)
    coord = engine.make_coordinator(jug)
    w = engine.run_worker(coord.port, prefetch=2)
    wait_for(lambda: (t := coord.status()["totals"])["done"] >= 2 and t["running"] >= 1, 30,
             0.02, what="some tasks done and one running")
    dropped = coord.call(lambda c: [conn.close() for conn in list(c._conns.values())])
    assert len(dropped) == 1
    assert coord.wait(60) == 0
    assert w.wait(30) == 0
    assert "lost the coordinator" in caplog.text and "reconnected to the coordinator" in caplog.text
    resumed = [r.getMessage() for r in caplog.records if " resumed " in r.getMessage()]
    assert len(resumed) == 1 and re.search(r"resumed [1-9]\d* running task", resumed[0]), resumed
    runs = ran(tmp_path)
    assert set(runs) == {*(f"square:{i}" for i in range(12)), "add_all"}
    assert all(n == 1 for n in runs.values()), runs
    assert values(jug, ["total"])["total"] == sum(i * i for i in range(12))


def test_a_connection_that_never_says_hello_is_closed_after_the_handshake_timeout(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A silent peer (a port scanner, a stuck client) holds no slot for ever: told why, closed,
    said in a line; the coordinator serves workers all the same."""
    caplog.set_level(logging.INFO, logger="ajug")
    jug = recorded(tmp_path, monkeypatch, n=3, task_s=0.01)
    coord = engine.make_coordinator(jug, handshake_timeout_s=0.3)
    with socket.create_connection(("127.0.0.1", coord.port), timeout=10) as s:
        t0 = time.monotonic()
        got = b""
        while chunk := s.recv(1 << 16):  # until the coordinator closes it
            got += chunk
        assert time.monotonic() - t0 < 5
    (frame,) = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES).feed(got)  # why, then the close
    assert frame["op"] == "error" and "0.3 s" in frame["msg"], frame
    w = engine.run_worker(coord.port)
    assert coord.wait(30) == 0 and w.wait(30) == 0
    refused = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert len(refused) == 1 and "127.0.0.1" in refused[0].getMessage(), caplog.text


def test_a_worker_with_prefetch_holds_leases_ahead_but_executes_one(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--prefetch 3``: the worker holds the task it runs and three more, each leased (and
    renewed) to it; status counts one executing; each still runs once."""
    jug = recorded(tmp_path, monkeypatch, n=10, task_s=0.2)
    coord = engine.make_coordinator(jug)
    w = engine.run_worker(coord.port, prefetch=3, name="ahead")
    st = wait_for(lambda: (s := coord.status())["totals"]["running"] == 4 and s, 30, 0.02,
                  what="four leases held by the worker")
    assert st["executing"] == 1  # what ``ajug status`` calls running
    (row,) = st["workers"]
    assert row["name"] == "ahead" and row["n_running"] == 4, row  # its leases
    assert coord.wait(30) == 0 and w.wait(30) == 0
    assert ran(tmp_path) == Counter({**{f"square:{i}": 1 for i in range(10)}, "add_all": 1})


def test_a_worker_that_joins_a_finished_stay_run_waits_idle_and_runs_nothing(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ajug serve --stay`` keeps serving a finished run (an invalidate may bring work back):
    a worker that comes late is served, idle, runs nothing, and exits 0 once the coordinator
    is stopped."""
    jug = recorded(tmp_path, monkeypatch, n=3, task_s=0.01)
    coord = engine.make_coordinator(jug, stay=True)
    first = engine.run_worker(coord.port)
    wait_for(lambda: coord.status()["state"] == "finished", 30, what="the run to finish")
    late = engine.run_worker(coord.port, name="late")
    wait_for(lambda: "late" in [w["name"] for w in coord.status()["workers"]], 30,
             what="the late worker to be served")
    assert late.alive and coord.rc is None
    coord.stop()
    assert coord.wait(30) == 0
    assert late.wait(30) == 0 and first.wait(30) == 0
    assert late.worker.ran == 0
    assert sum(ran(tmp_path).values()) == 4


def test_two_workers_of_one_name_are_two_workers(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names are for people (``--name``); the coordinator tells workers apart by their ids."""
    jug = recorded(tmp_path, monkeypatch, n=20, task_s=0.1)
    coord = engine.make_coordinator(jug)
    workers = [engine.run_worker(coord.port, name="same", prefetch=0) for _ in range(2)]
    st = wait_for(lambda: len((s := coord.status())["workers"]) == 2 and s, 30, 0.02,
                  what="both workers")
    assert [w["name"] for w in st["workers"]] == ["same", "same"]
    assert len({w["id"] for w in st["workers"]}) == 2
    assert coord.wait(30) == 0
    for w in workers:
        assert w.wait(30) == 0
    assert all(w.worker.ran > 0 for w in workers)
    assert ran(tmp_path) == Counter({**{f"square:{i}": 1 for i in range(20)}, "add_all": 1})


def test_a_second_coordinator_on_the_store_is_refused_and_the_first_serves_on(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's owner lock: a second coordinator cannot open it (it names the first's host
    and pid); the first one's run is not disturbed. (The command's one line and exit status:
    tests/test_faults.py.)"""
    jug = recorded(tmp_path, monkeypatch, n=6, task_s=0.05)
    coord = engine.make_coordinator(jug)
    with pytest.raises(StoreLocked) as e:
        engine.make_coordinator(jug)
    assert "another coordinator" in str(e.value) and str(os.getpid()) in str(e.value), e.value
    w = engine.run_worker(coord.port)
    assert coord.wait(30) == 0 and w.wait(30) == 0
    assert ran(tmp_path) == Counter({**{f"square:{i}": 1 for i in range(6)}, "add_all": 1})


NEEDS_GPU = """\
import os, threading
from ajug import TaskGenerator

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")

def note(what):
    with open(LOG, "a") as f:  # which worker thread ran it
        f.write(f"{what} {threading.get_ident()}\\n")

@TaskGenerator(resources={"gpus": 1})
def train(i):
    note("train")
    return i * 10

@TaskGenerator
def prep(i):
    note("prep")
    return -i

trained = [train(i) for i in range(4)]
prepped = [prep(i) for i in range(8)]
"""


def test_tasks_that_need_a_gpu_go_only_to_the_host_that_offers_one(
        engine: Engine, tmp_path: Path) -> None:
    """Two hosts (host groups): one offers a GPU, one does not. Every GPU task runs on the
    first (each task notes the worker thread that ran it); the other gets only the rest."""
    jug = tmp_path / "gpus.py"
    jug.write_text(NEEDS_GPU)
    coord = engine.make_coordinator(jug, store_url=str(tmp_path / "store"))
    cpu = {"cpus": 4, "memory": 8 << 30}
    gpu_box = engine.run_worker(coord.port, name="gpu-box", prefetch=0,
                                offer={"group": "hostA", "resources": {**cpu, "gpus": 1}})
    cpu_box = engine.run_worker(coord.port, name="cpu-box", prefetch=0,
                                offer={"group": "hostB", "resources": cpu})
    assert coord.wait(30) == 0 and gpu_box.wait(30) == 0 and cpu_box.wait(30) == 0
    names = {gpu_box._thread.ident: "gpu-box", cpu_box._thread.ident: "cpu-box"}
    runs = [ln.split() for ln in (tmp_path / "runs.log").read_text().splitlines()]
    by_func: dict[str, list[str]] = {}
    for func, ident in runs:
        by_func.setdefault(func, []).append(names[int(ident)])
    assert by_func["train"] == ["gpu-box"] * 4, by_func
    assert len(by_func["prep"]) == 8
    assert gpu_box.worker.ran + cpu_box.worker.ran == 12
