"""Views that end well, seen as a user sees them: the bars of `ajug run` and `ajug serve` on a
(pseudo-)terminal, Ctrl-C there, `ajug work`'s task count, `ajug status` at 80 columns and
piped, and `ajug status --watch` (live, offline, JSON) ending with the final state and how the
run ended."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from inproc import TOKEN, Engine
from procs import Procs, ajug_cmd, copy_jugfile, env, read_log, wait_for
from ptys import Pty

pytestmark = pytest.mark.timeout(120)
LONG = "views.split_into_chunks_of_words"  # 32 characters: the table does not fit 80 columns


# -- the decisions behind the views, in-process ----------------------------------------------
def test_a_finished_function_keeps_its_average_rate() -> None:
    """Fed the counts a run would give once a second, with a clock passed in."""
    from ajug.progress import Pace

    pace = Pace()
    pace.update(0.0, 0, busy=True, left=60)
    for t in range(1, 4):  # 20 tasks a second for 3 s
        pace.update(float(t), 20 * t, busy=True, left=60 - 20 * t)
    assert pace.rate(3.0) == pytest.approx(20.0)
    assert pace.elapsed(3.0) == pytest.approx(3.0)
    for t in range(4, 40):  # then nothing left for half a minute (a long reduce runs)
        pace.update(float(t), 60, busy=False, left=0)
    assert pace.rate(40.0) == pytest.approx(20.0)  # not 0/s
    assert pace.elapsed(40.0) == pytest.approx(3.0)  # its own time, not the run's


def test_a_waiting_function_has_no_time_yet_and_then_a_window_rate() -> None:
    from ajug.progress import RATE_WINDOW_S, Pace

    pace = Pace()
    for t in range(5):
        pace.update(float(t), 0, busy=False, left=10)
    assert pace.elapsed(5.0) is None and pace.rate(5.0) == 0.0
    for t in range(5, 30):  # 1 task every 2 s
        pace.update(float(t), (t - 4) // 2, busy=True, left=10)
    assert pace.rate(29.0) == pytest.approx(0.5, abs=0.11)
    assert len(pace.samples) <= RATE_WINDOW_S + 2


def test_status_puts_long_names_last_rather_than_cut_them() -> None:
    import io

    from rich.console import Console

    from ajug.status import render

    st = {"jugfile": "views.py", "state": "offline", "tasks": 61,
          "functions": [{"name": LONG, "waiting": 0, "ready": 0, "running": 0, "done": 60,
                         "failed": 0, "blocked": 0},
                        {"name": "views.count_words_in_every_chunk", "waiting": 1, "ready": 0,
                         "running": 0, "done": 0, "failed": 0, "blocked": 0}],
          "totals": {"waiting": 1, "ready": 0, "running": 0, "done": 60, "failed": 0,
                     "blocked": 0}}
    for width, boxed in ((80, False), (140, True)):
        out = io.StringIO()
        render(st, Console(file=out, width=width, force_terminal=False))
        text = out.getvalue()
        assert LONG in text and "…" not in text, text
        assert ("┃" in text) == boxed, text  # the table when it fits, else lines, name last
        assert "views.py  [offline]" in text, text


def test_running_counts_tasks_being_executed_not_leases() -> None:
    """Per worker, the oldest lease that is not a follow-on is the one it executes."""
    from ajug import statusdata
    from ajug.coordinator import Coordinator, Settings
    from ajug.graph import Function, Graph
    from ajug.scheduler import Scheduler

    g = Graph()
    g.functions = [Function(0, "m.a", "s", b""), Function(1, "m.b", "s", b"")]
    deps: list[list[int]] = [[], [], [], [], [0], [1]]  # 4 and 5 follow 0 and 1
    for i, ds in enumerate(deps):
        g.keys.append(f"{i:040x}")
        g.index[g.keys[-1]] = i
        g.fn.append(0 if i < 4 else 1)
        g.dep_idx.extend(ds)
        g.dep_start.append(len(g.dep_idx))
        g.args.append(b"")
    s = Scheduler(g)
    s.start([False] * len(deps))
    s.add_worker("w1")
    s.add_worker("w2")
    s.workers["w1"].follow = True
    assert len(s.lease("w1", 3)) == 3  # 0, 1 and 2; or follow-ons of 0 and 1
    assert len(s.lease("w2", 2)) >= 1
    executing = statusdata.executing(s, g)
    assert sum(executing) == 2  # two workers, each executing one task
    assert sum(len(w.leases) for w in s.workers.values()) >= 4  # more leased than that
    c = Coordinator(Settings("x.py", "memory:"))
    c.sched, c.graph = s, g
    assert c.status()["executing"] == 2


def bars_of(text: str, name: str) -> list[str]:
    """Every drawing of the bar of function ``name`` (short name, as the bars show it)."""
    return [ln for ln in text.splitlines() if ln.lstrip().startswith(name)]


def test_run_bars_label_times_count_running_tasks_and_keep_rates(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "views.py")
    # tasks leased ahead (--prefetch 3) are not running; a function that is finished while
    # the slow reduce runs keeps its rate
    e = env(AJUG_TEST_N="60", AJUG_TEST_STEP_S="0.05", AJUG_TEST_FINAL_S="5")
    t = Pty.ajug("run", "views.py", "-j", "2", "--prefetch", "3", env=e, cwd=str(tmp_path),
                 columns=120)
    try:
        t.wait_for(lambda s: "elapsed" in s and "ETA" in s and "running" in s, 60,
                   "bars with elapsed, ETA and running tasks")
        assert t.wait(60) == 0, t.text
    finally:
        t.close()
    text = t.text
    running = [int(n) for n in re.findall(r"(\d+) running", text)]
    assert running and max(running) <= 2, text  # 2 workers: at most 2 tasks run at once
    assert re.search(r"\d+/61 done", text) and re.search(r"\d+/60 done", text), text
    final = bars_of(text, "split_into_chunks_of_words")[-1]
    m = re.search(r"60/60 done\s+([\d.,]+)/s\s+elapsed (\d+):(\d\d)", final)
    assert m, final
    rate = float(m.group(1).replace(",", ""))
    secs = 60 * int(m.group(2)) + int(m.group(3))
    # its average over its own time (60 tasks in ~2 s), not a rate that decayed toward 0/s
    # during the 5 s of the reduce (a fifth of it, or less)
    assert rate >= 0.4 * 60 / max(secs, 1), final
    assert "ajug: [finished] 61/61 done (61 done)" in text
    assert "ajug: results are in views.ajugdata; read them with `ajug shell views.py`" in text


def test_serve_shows_the_same_bars_on_a_terminal(engine: Engine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``ajug serve`` on a terminal (the subject, a process); its worker in this process."""
    copy_jugfile(tmp_path, "views.py")
    e = env(AJUG_TEST_N="30", AJUG_TEST_STEP_S="0.1", AJUG_TOKEN=TOKEN.decode())
    monkeypatch.setenv("AJUG_TEST_N", "30")  # the worker loads the jugfile's code here
    monkeypatch.setenv("AJUG_TEST_STEP_S", "0.1")
    t = Pty.ajug("serve", "views.py", "--port", "0", env=e, cwd=str(tmp_path))
    try:
        port = int(t.wait_for(lambda s: (m := re.search(r"serving views.py on 127.0.0.1:(\d+)",
                                                        s)) and m.group(1), 30, "the port"))
        w = engine.run_worker(port)
        t.wait_for(lambda s: re.search(r"split_into_chunks_of_words .*\d+/30 done.*elapsed", s),
                   60, "a bar for the function")
        assert t.wait(60) == 0, t.text
    finally:
        t.close()
    assert "ajug: [finished] 31/31 done (31 done)" in t.text
    assert w.wait(30) == 0


