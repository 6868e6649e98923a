"""`ajug run` forks its first workers before the coordinator starts (Linux); restarts spawn.

Real processes throughout: each task reports the process that ran it (pid, parent, and whether
it was a fresh `ajug work` interpreter or a fork of `ajug run`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import Procs, ajug_cmd, children, env, read_log, values, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is Linux-only")

JUGFILE = '''\
"""Tasks that say which process ran them."""
import os
import sys
import time
from pathlib import Path

from ajug import TaskGenerator

N = int(os.environ.get("AJUG_TEST_N", "8"))
STEP_S = float(os.environ.get("AJUG_TEST_STEP_S", "0.05"))
MARKS = Path(os.environ.get("AJUG_TEST_MARKS", "."))
time.sleep(float(os.environ.get("AJUG_TEST_LOAD_S", "0")))  # a slow jugfile to load


@TaskGenerator
def who(i, seconds):
    (MARKS / f"running.{os.getpid()}").write_text(str(i))
    time.sleep(seconds)
    return {"pid": os.getpid(), "ppid": os.getppid(), "spawned": "work" in sys.argv,
            "token": os.environ.get("AJUG_TOKEN", "")}


ran = [who(i, STEP_S) for i in range(N)]
'''


def setup(tmp_path: Path, n: int, step_s: float) -> tuple[Path, dict[str, str], Path]:
    jugfile = tmp_path / "who.py"
    jugfile.write_text(JUGFILE)
    marks = tmp_path / "marks"
    marks.mkdir()
    e = env(AJUG_TEST_N=str(n), AJUG_TEST_STEP_S=str(step_s), AJUG_TEST_MARKS=str(marks))
    return jugfile, e, marks


def ran(jugfile: Path, e: dict[str, str]) -> list[dict[str, object]]:
    return values(jugfile, ["ran"], AJUG_TEST_N=e["AJUG_TEST_N"],
                  AJUG_TEST_STEP_S=e["AJUG_TEST_STEP_S"])["ran"]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def left_over(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still there, as a process or as a zombie nobody reaped."""
    return [p for p in pids if Path(f"/proc/{p}").exists()]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_run_starts_its_workers_by_fork_or_spawn(start: str, procs: Procs, tmp_path: Path) -> None:
    jugfile, e, _ = setup(tmp_path, 8, 0.05)
    e["AJUG_WORKER_START"] = start
    run = procs.start(["-v", "run", str(jugfile), "-j", "2", "--no-progress"], "run", env=e)
    assert run.wait(60) == 0, read_log(run)
    log = read_log(run)
    assert ("started 2 local workers by fork" in log) == (start == "fork"), log
    got = ran(jugfile, e)
    assert len(got) == 8
    assert {r["ppid"] for r in got} == {run.pid}  # the run's own children ran every task
    assert 1 <= len({r["pid"] for r in got}) <= 2 and run.pid not in {r["pid"] for r in got}
    # a forked worker is `ajug run` itself (its argv), a spawned one is `ajug work`
    assert {r["spawned"] for r in got} == {start == "spawn"}


@pytest.mark.timeout(90)
def test_forked_workers_have_the_token_in_memory_only(procs: Procs, tmp_path: Path) -> None:
    """The token `ajug run` makes up reaches the forked workers in their memory: not in the
    process list, not in /proc/PID/environ, not even in the tasks' os.environ."""
    jugfile, e, marks = setup(tmp_path, 2, 1.0)
    del e["AJUG_TOKEN"]
    run = procs.start(["-vv", "run", str(jugfile), "-j", "2", "--prefetch", "0", "--no-progress"],
                      "run", env=e)
    wait_for(lambda: len(list(marks.iterdir())) == 2, 60, 0.02, what="both workers busy")
    pids = [run.pid, *children(run.pid)]
    seen = [Path(f"/proc/{p}/{f}").read_bytes() for p in pids for f in ("cmdline", "environ")]
    assert run.wait(60) == 0, read_log(run)
    assert {r["token"] for r in ran(jugfile, e)} == {""}
    assert len(pids) == 3 and not any(b"AJUG_TOKEN" in b for b in seen)


