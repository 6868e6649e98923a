"""Whatever dies — a worker, the coordinator, redis, the disk — the run completes, correctly,
and nothing that reached the store is computed again. Real processes where something is
killed or frozen; the rest in this process (tests/inproc.py)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from inproc import Engine
from procs import (
    Procs,
    ajug_cmd,
    copy_jugfile,
    env,
    executions,
    overlapping,
    read_log,
    run_records,
    stamps,
    status,
    values,
    wait_for,
)

HERE = Path(__file__).parent


@pytest.mark.timeout(120)
def test_task_exceptions_retries_and_blocked_dependents(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (tests/inproc.py), and what ``ajug status --failed`` shows of it live
    (asked over the protocol, rendered as the command does)."""
    jugfile = copy_jugfile(tmp_path, "faulty.py")
    monkeypatch.setenv("AJUG_TEST_MARKS", str(tmp_path))
    coord = engine.make_coordinator(jugfile, retries=1, stay=True)
    engine.run_worker(coord.port)
    st = wait_for(lambda: (s := coord.status())["totals"]["ready"] == 0
                  and s["totals"]["running"] == 0 and s["totals"]["done"] >= 11 and s, 60,
                  what="the graph to settle")
    tot = st["totals"]
    assert (tot["done"], tot["failed"], tot["blocked"]) == (11, 1, 2)
    (fail,) = st["failures"]
    assert fail["func"] == "faulty.raises" and fail["type"] == "ValueError"
    assert fail["kind"] == "exception" and fail["attempts"] == 2  # first try + one retry
    assert (tmp_path / "flaky.attempts").read_text() == "2"  # failed once, retried, passed
    text = coord.status_text(failed=True)  # `ajug status 127.0.0.1:PORT --failed`
    assert "Traceback" in text and "ValueError: bad input 1" in text, text
    fn = {f["name"]: f for f in st["functions"]}
    assert fn["faulty.after"]["blocked"] == 2
    coord.stop()
    assert coord.wait(30) == 1  # stopped with a failure: non-zero


@pytest.mark.timeout(150)
def test_task_that_kills_its_worker_is_failed_and_the_rest_finishes(tmp_path: Path) -> None:
    jugfile = copy_jugfile(tmp_path, "faulty.py")
    e = env(AJUG_TEST_MARKS=str(tmp_path), AJUG_TEST_KILLERS="1")
    out = subprocess.run(ajug_cmd("run", str(jugfile), "-j", "2", "--retries", "1",
                                  "--max-attempts", "2"),
                         env=e, capture_output=True, text=True, timeout=140)
    assert out.returncode == 1, out.stderr
    assert "suspected of killing workers" in out.stderr
    assert "faulty.exits" in out.stderr and "faulty.segfault" in out.stderr
    assert "Traceback" not in out.stderr.split("ajug: [finished]")[-1]
    got = values(jugfile, ["oks", "retried"], AJUG_TEST_MARKS=str(tmp_path))
    assert got == {"oks": list(range(1, 11)), "retried": 40}


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_coordinator_killed_and_restarted(procs: Procs, tmp_path: Path, free_tcp_port: int) -> None:
    jugfile = copy_jugfile(tmp_path, "steps.py")
    store = str(tmp_path / "steps.ajugdata")
    e = env(AJUG_TEST_N="10", AJUG_TEST_STEP_S="3")  # tasks outlive the coordinator's downtime
    coord, port = procs.serve(jugfile, port=free_tcp_port, env=e)
    workers = [procs.work(port, "--connect-timeout", "60", "--prefetch", "0", env=e)
               for _ in range(2)]
    wait_for(lambda: status(port)["totals"]["done"] >= 2, 60, what="2 tasks done")
    coord.kill()
    coord.wait(10)
    before = stamps(store)
    assert len(before) >= 2
    time.sleep(1.0)  # workers notice and start reconnecting
    coord2, port2 = procs.serve(jugfile, port=free_tcp_port, env=e)
    assert port2 == port
    assert coord2.wait(90) == 0, read_log(coord2)
    for w in workers:
        assert w.wait(30) == 0, read_log(w)
    after = stamps(store)
    assert len(after) == 11
    recomputed = [k for k, ts in before.items() if after[k] != ts]
    assert recomputed == [], f"{len(recomputed)} stored tasks were computed again"
    logs = "".join(read_log(w) for w in workers)
    assert "lost the coordinator" in logs
    assert "kept" in logs  # tasks in hand across the restart were kept, not handed out again
    assert values(jugfile, ["total"], AJUG_TEST_N="10", AJUG_TEST_STEP_S="3")["total"] == 3 * sum(
        range(10))


