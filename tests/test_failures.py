"""Failures you can read after the run: recorded in the store (every backend), shown by `ajug
status JUGFILE --failed` on any machine once the coordinator has exited, printed at the end of
`ajug run`/`ajug serve`, cleared when the task succeeds or is invalidated; tracebacks point at the
jugfile with its source lines, also on a worker whose machine has no copy of it."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from inproc import Engine
from procs import Procs, ajug_cmd, copy_jugfile, env, offline_status, read_log, status, wait_for
from store_helpers import hexkey

from ajug.failures import FailureRecords, clear_records
from ajug.stores.memory import MemoryStore

RAISE_LINE = 16  # of `raise ValueError(...)` in tests/jugfiles/taskraise.py
SOURCE = 'raise ValueError(f"bad value {x} (scale {scale})")'


def run(*args: str, cwd: Path, timeout: float = 90, **e: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ajug_cmd(*args), capture_output=True, text=True, env=env(**e), cwd=cwd,
                          timeout=timeout)


def record(i: int = 1, **over: Any) -> dict[str, Any]:
    r = {"func": "m.f", "kind": "exception", "type": "ValueError", "msg": f"bad {i}",
         "tb": f"Traceback (most recent call last):\n  ...\nValueError: bad {i}\n",
         "worker": "w0", "ts": 1700000000.5 + i, "attempts": 1}
    r.update(over)
    return r


# -- the store's part -------------------------------------------------------------------------
def test_failure_records_on_every_store(store: Any) -> None:
    assert store.failures() == {} and store.failure_keys() == []
    store.save_failure(hexkey(1), record(1))
    store.save_failure(hexkey(2), record(2))
    store.save_failure(hexkey(1), record(1, attempts=2, msg="again"))  # replaces
    assert sorted(store.failure_keys()) == sorted([hexkey(1), hexkey(2)])
    got = store.failures()
    assert got == {hexkey(1): record(1, attempts=2, msg="again"), hexkey(2): record(2)}
    assert store.failures([hexkey(2), hexkey(3)]) == {hexkey(2): record(2)}
    # records are not results: nothing lists, loads or counts them as one
    assert list(store.list()) == [] and store.exists([hexkey(1)]) == [False]
    assert store.clear_failures([hexkey(1), hexkey(3)]) == 1
    assert store.failures() == {hexkey(2): record(2)}
    assert store.clear_failures([hexkey(2)]) == 1 and store.failure_keys() == []


def test_file_store_writes_records_whole_beside_the_results(make_store: Any) -> None:
    s = make_store("file")
    s.save(hexkey(1), 42)
    s.save_failure(hexkey(2), record(2))
    root = Path(s.root)
    assert json.loads((root / "failures" / f"{hexkey(2)}.json").read_text()) == record(2)
    assert list(s.list()) == [hexkey(1)]  # the records' directory holds no results
    leftovers = [p for p in (root / "tmp").rglob("*") if p.is_file()]
    assert leftovers == []  # written to a temporary file, renamed into place
    (root / "failures" / f"{hexkey(3)}.json").write_text("{not json")  # damaged: ignored
    assert set(s.failures()) == {hexkey(2)}


def test_coordinator_side_records_and_clears_off_the_loop() -> None:
    """What the coordinator queues: a record per failure, cleared on success; at load, records
    of results that exist are out of date and go."""
    store = MemoryStore()
    store.save(hexkey(5), 1)
    store.save_failure(hexkey(5), record(5))  # done since: out of date
    store.save_failure(hexkey(6), record(6))  # still failed
    index = {hexkey(5): 0, hexkey(6): 1, hexkey(7): 2}
    recs = FailureRecords(store)

    async def scenario() -> None:
        recs.start(index, [True, False, False])
        assert recs.known == {hexkey(6)}
        recs.failed(hexkey(7), record(7))
        recs.succeeded(hexkey(6))
        recs.succeeded(hexkey(8))  # had no record: nothing to do
        recs.flush()
        await recs.close()

    asyncio.run(scenario())
    assert store.failures() == {hexkey(7): record(7)}
    assert clear_records(store, [hexkey(7), hexkey(9)]) == 1 and store.failures() == {}


# -- through real runs --------------------------------------------------------------------------
def tb_block(text: str) -> str:
    """The first traceback in ``text``: from its header to the exception's line."""
    lines = text[text.index("Traceback (most recent call last):"):].splitlines()
    end = next(i for i, ln in enumerate(lines) if ln.startswith("ValueError"))
    return "\n".join(lines[: end + 1])


def check_traceback(tb: str, jugfile: Path) -> None:
    """As Python prints it: the jugfile's path, the line, the source line; not ajug's frames."""
    assert f'File "{jugfile}", line {RAISE_LINE}, in simulate' in tb, tb
    assert SOURCE in tb, tb
    assert "<dynamic-code>" not in tb and "worker.py" not in tb, tb
    assert tb.rstrip().splitlines()[-1] == "ValueError: bad value 0 (scale 0)", tb


