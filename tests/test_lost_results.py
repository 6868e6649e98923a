"""Results that vanish from the store (a redis that lost its data, deleted or damaged files) are
computed again in the same run, never failed on, and a run is finished only once its results are
confirmed present. The decisions with a fake clock; the faults with real processes."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from inproc import Engine
from procs import copy_jugfile, env, values, wait_for
from test_leases import sched_for

from ajug.scheduler import BLOCKED, DONE, FAILED, MAX_VANISHED, READY, RUNNING, WAITING

# -- decisions (no I/O) -------------------------------------------------------------------------


def run_to_done(s: Any, wid: str, *idxs: int) -> None:
    for i in idxs:
        got = dict(s.lease(wid, 1))
        assert list(got) == [i], (got, i)
        assert s.complete(wid, i, got[i])


def test_missing_input_is_computed_again_and_the_dependent_waits() -> None:
    s, _ = sched_for([[], [0], [1]])
    run_to_done(s, "w1", 0)
    (i, tok), = s.lease("w2", 1)
    assert i == 1
    assert s.input_missing("w2", 1, tok, 0) == "waiting"
    assert s.state[0] == READY and s.state[1] == WAITING and s.remaining[1] == 1
    assert s.lost_count == {} and s.failures == {}  # no attempt counted, nothing failed
    assert (s.vanished, s.recomputed) == (1, 0)
    assert not s.finished()
    run_to_done(s, "w1", 0, 1, 2)
    assert s.all_done() and s.recomputed == 1


def test_a_report_on_a_stale_lease_still_brings_the_input_back() -> None:
    s, _ = sched_for([[], [0]])
    run_to_done(s, "w1", 0)
    (i, tok), = s.lease("w2", 1)
    assert s.input_missing("w2", i, tok + 99, 0) == "stale"
    assert s.state[0] == READY
    # the current lease of 1 is not touched: its worker has 0 cached, or reports it missing too
    assert s.state[1] == RUNNING and s.leases[1].tok == tok


def test_result_that_keeps_vanishing_is_failed_as_a_store_problem() -> None:
    s, _ = sched_for([[], [0]])
    for n in range(MAX_VANISHED):
        run_to_done(s, "w1", 0)
        (i, tok), = s.lease("w2", 1)
        r = s.input_missing("w2", i, tok, 0)
        assert r == ("blocked" if n == MAX_VANISHED - 1 else "waiting")
    assert s.state[0] == FAILED and s.state[1] == BLOCKED
    f = s.failures[0]
    assert f.kind == "store" and "vanished from the store" in f.msg and f.attempts == MAX_VANISHED
    assert s.finished() and not s.all_done()


def test_results_lost_at_the_end_are_computed_again() -> None:
    s, _ = sched_for([[], [0], [1], []])
    run_to_done(s, "w1", 0, 1, 2, 3)
    assert s.finished() and sorted(s.unverified) == [0, 1, 2, 3]
    del s.unverified[:]
    assert s.lost_results([1, 3]) == [1, 3]
    assert s.state[1] == READY and s.state[3] == READY
    assert s.state[2] == DONE  # its result is there: a done dependent is not redone
    assert not s.finished()
    got = dict(s.lease("w1", 5))
    assert sorted(got) == [1, 3]
    for i, tok in got.items():
        s.complete("w1", i, tok)
    assert s.all_done() and (s.vanished, s.recomputed) == (2, 2)
    assert sorted(s.unverified) == [1, 3]  # to be confirmed in turn


def test_a_lost_input_makes_ready_and_follow_on_dependents_wait() -> None:
    s, _ = sched_for([[], [], [0, 1], [2]])
    s.workers["w1"].follow = True
    run_to_done(s, "w1", 0)
    got = dict(s.lease("w1", 1))
    assert list(got) == [1]
    # 2 waits only for 1, which w1 holds: 2 is leased to w1 as a follow-on, 3 after it
    follow = dict(s.lease("w1", 5))
    assert sorted(follow) == [2, 3] and s.state[2] == RUNNING and s.remaining[2] == 1
    assert s.lost_results([0]) == [0]
    # 0 is not w1's to produce: the follow-on leases are taken back; they wait for 0 (and 1)
    assert s.state[2] == WAITING and s.remaining[2] == 2 and 2 not in s.leases
    assert s.state[3] == WAITING and 3 not in s.leases
    assert s.state[0] == READY
    s.complete("w1", 1, got[1])
    assert s.state[2] == WAITING and s.remaining[2] == 1
    run_to_done(s, "w2", 0, 2, 3)
    assert s.all_done()


def test_lease_for_a_worker_that_is_gone_is_empty() -> None:
    """A long poll held while its worker's connection closed: no KeyError, no lease."""
    s, _ = sched_for([[]])
    s.remove_worker("w1")
    assert s.lease("w1", 4) == []
    assert s.state[0] == READY