def test_ctrl_c_at_a_terminal_is_interrupted_and_exit_130(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "views.py")
    e = env(AJUG_TEST_N="40", AJUG_TEST_STEP_S="1")
    t = Pty.ajug("run", "views.py", "-j", "2", env=e, cwd=str(tmp_path))
    try:
        t.wait_for(lambda s: "2 running" in s, 60, "both workers busy")
        t.send(b"\x03")  # the terminal sends SIGINT to the whole foreground group
        assert t.wait(30) == 130, t.text
    finally:
        t.close()
    text = t.text
    assert "ajug: interrupted" in text, text
    for bad in ("Traceback", "lost the coordinator", "reconnect", "KeyboardInterrupt"):
        assert bad not in text, text


def test_work_on_a_terminal_counts_its_tasks(engine: Engine, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``ajug work`` on a terminal (the subject: a process) against a coordinator in this one
    (tests/inproc.py)."""
    jug = copy_jugfile(tmp_path, "views.py")
    monkeypatch.setenv("AJUG_TEST_N", "20")
    monkeypatch.setenv("AJUG_TEST_STEP_S", "0.2")
    coord = engine.make_coordinator(jug)
    port = coord.port
    e = env(AJUG_TEST_N="20", AJUG_TEST_STEP_S="0.2", AJUG_TOKEN=TOKEN.decode())
    t = Pty.ajug("work", f"127.0.0.1:{port}", env=e, cwd=str(tmp_path))
    try:
        t.wait_for(lambda s: f"connected to the coordinator at 127.0.0.1:{port}" in s, 30,
                   "the connected line")
        t.wait_for(lambda s: re.search(r"ajug: ([3-9]|1\d) task\(s\) done", s), 60,
                   "a live count of tasks done")
        assert t.wait(60) == 0, t.text
    finally:
        t.close()
    assert "ajug: the coordinator says all is done; this worker ran 21 task(s)" in t.text
    assert coord.wait(30) == 0


def test_status_never_cuts_function_names(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "views.py")
    t = Pty.ajug("status", "views.py", env=env(), cwd=str(tmp_path), columns=80)
    try:
        assert t.wait(60) == 0, t.text
    finally:
        t.close()
    piped = subprocess.run(ajug_cmd("status", "views.py"), capture_output=True, text=True,
                           env=env(), cwd=tmp_path, timeout=60)
    assert piped.returncode == 0, piped.stderr
    for text in (t.text, piped.stdout):
        assert LONG in text and "views.count_words_in_every_chunk" in text, text
        assert "…" not in text, text
        assert re.search(rf"\b0\s+60\s+0\s+0\s+0\s+0\s+{LONG}$", text, re.M) or \
            re.search(rf"{LONG}\s*│\s*0\s*│\s*60\s*│", text), text  # its counts beside it


def watch(*args: str, cwd: Path, e: dict[str, str], timeout: float = 60
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ajug_cmd("status", *args, "--watch", "--interval", "0.3"),
                          capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)


def test_live_watch_ends_with_the_final_state(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A coordinator exits as soon as a run is done; the watch sees the end all the same.
    The coordinator, its worker and both watches (bars, JSON) run in this process."""
    caplog.set_level(logging.DEBUG, logger="ajug.protocol.connection")
    jug = copy_jugfile(tmp_path, "views.py")
    monkeypatch.setenv("AJUG_TEST_N", "30")
    monkeypatch.setenv("AJUG_TEST_STEP_S", "0.1")
    coord = engine.make_coordinator(jug)
    with ThreadPoolExecutor(2) as pool:
        bars = pool.submit(coord.watch, False)
        js = pool.submit(coord.watch, True)
        wait_for(lambda: caplog.text.count("client status --watch") == 2, 30,
                 what="both watches to connect")
        engine.run_worker(coord.port)
        assert bars.result(60) == 0 and js.result(60) == 0
    assert coord.wait(30) == 0
    out, err = capsys.readouterr()
    # stdout: the JSON watch's states; stderr: the bars, then each watch's last line
    states = [json.loads(ln) for ln in out.splitlines()]
    assert states[-1]["state"] == "finished" and states[-1]["totals"]["done"] == 31
    assert "0/31 done" in err, err  # the bars were drawn before the run went on
    ends = [ln for ln in err.splitlines() if ln.startswith("ajug: ")]
    assert len(ends) == 2, err
    for line in ends:
        assert line == "ajug: the run has finished: [finished] 31/31 done (31 done)" or \
            line.startswith("ajug: the run has finished: [finished] 31/31 done (31 done), "), err


@pytest.mark.slow
def test_live_watch_says_when_the_coordinator_went_away(procs: Procs, tmp_path: Path) -> None:
    jug = copy_jugfile(tmp_path, "views.py")
    e = env(AJUG_TEST_N="30", AJUG_TEST_STEP_S="0.5")
    coord, port = procs.serve(jug, env=e)
    bars = procs.start(["status", f"127.0.0.1:{port}", "--watch", "--interval", "0.3"], "watch")
    procs.work(port, env=e)
    wait_for(lambda: re.search(r"\b[1-9]\d*/31 done", read_log(bars)), 30,
             what="some progress")
    coord.send_signal(signal.SIGKILL)
    assert bars.wait(30) == 1, read_log(bars)
    last = read_log(bars).strip().splitlines()[-1]
    assert last.startswith(f"ajug: the coordinator at 127.0.0.1:{port} went away before the "
                           "run finished"), last
    assert re.search(r"last seen: \[running\] \d+/31 done", last), last


def test_offline_watch_ends_when_all_is_done(procs: Procs, tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "views.py")
    e = env(AJUG_TEST_N="20", AJUG_TEST_STEP_S="0.1")
    run = procs.start(["run", "views.py", "-j", "2", "--no-progress"], "run", env=e)
    out = watch("views.py", cwd=tmp_path, e=e)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "ajug: the run has finished: [offline] 21/21 done"), out.stderr
    js = subprocess.run(ajug_cmd("status", "views.py", "--watch", "--json"), capture_output=True,
                        text=True, env=e, cwd=tmp_path, timeout=60)
    assert js.returncode == 0 and json.loads(js.stdout.splitlines()[-1])["totals"]["done"] == 21
    assert run.wait(30) == 0
    # failed tasks: nothing more happens without a new run, so the watch ends, with status 1
    copy_jugfile(tmp_path, "taskraise.py")
    assert subprocess.run(ajug_cmd("run", "taskraise.py", "-j", "1", "--no-progress"),
                          env=env(), cwd=tmp_path, timeout=60, capture_output=True).returncode == 1
    out = watch("taskraise.py", cwd=tmp_path, e=env())
    assert out.returncode == 1, out.stderr
    assert "the run has ended without finishing every task" in out.stderr