@pytest.mark.timeout(120)
def test_a_failed_task_is_readable_after_the_run_and_cleared_when_it_passes(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs in this process (tests/inproc.py); ``ajug status`` (a process) reads the store
    once the coordinator has exited. What ``ajug run`` prints of it: the next test."""
    jug = copy_jugfile(tmp_path, "taskraise.py")
    monkeypatch.chdir(tmp_path)
    # one worker: with two, one could do everything before the other connects, and the
    # coordinator, finished with nobody connected, would be gone when it tries
    coord = engine.make_coordinator(jug)
    workers = [engine.run_worker(coord.port, name="local0")]
    assert coord.wait(60) == 1
    for w in workers:
        assert w.wait(30) == 0

    # the coordinator has exited: the store tells, on this machine or any other
    st = offline_status(jug, "--failed")
    assert (st["totals"]["failed"], st["totals"]["blocked"], st["totals"]["done"]) == (1, 1, 3)
    (f,) = st["failures"]
    assert (f["func"], f["kind"], f["type"], f["attempts"]) == ("taskraise.simulate",
                                                                "exception", "ValueError", 1)
    assert f["msg"] == "bad value 0 (scale 0)" and f["worker"] == "local0"
    assert abs(f["ts"] - (tmp_path / "taskraise.ajugdata").stat().st_mtime) < 120
    check_traceback(f["tb"], jug)
    text = run("status", "taskraise.py", "--failed", cwd=tmp_path).stdout
    assert "taskraise.simulate" in text and "[exception] ValueError: bad value 0" in text
    check_traceback(tb_block(text), jug)

    # fixed: the task passes, its record goes
    monkeypatch.setenv("AJUG_TEST_FIXED", "1")
    coord = engine.make_coordinator(jug)
    workers = [engine.run_worker(coord.port)]
    assert coord.wait(60) == 0
    for w in workers:
        assert w.wait(30) == 0
    st = offline_status(jug, "--failed")
    assert st["failures"] == [] and st["totals"]["done"] == 5
    assert list((tmp_path / "taskraise.ajugdata" / "failures").iterdir()) == []


@pytest.mark.timeout(120)
def test_ajug_run_says_a_failure_once_and_prints_its_traceback_at_the_end(
        tmp_path: Path) -> None:
    """What ``ajug run`` prints (its subject: a process)."""
    jug = copy_jugfile(tmp_path, "taskraise.py")
    out = run("run", "taskraise.py", "-j", "2", "--no-progress", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    err = out.stderr
    # logged once (by the coordinator, not again by the worker), then the traceback at the end
    assert len(re.findall(r"failed: ValueError: bad value 0", err)) == 1, err
    assert err.count("Traceback (most recent call last)") == 1, err
    check_traceback(tb_block(err), jug)
    assert "ajug: [finished] 3/5 done (3 done, 1 failed, 1 blocked)" in err, err
    assert "ajug: results are in taskraise.ajugdata; read them with `ajug shell taskraise.py`" \
        in err, err
    (f,) = offline_status(jug, "--failed")["failures"]
    assert f["worker"] in ("local0", "local1")  # ajug run's workers, by name


@pytest.mark.timeout(120)
def test_the_end_of_a_run_shows_a_few_tracebacks_then_the_command_for_the_rest(
        tmp_path: Path) -> None:
    sub = tmp_path / "proj"
    sub.mkdir()
    copy_jugfile(sub, "taskraise.py")
    out = run("run", "proj/taskraise.py", "-j", "2", "--no-progress", cwd=tmp_path,
              AJUG_TEST_FAILING="5")
    assert out.returncode == 1, out.stderr
    err = out.stderr
    assert err.count("Traceback (most recent call last)") == 3, err
    assert err.count("ajug: task taskraise.simulate ") == 3, err
    # the real file name, as typed: the command can be pasted
    assert "ajug: ... and 2 more failed task(s); `ajug status proj/taskraise.py --failed` shows " \
           "them all" in err, err
    listed = run("status", "proj/taskraise.py", "--failed", "--json", cwd=tmp_path,
                 AJUG_TEST_FAILING="5")
    assert len(json.loads(listed.stdout)["failures"]) == 5


@pytest.mark.timeout(120)
def test_traceback_from_a_worker_without_the_jugfile(procs: Procs, tmp_path: Path) -> None:
    """A worker on another machine: the coordinator's directory is not there (the jugfile is
    moved away once the coordinator has loaded it). The frame still names the jugfile, with
    its source line, and the serve's end report prints it."""
    jug = copy_jugfile(tmp_path, "taskraise.py")
    coord, port = procs.serve(jug)
    hidden = tmp_path / "elsewhere"
    hidden.mkdir()
    shutil.move(str(jug), hidden / "taskraise.py")
    w = procs.work(port, cwd=hidden)
    assert w.wait(60) == 0, read_log(w)
    assert coord.wait(30) == 1, read_log(coord)
    check_traceback(tb_block(read_log(coord)), jug)
    shutil.move(str(hidden / "taskraise.py"), jug)
    (f,) = offline_status(jug, "--failed")["failures"]
    check_traceback(f["tb"], jug)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_task_that_kills_its_workers_is_recorded(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "faulty.py")
    e = {"AJUG_TEST_KILLERS": "1", "AJUG_TEST_MARKS": str(tmp_path)}
    out = run("run", "faulty.py", "-j", "1", "--prefetch", "0", "--no-progress",
              "--max-attempts", "2", cwd=tmp_path, **e)
    assert out.returncode == 1, out.stderr
    st = subprocess.run(ajug_cmd("status", "faulty.py", "--json"), capture_output=True,
                        text=True, env=env(**e), cwd=tmp_path, timeout=60)
    fails = json.loads(st.stdout)["failures"]
    kinds = {f["func"]: f["kind"] for f in fails}
    assert kinds == {"faulty.exits": "worker-lost", "faulty.segfault": "worker-lost",
                     "faulty.raises": "exception", "faulty.flaky": "exception"}, fails
    (lost,) = [f for f in fails if f["func"] == "faulty.exits"]
    assert "suspected of killing workers" in lost["msg"] and lost["attempts"] == 2