# -- the coordinator confirms a run's results before it calls the run finished ----------------

INDEPENDENT = """
from ajug import TaskGenerator

@TaskGenerator
def double(x):
    return 2 * x

xs = [double(i) for i in range(6)]
"""


async def test_run_is_finished_only_once_its_results_are_confirmed(tmp_path: Path) -> None:
    """Every task reported done, two results gone from the store meanwhile (no dependent would
    have noticed): the coordinator computes them again before it calls the run finished."""
    from ajug.coordinator import Coordinator, Settings
    from ajug.stores.memory import MemoryStore

    jugfile = tmp_path / "independent.py"
    jugfile.write_text(INDEPENDENT)
    coord = Coordinator(Settings(jugfile=str(jugfile), store_url="memory:"))
    coord.store = store = MemoryStore()
    await coord.load()
    sched, graph = coord.sched, coord.graph
    assert sched is not None and graph is not None
    sched.add_worker("w")

    def run_all() -> list[int]:
        leased = sched.lease("w", 100)
        for i, tok in leased:
            store.save(graph.keys[i], 2 * i)
            assert sched.complete("w", i, tok)
        return [i for i, _ in leased]

    assert len(run_all()) == 6
    store.remove([graph.keys[1], graph.keys[4]])
    await coord._check_finished()
    assert coord.state == "running"
    assert (sched.state[1], sched.state[4]) == (READY, READY)
    assert coord.status()["vanished"] == 2
    assert sorted(run_all()) == [1, 4]
    await coord._check_finished()
    assert coord.state == "finished" and coord.exit_status() == 0
    st = coord.status()
    assert (st["vanished"], st["recomputed"]) == (2, 2)
    assert all(store.exists(graph.keys))
    await coord.close()


BARRIER = """
from ajug import TaskGenerator, bvalue

@TaskGenerator
def double(x):
    return 2 * x

@TaskGenerator
def add(xs):
    return sum(xs)

firsts = [double(i) for i in range(4)]
total = bvalue(add(firsts))
after = [double(total + i) for i in range(3)]
"""


async def test_results_lost_before_a_barrier_are_computed_again_not_failed_on(
        tmp_path: Path) -> None:
    """Before the jugfile is loaded past a barrier, what was done before it is confirmed; what
    vanished meanwhile (even after that check) is computed again, where it used to stop the
    run with a StoreError."""
    from ajug.coordinator import Coordinator, Settings
    from ajug.graph import decode_args
    from ajug.stores.memory import MemoryStore
    from ajug.task import Task, value

    jugfile = tmp_path / "barrier.py"
    jugfile.write_text(BARRIER)
    coord = Coordinator(Settings(jugfile=str(jugfile), store_url="memory:"))
    coord.store = store = MemoryStore()
    await coord.load()

    def run_all() -> list[int]:
        """Run what is ready as a worker would: inputs from the store, result to the store."""
        sched, graph = coord.sched, coord.graph
        assert sched is not None and graph is not None
        if "w" not in sched.workers:
            sched.add_worker("w")
        Task.store = store
        done = []
        while leased := sched.lease("w", 100):
            for i, tok in leased:
                (arg,), _ = decode_args(graph.args[i])
                x = value(arg)
                store.save(graph.keys[i], sum(x) if isinstance(x, list) else 2 * x)
                assert sched.complete("w", i, tok)
                done.append(i)
        return done

    assert len(run_all()) == 5  # the four doubles and their sum; the barrier stops there
    assert coord.loaded is not None and coord.loaded.hit_barrier
    first_keys = list(coord.graph.keys)  # type: ignore[union-attr]
    store.remove([first_keys[1]])
    await coord._check_finished()  # confirms before reloading: 1 is computed again first
    assert coord.loads == 1 and coord.sched.vanished == 1  # type: ignore[union-attr]
    assert run_all() == [1]
    # now it is gone after the check, just before the reload reads the store
    import ajug.coordinator as coordinator_mod

    real_confirm = coordinator_mod.confirm_results

    async def confirm_then_lose(c: Any) -> bool:
        ok = await real_confirm(c)
        if ok:
            store.remove([first_keys[2]])
        return ok

    coordinator_mod.confirm_results = confirm_then_lose  # type: ignore[assignment]
    try:
        await coord._check_finished()
    finally:
        coordinator_mod.confirm_results = real_confirm
    assert coord.state == "loading" and coord._reload_task is not None
    await coord._reload_task  # the load past the barrier: a task of the coordinator's own
    assert coord.loads == 2 and coord.state == "running"  # reloaded: no StoreError
    sched = coord.sched
    assert sched is not None and sched.vanished == 2
    assert sched.state[coord.graph.index[first_keys[2]]] == READY  # type: ignore[union-attr]
    run_all()
    await coord._check_finished()
    assert coord.state == "finished" and coord.exit_status() == 0
    assert all(store.exists(coord.graph.keys))  # type: ignore[union-attr]
    await coord.close()


