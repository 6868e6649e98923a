"""Dead workers are replaced at a rate, with backoff, for as long as the run goes on; a run
with no worker left says why and exits; and a task is blamed only for deaths it caused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from procs import Procs, ajug_cmd, children, copy_jugfile, env, read_log, status, values, wait_for
from test_leases import sched_for

from ajug.scheduler import FAILED, READY, WAITING
from ajug.supervisor import RestartPolicy, RunWatch, Workers, classify

# -- decisions --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_deaths_at_a_steady_rate_are_replaced_for_ever() -> None:
    clock = Clock()
    policy = RestartPolicy(jobs=2, clock=clock)
    for _ in range(1000):  # 0.5 deaths a second per job, for 1000 s: far past any budget
        clock.t += 1.0
        assert policy.died(-9) == 0.0
    assert policy.restarts == 1000


def test_fast_deaths_back_off_and_the_wait_shrinks_when_they_stop() -> None:
    clock = Clock()
    policy = RestartPolicy(jobs=1, clock=clock, free_per_job=5, first_delay_s=0.5,
                           max_delay_s=4.0)
    waits = []
    for _ in range(12):  # a crash loop: 10 deaths a second
        clock.t += 0.1
        waits.append(policy.died(1))
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    clock.t += 60  # calm again
    assert policy.died(1) == 0.0
    assert policy.died(0) is None and policy.died(2) is None  # all done; an ajug error


@pytest.mark.parametrize("status, cause", [
    (3, "task"), (-signal.SIGSEGV, "task"), (-signal.SIGABRT, "task"),
    (-signal.SIGTERM, "outside"), (-signal.SIGINT, "outside"),
])
def test_how_a_worker_died(status: int, cause: str) -> None:
    assert classify(7, status, 0, 0).cause == cause


def test_sigkill_is_the_oom_killer_only_if_its_count_went_up() -> None:
    assert classify(7, -9, 4, 5).cause == "task"
    assert "OOM" in classify(7, -9, 4, 5).detail
    assert classify(7, -9, 4, 4).cause == "outside"
    assert classify(7, -9, None, None).cause == "unknown"  # no cgroup to ask: counted


def test_outside_kill_is_not_held_against_the_task_whichever_comes_first() -> None:
    s, _ = sched_for([[], [0]], max_attempts=2)
    for n, first in enumerate(("report", "disconnect", "report", "disconnect")):
        wid, pid = f"k{n}", 100 + n
        s.add_worker(wid, "h", pid)
        (i, _), = s.lease(wid, 1)
        assert i == 0
        if first == "report":
            s.worker_exited("h", pid, "outside", "SIGKILL from outside")
            s.remove_worker(wid)
        else:
            s.remove_worker(wid)
            assert s.worker_exited("h", pid, "outside", "SIGKILL from outside") == [0]
        assert s.state[0] == READY and 0 not in s.lost_count
    assert s.loss_notes[0] == ["SIGKILL from outside (not counted)"] * 4
    assert s.reclaimed == 4


def test_a_task_failed_for_a_kill_from_outside_runs_again() -> None:
    """The connection closes first (the task is failed as a suspect at its last attempt, its
    dependent blocked); the supervisor's report comes after: all of it is undone."""
    s, _ = sched_for([[], [0]], max_attempts=1)
    s.add_worker("k", "h", 5)
    s.lease("k", 1)
    s.remove_worker("k")
    assert s.state[0] == FAILED and s.state[1] == 2 + 3  # BLOCKED
    s.worker_exited("h", 5, "outside", "SIGTERM from outside")
    assert s.state[0] == READY and s.state[1] == WAITING and s.failures == {}