@pytest.mark.timeout(90)
def test_second_coordinator_on_a_store_is_refused(procs: Procs, tmp_path: Path) -> None:
    jugfile = copy_jugfile(tmp_path, "steps.py")
    first, _ = procs.serve(jugfile, "--stay")
    second = subprocess.run(ajug_cmd("serve", str(jugfile), "--port", "0"), env=env(),
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    msg = second.stderr.strip().splitlines()[-1]
    assert "another coordinator" in msg and str(first.pid) in msg, msg
    assert "Traceback" not in second.stderr
    first.kill()
    first.wait(10)
    # the first one died: its lock goes (same host, dead pid), and a new one may start
    third, _ = procs.serve(jugfile, "--stay")
    assert third.poll() is None


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_frozen_worker_resumes_late_result_counted_once(procs: Procs, tmp_path: Path) -> None:
    """A worker frozen past its lease's TTL finishes its task once woken: the result is
    accepted once, and a second execution elsewhere (if the task was re-leased meanwhile)
    shows as exactly one duplicate, never as a second completion."""
    jugfile = copy_jugfile(tmp_path, "slow.py")
    ran = tmp_path / "ran.txt"
    e = env(AJUG_TEST_SLOW_S="3", AJUG_TEST_RAN=str(ran))
    coord, port = procs.serve(jugfile, "--lease-ttl", "1.5", "--stay", env=e)
    w1 = procs.work(port, "--prefetch", "0", env=e)
    wait_for(lambda: status(port)["totals"]["running"] == 1, 30, what="a running task")
    os.kill(w1.pid, signal.SIGSTOP)
    try:
        w2 = procs.work(port, "--prefetch", "0", env=e)
        wait_for(lambda: status(port)["reclaimed"] >= 1, 30, what="the lease to be reclaimed")
        time.sleep(1.0)
    finally:
        os.kill(w1.pid, signal.SIGCONT)

    def settled() -> dict[str, Any] | None:
        st = status(port)
        runs = ran.read_text().split() if ran.exists() else []
        extra = len(runs) // 2 - 3  # executions of the three squares beyond one each
        return st if st["totals"]["done"] == 4 and st["duplicates"] == extra else None

    st = wait_for(settled, 60, what="every task done, each extra execution one duplicate")
    assert st["reclaimed"] >= 1
    runs = ran.read_text().split()
    assert len(runs) // 2 in (3, 4), runs  # the frozen task ran here, perhaps also elsewhere
    assert values(jugfile, ["total"], AJUG_TEST_SLOW_S="3")["total"] == 5
    coord.terminate()  # --stay: stopped by hand; idle workers are told the run is over
    assert coord.wait(30) == 0, read_log(coord)
    assert w1.wait(30) == 0, read_log(w1)
    assert w2.wait(30) == 0, read_log(w2)


def test_worker_drops_lost_leases_from_its_queue_and_inbox() -> None:
    """What the network thread does with a ``lost`` list (renewed or resumed), and the main
    thread's check before it starts a lease: in process, no socket."""
    from ajug.protocol import messages as m
    from ajug.stores.memory import MemoryStore
    from ajug.worker import Lease, ResultCache, SaveBatch, Worker, WorkerOptions

    w = Worker(WorkerOptions(host="127.0.0.1", port=1))
    batch = SaveBatch(MemoryStore(), ResultCache(), w._post, w._save_failed)
    try:
        now = time.monotonic()
        a, b, c = (Lease(k * 40, n, 0, b"", b"", "m.f", "") for n, k in enumerate("abc"))
        for lz in (a, b, c):
            lz.valid_until = now + 30
            w.session.queued[lz.key] = lz
        w.leases.put(a, b)  # c: taken by the main thread already
        w.session.on_reconnect(now, resume=False)
        w.session.renew_soon()
        renew = w.session.due_messages(now)[0]
        w._apply(w.session.on_reply(m.renewed(renew["id"], [b.key, c.key, "d" * 40]), now))
        assert (a.lost, b.lost, c.lost) == (False, True, True)
        assert list(w.session.queued) == [a.key] and list(w.leases.items) == [a]
        assert w._may_start(c, batch) is False  # never started, though already taken
        assert w._may_start(a, batch) is True
        w.finished.set()  # past its validity with no coordinator to confirm it: not started
        a.valid_until = now - 1
        assert w._may_start(a, batch) is False
    finally:
        batch.close()


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_frozen_worker_never_starts_a_lease_it_was_told_is_lost(procs: Procs,
                                                                 tmp_path: Path) -> None:
    """W1 holds a running task and a queued one; frozen past the TTL, both go to W2. Woken up
    while W2 runs the queued one, W1 finishes its running task (a late result) and drops the
    queued one: it never runs twice at once."""
    jugfile = copy_jugfile(tmp_path, "recorded.py")
    runlog = tmp_path / "runs.jsonl"
    extra = {"AJUG_TEST_N": "3", "AJUG_TEST_TASK_S": "3"}
    e = env(AJUG_TEST_RUNLOG=str(runlog), **extra)
    coord, port = procs.serve(jugfile, "--lease-ttl", "1.5", env=e)
    w1 = procs.work(port, "--prefetch", "1", env=e)  # one running, one queued

    def started(pid: int) -> list[dict[str, Any]]:
        return [r for r in run_records(runlog) if r["pid"] == pid and "end" not in r]

    first = wait_for(lambda: started(w1.pid), 30, what="W1 to start a task")[0]
    w2 = procs.work(port, "--prefetch", "0", env=e)
    # freeze W1 shortly before its running task ends: woken, it would go straight on to the
    # queued one
    time.sleep(max(0.0, first["start"] + 3 - 0.5 - time.time()))
    os.kill(w1.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: status(port)["reclaimed"] >= 2, 30, what="W1's leases reclaimed")
        # W2, its own first task done, runs the one W1 had queued
        wait_for(lambda: len({r["task"] for r in started(w2.pid)} - {first["task"]}) >= 2, 30,
                 what="W2 to start the task W1 had queued")
    finally:
        os.kill(w1.pid, signal.SIGCONT)
    assert coord.wait(60) == 0, read_log(coord)[-3000:]
    assert w2.wait(30) == 0, read_log(w2)[-2000:]
    # only the task W1 was running when frozen may have run twice at once (a late result)
    runs = executions(runlog)
    assert [(a["task"], b["task"]) for a, b in overlapping(runs)
            if a["task"] != first["task"]] == []
    assert w1.wait(30) == 0, read_log(w1)[-2000:]
    # W1 never started the task it had queued: it ran only the one it was running when frozen
    assert {r["task"] for r in run_records(runlog) if r["pid"] == w1.pid} == {first["task"]}
    # (it dropped it from its queue when told, or refused to start it: either says so)
    assert re.search(r"1 queued ones dropped|not started: its lease was reclaimed", read_log(w1))
    assert values(jugfile, ["total"], **extra)["total"] == 0 + 1 + 4


@pytest.mark.timeout(150)
@pytest.mark.redis
@pytest.mark.slow
def test_redis_restarted_mid_run(engine: Engine, tmp_path: Path, make_redis_server: Any) -> None:
    """In this process (tests/inproc.py): only redis-server is a process, restarted."""
    server = make_redis_server("--appendonly", "yes", "--appendfsync", "always")
    jugfile = copy_jugfile(tmp_path, "steps.py")
    coord = engine.make_coordinator(jugfile, server.url)
    workers = [engine.run_worker(coord.port) for _ in range(2)]
    wait_for(lambda: coord.status()["totals"]["done"] >= 8, 60, what="8 tasks done")
    server.restart(down_s=2.0)
    assert coord.wait(120) == 0
    for w in workers:
        assert w.wait(30) == 0
    assert values(jugfile, ["total"], server.url)["total"] == 3 * sum(range(40))


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.timeout(120)
def test_full_disk_fails_tasks_cleanly_and_resumes(engine: Engine, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """In this process (tests/inproc.py): results fill a real small disk (a tmpfs)."""
    caplog.set_level(logging.INFO, logger="ajug")
    data = tmp_path / "disk"
    if not _mount_tmpfs(data, "12m"):
        pytest.skip("cannot mount a tmpfs here (needs root) to fill a disk")
    try:
        jugfile = tmp_path / "big.py"
        jugfile.write_text(
            "from ajug import TaskGenerator\n"
            "@TaskGenerator\n"
            "def blob(i):\n"
            "    import os\n"
            "    return os.urandom(1024 * 1024)\n"
            "@TaskGenerator\n"
            "def sizes(bs):\n"
            "    return [len(b) for b in bs]\n"
            "blobs = [blob(i) for i in range(8)]\n"
            "total = sizes(blobs)\n"
        )
        store = str(data / "store")
        filler = data / "filler"
        filler.write_bytes(b"\0" * (8 * 1024 * 1024))  # leaves room for ~3 results of 8
        coord = engine.make_coordinator(jugfile, store)
        workers = [engine.run_worker(coord.port)]  # one: see test_engine's primes test
        assert coord.wait(90) == 1
        for w in workers:
            assert w.wait(30) == 0
        assert coord.coord is not None
        st = coord.coord.status(True)
        assert st["failures"], st
        assert all(f["kind"] == "store" and "store is full" in f["msg"]
                   for f in st["failures"]), st["failures"]
        assert "store is full" in caplog.text
        tmpdir = Path(store) / "tmp"
        assert not tmpdir.exists() or [p for p in tmpdir.rglob("*") if p.is_file()] == []
        stored = stamps(store)
        assert 0 < len(stored) < 9
        filler.unlink()  # space is freed: the run resumes and completes
        coord = engine.make_coordinator(jugfile, store)
        workers = [engine.run_worker(coord.port)]  # one: see test_engine's primes test
        assert coord.wait(90) == 0
        for w in workers:
            assert w.wait(30) == 0
        after = stamps(store)
        assert all(after[k] == ts for k, ts in stored.items())  # nothing stored was redone
        assert values(jugfile, ["total"], store)["total"] == [1024 * 1024] * 8
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


@pytest.mark.timeout(150)
def test_worker_killed_while_writing_a_result(procs: Procs, tmp_path: Path) -> None:
    """The result is half written when the worker dies: nothing is visible under its key, the
    task runs elsewhere, and what is finally loaded is whole."""
    jugfile = copy_jugfile(tmp_path, "bigsave.py")
    store = tmp_path / "bigsave.ajugdata"
    coord, port = procs.serve(jugfile)
    w1 = procs.work(port, "--prefetch", "0")
    tmpdir = store / "tmp"
    killed_mid_write = False
    deadline = time.monotonic() + 60
    last = 0
    while time.monotonic() < deadline and w1.poll() is None:
        sizes = [p.stat().st_size for p in tmpdir.rglob("*.tmp")] if tmpdir.exists() else []
        if sizes and sizes[0] > last > 0:  # the temp file is growing: the worker is writing
            w1.kill()
            killed_mid_write = True
            break
        last = max(sizes or [last])
        time.sleep(0.002)
    w1.wait(10)
    if not killed_mid_write:
        pytest.skip("the write finished before the worker could be killed (a very fast disk)")
    # nothing under the key, only a temp file of a dead writer
    assert stamps(str(store)) == {}
    w2 = procs.work(port, "--prefetch", "0")
    assert coord.wait(120) == 0, read_log(coord)
    assert w2.wait(30) == 0
    assert values(jugfile, ["result"])["result"] == [300 * 1024 * 1024, 7, 7]
    assert "back to ready" in read_log(coord)


GATED = """
import os, time
from ajug import TaskGenerator

HERE = os.path.dirname(os.path.abspath(__file__))

@TaskGenerator
def first(x):
    return x + 1

@TaskGenerator
def last(y):
    open(os.path.join(HERE, "last-started"), "w").close()
    while not os.path.exists(os.path.join(HERE, "gate")):
        time.sleep(0.02)
    return 2 * y

out = last(first(1))
"""


@pytest.mark.timeout(120)
def test_workers_hear_finished_from_a_restart_that_finds_everything_done(
        procs: Procs, tmp_path: Path) -> None:
    """The coordinator dies while the last task runs; its worker stores the result and keeps
    reconnecting. The restarted coordinator finds every result done: it waits for the
    previous one's workers to reconnect (the resume grace) and tells them the run is over,
    instead of exiting at once and leaving them to fail after --connect-timeout (exit 2)."""
    jugfile = tmp_path / "gated.py"
    jugfile.write_text(GATED)
    coord, port = procs.serve(jugfile)
    w = procs.work(port, "--connect-timeout", "60")
    wait_for(lambda: (tmp_path / "last-started").exists(), 30, what="the last task to start")
    os.kill(coord.pid, signal.SIGKILL)
    coord.wait(10)
    (tmp_path / "gate").touch()  # the last task ends: its result is stored, its report lost
    wait_for(lambda: "lost the coordinator" in read_log(w), 30, what="the worker to notice")
    again, _ = procs.serve(jugfile, port=port)
    assert again.wait(60) == 0, read_log(again)
    t0 = time.monotonic()
    assert w.wait(30) == 0, read_log(w)[-2000:]
    assert time.monotonic() - t0 < 20
    assert "the coordinator says all is done" in read_log(w)
    assert values(jugfile, ["out"])["out"] == 4