@pytest.mark.timeout(90)
def test_forked_worker_killed_is_replaced_by_a_spawned_one(procs: Procs, tmp_path: Path) -> None:
    jugfile, e, marks = setup(tmp_path, 6, 1.5)
    run = procs.start(["-v", "run", str(jugfile), "-j", "2", "--prefetch", "0", "--no-progress"],
                      "run", env=e)
    victim = wait_for(lambda: next((int(p.name.split(".")[1]) for p in marks.iterdir()), None),
                      60, 0.02, what="a task running")
    assert victim in children(run.pid) and "run" in cmdline(victim), cmdline(victim)
    os.kill(victim, signal.SIGKILL)
    assert run.wait(60) == 0, read_log(run)
    log = read_log(run)
    assert f"worker pid {victim} died (SIGKILL" in log and "starting another" in log, log
    got = ran(jugfile, e)  # every result is there
    assert len(got) == 6 and victim not in {r["pid"] for r in got}
    assert {r["ppid"] for r in got} == {run.pid}


@pytest.mark.timeout(90)
def test_nothing_to_do_the_forked_workers_exit_quietly(procs: Procs, tmp_path: Path) -> None:
    jugfile, e, _ = setup(tmp_path, 4, 0.01)
    first = procs.start(["run", str(jugfile), "-j", "2", "--no-progress"], "first", env=e)
    assert first.wait(60) == 0, read_log(first)
    e["AJUG_TEST_LOAD_S"] = "1.5"  # the children are there, waiting, while the jugfile loads
    run = procs.start(["-v", "run", str(jugfile), "-j", "2", "--no-progress"], "run", env=e)
    kids = wait_for(lambda: len(k := children(run.pid)) == 2 and k, 30, 0.02,
                    what="two forked workers")
    assert all("run" in cmdline(k) for k in kids)
    assert run.wait(60) == 0, read_log(run)
    log = read_log(run)
    assert "started 2 local workers by fork" in log, log
    assert "nothing to do: 4 results already in who.ajugdata" in log, log
    assert "connected" not in log and "Traceback" not in log, log  # they never got a port
    assert left_over(kids) == []  # exited and reaped by the run, no zombie left


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_sigint_stops_the_run_and_its_workers(start: str, procs: Procs, tmp_path: Path) -> None:
    jugfile, e, marks = setup(tmp_path, 40, 2.0)
    e["AJUG_WORKER_START"] = start
    run = procs.start(["run", str(jugfile), "-j", "2", "--prefetch", "0", "--no-progress"],
                      "run", env=e)
    wait_for(lambda: len(list(marks.iterdir())) == 2, 60, 0.02, what="both workers busy")
    kids = children(run.pid)
    assert len(kids) == 2
    os.kill(run.pid, signal.SIGINT)  # to the main process alone, not to its process group
    t0 = time.monotonic()
    assert run.wait(30) == 130, read_log(run)  # interrupted (1 would say that a task failed)
    # the workers are told to stop too (not left retrying a coordinator that is gone)
    assert time.monotonic() - t0 < 8, read_log(run)
    assert left_over(kids) == []
    log = read_log(run)
    assert "Traceback" not in log
    assert "ajug: interrupted" in log.splitlines(), log
    # stopped before the coordinator closed their connections: none of them thinks it lost it
    assert "lost the coordinator" not in log and "reconnect" not in log, log


@pytest.mark.timeout(90)
def test_ctrl_c_while_the_jugfile_loads(procs: Procs, tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group: the forked children, waiting for
    the port, leave without a word; the run says it was interrupted, once."""
    jugfile, e, _ = setup(tmp_path, 4, 0.01)
    e["AJUG_TEST_LOAD_S"] = "3"
    run = procs.start(["run", str(jugfile), "-j", "2", "--no-progress"], "run", env=e,
                      start_new_session=True)
    kids = wait_for(lambda: len(k := children(run.pid)) == 2 and k, 30, 0.02,
                    what="two forked workers")
    time.sleep(0.3)  # the load has started
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(30) == 130, read_log(run)
    log = read_log(run)
    assert log.count("ajug: interrupted") == 1 and "Traceback" not in log, log
    assert left_over(kids) == []


@pytest.mark.timeout(30)
def test_unknown_worker_start_is_a_usage_error(tmp_path: Path) -> None:
    jugfile, e, _ = setup(tmp_path, 1, 0.0)
    e["AJUG_WORKER_START"] = "thread"
    out = subprocess.run(ajug_cmd("run", str(jugfile), "-j", "1", "--no-progress"), env=e,
                         capture_output=True, text=True, timeout=25)
    assert out.returncode == 2, out.stderr
    assert "AJUG_WORKER_START" in out.stderr and "Traceback" not in out.stderr