def test_the_failure_record_says_how_the_task_lost_its_workers() -> None:
    s, _ = sched_for([[]], max_attempts=2)
    for n, (cause, detail) in enumerate([("task", "exit status 3 (the worker exited by itself)"),
                                         ("outside", "SIGTERM from outside"),
                                         ("task", "SIGSEGV (raised by the worker itself)")]):
        s.add_worker(f"k{n}", "h", n)
        s.lease(f"k{n}", 1)
        s.remove_worker(f"k{n}")
        s.worker_exited("h", n, cause, detail)
    f = s.failures[0]
    assert f.kind == "worker-lost" and f.attempts == 2
    assert f.causes == ["exit status 3 (the worker exited by itself)",
                        "SIGTERM from outside (not counted)",
                        "SIGSEGV (raised by the worker itself)"]
    assert "SIGSEGV (raised by the worker itself)" in f.msg and "not counted" in f.msg


def _exiting(code: int) -> Any:
    return lambda i: subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({code})"])


def _wait_dead(workers: Workers) -> None:
    for p in workers.alive():
        p.wait(30)


def test_run_stops_when_workers_keep_dying_before_they_take_any_work() -> None:
    """Real processes that die at once (as a worker whose start-up fails would): replaced, and
    the run stopped with a reason once nothing has moved for a while."""
    reported: list[Any] = []
    workers = Workers([_exiting(1)(0)], _exiting(1), reported.append)
    watch = RunWatch(1)
    reason = None
    deadline = time.monotonic() + 60
    while reason is None and time.monotonic() < deadline:
        _wait_dead(workers)
        reason = watch.why_stop(workers, workers.poll(), (0, 0, 0))
    assert reason is not None and "keep dying before they run anything" in reason
    assert "exit status 1" in reason and len(reported) >= 10
    _wait_dead(workers)
    workers.replace = False
    workers.poll()


def test_run_stops_when_no_worker_is_left() -> None:
    workers = Workers([_exiting(2)(0), _exiting(2)(1)], _exiting(2), lambda d: None)
    watch = RunWatch(2)
    _wait_dead(workers)
    reason = watch.why_stop(workers, workers.poll(), (0, 0, 0))
    assert reason is not None and reason.startswith("no worker left")
    assert "an ajug error" in reason