# -- with real processes ------------------------------------------------------------------------

STEPS_TOTAL = 3 * sum(range(40))


def stored_keys(store_url: str) -> list[str]:
    code = ("import json\nfrom ajug.stores import open_store\n"
            f"s = open_store({store_url!r})\nkeys = sorted(s.list())\n"
            "for k in keys: s.load(k)\nprint(json.dumps(keys))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(),
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def runs_by_task(runlog: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in runlog.read_text().split():
        counts[line] = counts.get(line, 0) + 1
    return counts


@pytest.mark.timeout(150)
@pytest.mark.redis
@pytest.mark.slow
def test_redis_restarted_without_persistence_mid_run(
        engine: Engine, tmp_path: Path, make_redis_server: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Its data is gone: what was done is computed again, the dependent gets every input, the
    run ends with every result in the store and the right total. In this process
    (tests/inproc.py): only redis-server is a process, restarted."""
    caplog.set_level(logging.INFO, logger="ajug")
    server = make_redis_server()  # no persistence: a restart loses everything
    jugfile = copy_jugfile(tmp_path, "steps.py")
    runlog = tmp_path / "runs.log"
    monkeypatch.setenv("AJUG_TEST_RUNLOG", str(runlog))
    coord = engine.make_coordinator(jugfile, server.url)
    workers = [engine.run_worker(coord.port) for _ in range(2)]
    wait_for(lambda: coord.status()["totals"]["done"] >= 15, 60, what="15 tasks done")
    server.restart(down_s=0.5)
    assert coord.wait(120) == 0
    for w in workers:
        assert w.wait(30) == 0
    assert "vanished from the store" in caplog.text
    assert coord.coord is not None
    st = coord.coord.status(False)  # what the end report prints ("41/41 done")
    assert (st["state"], st["tasks"], st["totals"]["done"]) == ("finished", 41, 41), st
    assert st["vanished"] >= 1 and st["recomputed"] >= 1, st
    assert len(stored_keys(server.url)) == 41
    assert values(jugfile, ["total"], server.url)["total"] == STEPS_TOTAL
    runs = runs_by_task(runlog)
    assert len(runs) == 41 and sum(runs.values()) > 41  # lost ones ran again


@pytest.mark.timeout(150)
def test_result_files_and_store_directory_deleted_mid_run(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The coordinator and two workers in this process (tests/inproc.py)."""
    caplog.set_level(logging.INFO, logger="ajug")
    jugfile = copy_jugfile(tmp_path, "steps.py")
    store = tmp_path / "steps.ajugdata"
    runlog = tmp_path / "runs.log"
    monkeypatch.setenv("AJUG_TEST_RUNLOG", str(runlog))
    coord = engine.make_coordinator(jugfile)
    workers = [engine.run_worker(coord.port) for _ in range(2)]
    wait_for(lambda: coord.status()["totals"]["done"] >= 10, 60, what="10 tasks done")
    results = [p for p in store.glob("??/*") if p.is_file()]
    for p in results[: len(results) // 2]:
        p.unlink()
    wait_for(lambda: coord.status()["totals"]["done"] >= 20, 60, what="20 tasks done")
    for _ in range(50):  # everything, the owner lock and tmp/ included (workers write meanwhile)
        shutil.rmtree(store, ignore_errors=True)
        if not store.exists():
            break
    assert coord.wait(120) == 0
    for w in workers:
        assert w.wait(30) == 0
    assert "vanished from the store" in caplog.text
    assert len(stored_keys(str(store))) == 41
    assert values(jugfile, ["total"])["total"] == STEPS_TOTAL
    assert sum(runs_by_task(runlog).values()) > 41
