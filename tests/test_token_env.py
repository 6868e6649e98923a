"""The token stays out of what task code sees (issue 12): a task's ``os.environ``, the
environment of a subprocess it starts, and the workers' ``/proc/PID/environ``; also in a worker
that was started again after one died (it gets the token through a file descriptor).

Real ``ajug run`` (forked and spawned workers) and ``ajug serve`` + ``ajug work -j 2``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from procs import JUGFILES, Procs, children, env, read_log, values, wait_for

pytestmark = pytest.mark.timeout(150)

SECRET = "tok-3nv-" + "9f2c4e1a7b"
READ_SECRET = "rd-3nv-" + "5d8e0c2b4a"
N_LOOK = 6


def setup(tmp_path: Path, token: str | None, **extra: str) -> tuple[Path, dict[str, str], Path]:
    jugfile = tmp_path / "lookenv.py"
    shutil.copy(JUGFILES / "lookenv.py", jugfile)
    marks = tmp_path / "marks"
    marks.mkdir()
    e = env(AJUG_TEST_MARKS=str(marks), AJUG_TEST_GATE=str(tmp_path / "gate"), **extra)
    e.pop("AJUG_TOKEN", None)
    e.pop("AJUG_READ_TOKEN", None)
    if token is not None:
        e["AJUG_TOKEN"] = token
        e["AJUG_READ_TOKEN"] = READ_SECRET
    return jugfile, e, marks


def assert_clean(text: str, what: str, secrets: tuple[str, ...]) -> None:
    for bad in ("AJUG_TOKEN", "AJUG_READ_TOKEN", *secrets):
        assert bad not in text, f"{bad} in {what}"


def connected(log: str) -> set[str]:
    """The pids of the workers that the coordinator logged as connected."""
    return set(re.findall(r"worker \S+?:(\d+):\w+ connected", log))


def check_run(
    jugfile: Path, e: dict[str, str], marks: Path, main: subprocess.Popen[str],
    logs: Callable[[], str], supervisor: int, proc_clean: bool, secrets: tuple[str, ...],
) -> None:
    """While the run waits at its gate: the workers' environ and argv; then the tasks' view."""
    wait_for(lambda: len(list(marks.glob("look.*"))) == N_LOOK, 90, what="the look tasks")
    # the worker that kill_once took down was started again, and the new one connected: it
    # had the token although it is in no environment
    wait_for(lambda: len(connected(logs())) == 3, 60, what="the restarted worker to connect")
    kids = children(supervisor)
    assert len(kids) == 2, kids
    for pid in kids:
        assert_clean(Path(f"/proc/{pid}/cmdline").read_bytes().decode(), f"argv of {pid}", secrets)
        if proc_clean:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            assert_clean(environ, f"/proc/{pid}/environ", secrets)
    (Path(e["AJUG_TEST_GATE"])).touch()
    assert main.wait(60) == 0, read_log(main)
    log = logs()
    killed = re.findall(r"worker pid (\d+) died \(exit status 3\b.*?\); starting another", log)
    assert len(killed) == 1, log
    assert len(connected(log)) == 3 and killed[0] in connected(log), log
    results = values(jugfile, ["seen", "done"])
    assert results["done"] == N_LOOK
    for r in results["seen"]:
        assert r["token"] is None and r["read_token"] is None, r
        assert_clean(r["child_env"], "a subprocess's environment", secrets)
        assert_clean(r["shell_env"], "a shell's environment", secrets)
        assert "AJUG_TEST_MARKS" in r["child_env"]  # the environment is there, just not the token
        if proc_clean:
            assert_clean(r["proc_environ"], "/proc/self/environ of a task", secrets)


@pytest.mark.parametrize(
    "start, token",
    [("fork", None), ("spawn", SECRET), ("fork", SECRET)],
    ids=["fork-made-token", "spawn-given-token", "fork-given-token"],
)
def test_ajug_run_keeps_the_token_out_of_task_environments(
    procs: Procs, tmp_path: Path, start: str, token: str | None
) -> None:
    jugfile, e, marks = setup(tmp_path, token, AJUG_WORKER_START=start)
    run = procs.start(["-v", "run", str(jugfile), "-j", "2", "--no-progress"], "run", env=e)
    secrets = (SECRET, READ_SECRET) if token else ()
    # A forked worker is a copy of `ajug run`: its /proc/PID/environ is the block `ajug run` was
    # exec'd with, which holds AJUG_TOKEN if the user put it there (os.environ does not).
    proc_clean = not (start == "fork" and token)
    check_run(jugfile, e, marks, run, lambda: read_log(run), run.pid, proc_clean, secrets)
    assert token is None or token not in read_log(run)


def test_ajug_work_j2_keeps_the_token_out_of_task_environments(
    procs: Procs, tmp_path: Path
) -> None:
    jugfile, e, marks = setup(tmp_path, SECRET)
    coord, port = procs.serve(jugfile, env=e)
    sup = procs.start(["-v", "work", f"127.0.0.1:{port}", "-j", "2"], "work", env=e)
    check_run(jugfile, e, marks, coord, lambda: read_log(coord) + read_log(sup), sup.pid, True,
              (SECRET, READ_SECRET))
    assert sup.wait(30) == 0, read_log(sup)
    assert SECRET not in read_log(sup) + read_log(coord)