# -- real processes ---------------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_workers_killed_again_and_again_keep_being_replaced(procs: Procs, tmp_path: Path) -> None:
    """`ajug work -j 2` loses a worker 50 times (the old budget was 20 per job, 40): every one
    is replaced and the run completes."""
    jugfile = copy_jugfile(tmp_path, "steady.py")
    gate = tmp_path / "gate"
    e = env(AJUG_TEST_GATE=str(gate))
    coord, port = procs.serve(jugfile, "--max-attempts", "1000", env=e)
    sup = procs.start(["work", f"127.0.0.1:{port}", "-j", "2"], "supervise", env=e)
    kills = 0
    deadline = time.monotonic() + 100
    while kills < 50 and time.monotonic() < deadline:
        kids = wait_for(lambda: [k for k in children(sup.pid) if _running(k)], 30,
                        what="a worker process")
        os.kill(kids[0], signal.SIGKILL)
        kills += 1
        wait_for(lambda k=kids[0]: k not in children(sup.pid), 10, every_s=0.02,
                 what="the killed worker to be reaped")
        time.sleep(0.3)  # ~2.5 deaths a second: under the rate that makes replacements wait
    assert kills == 50
    gate.write_text("")
    assert coord.wait(60) == 0, read_log(coord)[-3000:]
    assert sup.wait(30) == 0, read_log(sup)[-3000:]
    assert read_log(sup).count("starting another") >= 50
    assert values(jugfile, ["total"], AJUG_TEST_GATE=str(gate))["total"] == sum(
        x * x for x in range(40))


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_run_whose_tasks_all_kill_their_worker_ends(tmp_path: Path) -> None:
    """Every task calls os._exit(1): after --max-attempts deaths each is failed as a suspect
    and the run ends, with a non-zero status and one line per failure (it used to wait for
    ever once 20 workers had died)."""
    jugfile = tmp_path / "suicidal.py"
    jugfile.write_text(
        "import os\nfrom ajug import TaskGenerator\n\n"
        "@TaskGenerator\ndef die(i):\n    os._exit(1)\n\n"
        "@TaskGenerator\ndef after(x):\n    return x\n\n"
        "tasks = [after(die(i)) for i in range(10)]\n"
    )
    t0 = time.monotonic()
    out = subprocess.run(ajug_cmd("run", str(jugfile), "-j", "1", "--no-progress"), env=env(),
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "0/20 done (10 failed, 10 blocked)" in out.stderr, out.stderr[-3000:]
    # one line per failure as it happens (the coordinator's), then the end of the run shows
    # the first three again and counts the rest
    assert out.stderr.count("failed: WorkerLost: lost its worker") == 10, out.stderr[-3000:]
    assert out.stderr.count("ajug: task suicidal.die ") == 3
    assert "ajug: ... and 7 more failed task(s)" in out.stderr
    assert "exit status 1 (the worker exited by itself)" in out.stderr
    # the line the README's failure table shows, without -v
    assert "disconnected, 1 lease(s) back to ready" in out.stderr
    print(f"\nall-suicidal run ended in {time.monotonic() - t0:.1f}s")


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_outside_kills_are_not_blamed_on_the_task_but_its_own_deaths_are(
        procs: Procs, tmp_path: Path) -> None:
    """A slow task is SIGKILLed from outside twice (--max-attempts 2): it is not failed for
    it and completes. The task after it kills its own worker: failed, and the record says how."""
    jugfile = tmp_path / "blame.py"
    jugfile.write_text(
        "import os, time\nfrom ajug import TaskGenerator\n\n"
        "@TaskGenerator\ndef slow(x):\n    time.sleep(3)\n    return x\n\n"
        "@TaskGenerator\ndef killer(x):\n    os._exit(3)\n\n"
        "s = slow(1)\nk = killer(s)\n"
    )
    coord, port = procs.serve(jugfile, "--max-attempts", "2", "--stay")
    sup = procs.start(["work", f"127.0.0.1:{port}", "-j", "2"], "supervise")
    for _ in range(2):
        st = wait_for(lambda: (s := status(port))["totals"]["running"] == 1 and s, 60,
                      what="the slow task running")
        (w,) = [w for w in st["workers"] if w["n_running"]]
        time.sleep(0.5)
        os.kill(w["pid"], signal.SIGKILL)
        wait_for(lambda pid=w["pid"]: pid not in children(sup.pid), 10, what="the kill")
    # failed at its second death; the supervisor's word on how it died follows
    st = wait_for(lambda: (s := status(port))["totals"]["failed"] == 1 and len(
        [c for c in s["failures"][0]["causes"] if c.startswith("exit status")]) == 2 and s, 90,
                  what="the killer to be failed, with its causes")
    assert st["totals"]["done"] == 1  # slow: done, after two kills from outside
    (f,) = st["failures"]
    assert f["func"] == "blame.killer" and f["kind"] == "worker-lost"
    assert f["causes"] == ["exit status 3 (the worker exited by itself)"] * 2
    assert "SIGKILL from outside" in read_log(coord)
    coord.send_signal(signal.SIGTERM)
    coord.wait(30)


async def test_a_finished_run_does_not_wait_for_a_worker_still_connecting() -> None:
    """A replacement started just before the run finished keeps trying to reach a coordinator
    that is gone: `ajug run` stops it at once rather than waiting 10 s for it."""
    from ajug.supervisor import end_workers

    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    workers = Workers([slow, quick], lambda i: None, lambda d: None)
    t0 = time.monotonic()
    await end_workers(workers, finished=True)
    assert slow.returncode == -signal.SIGTERM and quick.returncode == 0
    assert time.monotonic() - t0 < 8


@pytest.mark.slow
def test_supervisor_stops_a_worker_still_connecting_once_the_run_is_over() -> None:
    """`ajug work -j N`: one worker saw the run finish (exit 0); another, a replacement still
    trying to reach the coordinator that has gone, is stopped rather than waited for."""
    from ajug.supervisor import FINISH_GRACE_S, supervise

    scripts = [["import sys; sys.exit(0)"], ["import time; time.sleep(60)"]]
    t0 = time.monotonic()
    rc = supervise(scripts, lambda a: subprocess.Popen([sys.executable, "-c", *a]))
    assert rc == 0
    assert time.monotonic() - t0 < FINISH_GRACE_S + 5