@pytest.mark.timeout(120)
def test_invalidate_clears_failure_records(engine: Engine, tmp_path: Path) -> None:
    """The run in this process (tests/inproc.py); ``ajug invalidate`` is a process."""
    jug = copy_jugfile(tmp_path, "taskraise.py")
    coord = engine.make_coordinator(jug)
    worker = engine.run_worker(coord.port)
    assert coord.wait(60) == 1
    assert worker.wait(30) == 0
    records = tmp_path / "taskraise.ajugdata" / "failures"
    assert len(list(records.iterdir())) == 1
    out = run("invalidate", "taskraise.py", "--target", "simulate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert list(records.iterdir()) == []
    st = offline_status(jug)
    assert st["failures"] == [] and st["totals"]["failed"] == 0


FAIL_FAST = """
import os, time
from ajug import TaskGenerator

RAN = os.environ.get("AJUG_TEST_RAN", os.devnull)
GATE = os.environ.get("AJUG_TEST_GATE")

@TaskGenerator
def step(i):
    with open(RAN, "a") as f:
        f.write(f"{i}\\n")
    if i == 0:
        deadline = time.monotonic() + 30
        while GATE and not os.path.exists(GATE) and time.monotonic() < deadline:
            time.sleep(0.02)
        raise ValueError("the first one fails")
    time.sleep(0.5)
    return i

steps = [step(i) for i in range(40)]
"""


@pytest.mark.parametrize("how", ["run", "serve"])
def test_fail_fast_stops_the_run_and_its_workers_at_the_first_failure(
        how: str, procs: Procs, tmp_path: Path) -> None:
    """``--fail-fast``: the first failure ends the run with exit status 1 and its traceback;
    nothing more is handed out (40 tasks of 0.5 s on 2 workers: a few ran, not all), and a
    worker of ``ajug serve`` hears that the run is over and exits 0 at once, rather than
    try to reconnect until its --connect-timeout and exit 2."""
    jugfile = tmp_path / "failfast.py"
    jugfile.write_text(FAIL_FAST)
    ran = tmp_path / "ran.txt"
    e = env(AJUG_TEST_RAN=str(ran))
    if how == "run":
        p = procs.start(["run", str(jugfile), "-j", "2", "--fail-fast", "--no-progress"], "run",
                        env=e)
        assert p.wait(60) == 1, read_log(p)[-2000:]
        log = read_log(p)
    else:
        gate = tmp_path / "gate"
        e = env(AJUG_TEST_RAN=str(ran), AJUG_TEST_GATE=str(gate))
        coord, port = procs.serve(jugfile, "--fail-fast", env=e)
        workers = [procs.work(port, "--prefetch", "0", "--connect-timeout", "60", env=e)
                   for _ in range(2)]
        # the failure once both are connected (a worker that comes after the coordinator
        # has gone cannot hear anything)
        wait_for(lambda: len(status(port)["workers"]) == 2, 30, what="both workers")
        gate.write_text("")
        assert coord.wait(60) == 1, read_log(coord)[-2000:]
        for w in workers:  # well within the connect timeout
            try:
                rc = w.wait(15)
            except subprocess.TimeoutExpired:
                rc = None
            assert rc == 0, read_log(w)[-2000:]
        log = read_log(coord)
    assert "stopping at the first failure" in log and "the first one fails" in log
    runs = ran.read_text().split()
    assert "0" in runs and len(runs) < 20, runs
    st = offline_status(jugfile)
    assert st["totals"]["failed"] == 1 and st["totals"]["done"] < 20
