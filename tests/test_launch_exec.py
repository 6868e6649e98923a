"""Workers started by a command (``--workers 'exec:COMMAND'``), the launcher's options and
their errors, the jobs in status / the dashboard / metrics, and ``ajug work --idle-exit``.
The exec launcher runs its commands on this machine: its jobs' workers are real processes; the
coordinator with its launcher runs in this process (tests/inproc.py) unless the command line
(options, configuration, exit status) is the subject."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from inproc import TOKEN
from procs import Procs, ajug_cmd, children, env, read_log, status, values, wait_for

from ajug.protocol.client import query_status

JUGFILE = '''
import os, time
from ajug import TaskGenerator

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")


@TaskGenerator
def step(i):
    with open(LOG, "a") as f:
        f.write(f"step{{i}} {{os.environ.get('AJUG_JOB_ID', '-')}}\\n")
    time.sleep({sleep})
    return i * i


total = [step(i) for i in range({n})]
'''



@pytest.fixture(autouse=True)
def _no_job_left(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Jobs' workers run in sessions of their own, outside the test's process groups: any
    that a failed test left behind (they mention its directory) are killed by pid."""
    yield
    from procs import kill_mentioning

    kill_mentioning(str(tmp_path))

def jugfile(tmp_path: Path, n: int = 8, sleep: float = 0.3) -> Path:
    p = tmp_path / "ex.py"
    p.write_text(JUGFILE.format(n=n, sleep=sleep))
    return p


def ran(jug: Path) -> Counter[str]:
    log = jug.parent / "runs.log"
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else Counter()


def launch(template: str, **options: Any) -> dict[str, Any]:
    """``--workers 'exec:TEMPLATE' --advertise 127.0.0.1`` and more, for make_coordinator."""
    return {"workers": f"exec:{template}", "advertise": "127.0.0.1", **options}


def left_behind(tmp_path: Path) -> list[int]:
    """Child processes of this one that a test's exec jobs left: alive ones that mention its
    directory, and zombies (nobody waited for them)."""
    kids = []
    for pid in children(os.getpid()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z" or str(tmp_path) in cmd:
            kids.append(pid)
    return kids


def status_of(port: int) -> dict[str, Any]:
    """What ``ajug status 127.0.0.1:PORT --json`` prints, asked over the protocol."""
    return asyncio.run(query_status("127.0.0.1", port, TOKEN, None))


def exec_args(template: str = "bash {script}", *extra: str) -> list[str]:
    return ["--workers", f"exec:{template}", "--advertise", "127.0.0.1", *extra]


def test_exec_jobs_do_the_work_and_show_in_status_dashboard_and_metrics(
        engine: Any, tmp_path: Path, free_tcp_port: int) -> None:
    """The coordinator, its dashboard and launcher in this process (tests/inproc.py); the
    exec jobs' workers are processes."""
    from test_dashboard import fetch, fetch_json, parse_metrics

    jug = jugfile(tmp_path, n=12, sleep=1.0)  # 6 s on two workers: status is asked meanwhile
    dash = free_tcp_port
    coord = engine.make_coordinator(jug, dashboard=dash, launch=launch(
        "bash {script}", max_jobs=2, idle_exit=5))
    # each job's worker is counted on the launcher's next tick after it connects
    st = wait_for(lambda: (s := coord.status())["jobs"]["running"] == 2
                  and len(s["workers"]) == 2
                  and all(j["workers"] == 1 for j in s["jobs"]["jobs"]) and s, 30, 0.2,
                  "two running exec jobs, each with its worker")
    jobs = st["jobs"]
    assert jobs["kind"] == "exec" and jobs["max"] == 2 and jobs["submitted"] == 2
    assert re.match(r"ajug-ex-[0-9a-f]{6}$", jobs["name"])
    ids = sorted(j["id"] for j in jobs["jobs"])
    assert sorted(re.match(r"exec:(.+)/$", w["name"]).group(1) for w in st["workers"]) == ids
    assert all(j["workers"] == 1 for j in jobs["jobs"])
    # not submitting more, whichever reason holds at this moment (the run moves on)
    assert re.search(r"at the maximum \(--max-jobs 2|enough|no task ready", jobs["reason"]), \
        jobs["reason"]
    api = fetch_json(dash, "/api/status")
    assert api["jobs"]["name"] == jobs["name"] and len(api["jobs"]["jobs"]) == 2
    m = parse_metrics(fetch(dash, "/metrics")[2])
    assert m['ajug_jobs{state="running"}'] == 2 and m["ajug_jobs_max"] == 2
    assert m["ajug_jobs_submitted_total"] == 2 and m["ajug_jobs_submit_failures"] == 0
    text = coord.status_text()  # `ajug status 127.0.0.1:PORT`
    assert f"exec jobs {jobs['name']}" in text and "jobs: " in text, text
    assert coord.wait(60) == 0
    assert ran(jug) == Counter({f"step{i}": 1 for i in range(12)})
    assert values(jug, ["total"]) == {"total": [i * i for i in range(12)]}
    assert left_behind(tmp_path) == []  # no exec command left behind
    # both jobs' workers, and only they, ran the tasks
    by_job = {line.split()[1] for line in (tmp_path / "runs.log").read_text().splitlines()}
    assert by_job <= set(ids)


def test_dashboard_page_shows_the_jobs(engine: Any, tmp_path: Path, free_tcp_port: int) -> None:
    """The coordinator in this process (tests/inproc.py); its job and the browser: processes."""
    from test_dashboard import IdText, chromium, dump_dom

    browser = chromium()
    jug = jugfile(tmp_path, n=4, sleep=0.1)
    dash = free_tcp_port
    coord = engine.make_coordinator(jug, stay=True, dashboard=dash, launch=launch(
        "bash {script}", max_jobs=1, idle_exit=60))
    st = wait_for(lambda: (s := coord.status())["state"] == "finished" and s["jobs"]["running"]
                  and s, 30, 0.2, "the run to finish with its job still there")
    dom = dump_dom(browser, f"http://127.0.0.1:{dash}/", tmp_path)
    p = IdText()
    p.feed(dom)
    t = {k: v.strip() for k, v in p.text.items()}
    assert t["loaded"] == "yes"
    assert st["jobs"]["name"] in t["jobs-name"] and "1 running" in t["jobs-name"]
    assert t["jobs-reason"] == coord.status()["jobs"]["reason"]
    assert t["job-0-state"] == "running"


def test_exec_command_placeholder_and_hosts(engine: Any, tmp_path: Path) -> None:
    """{command} is the worker's shell command as one word, {host} the least used of
    --exec-hosts: here a local shell stands in for ssh. (The coordinator in this process.)"""
    jug = jugfile(tmp_path, n=6, sleep=0.2)
    seen = tmp_path / "hosts.txt"
    template = f"echo {{host}} >> {seen}; sh -c {{command}}"
    coord = engine.make_coordinator(jug, launch=launch(
        template, max_jobs=2, idle_exit=3, exec_hosts="hostA,hostB",
        job_setup=["export AJUG_SETUP_RAN=1"]))
    assert coord.wait(60) == 0
    assert sorted(seen.read_text().split()) == ["hostA", "hostB"]
    assert ran(jug) == Counter({f"step{i}": 1 for i in range(6)})


def test_ajug_run_with_exec_workers_and_no_local_ones(procs: Procs, tmp_path: Path) -> None:
    jug = jugfile(tmp_path, n=6, sleep=0.1)
    run = procs.start(["-v", "run", str(jug), "--no-progress", *exec_args("bash {script}",
                       "--max-jobs", "2", "--idle-exit", "3")], "run")
    assert run.wait(60) == 0, read_log(run)
    log = read_log(run)
    assert "workers: exec jobs named" in log and "started 2 local workers" not in log
    assert re.findall(r"worker exec:\S+/ \(", log)  # every worker came from a job
    assert values(jug, ["total"]) == {"total": [i * i for i in range(6)]}


@pytest.mark.slow
def test_jobs_that_die_at_once_back_off_and_the_coordinator_serves_on(
        engine: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broken job (its command exits before any worker starts): three in a row, then one
    line and a backoff; workers started by hand still get the work. (In this process.)"""
    caplog.set_level(logging.INFO, logger="ajug")
    jug = jugfile(tmp_path, n=4, sleep=0.05)
    coord = engine.make_coordinator(jug, launch=launch("true {command}", max_jobs=1))
    st = wait_for(lambda: (s := coord.status())["jobs"]["error"] and s, 60, 0.3, "the backoff")
    assert "3 jobs in a row ended before their workers connected" in st["jobs"]["error"]
    assert "next try in" in st["jobs"]["reason"]
    assert st["jobs"]["submitted"] == 3 and st["jobs"]["ended_total"] == 3
    said = [(r.levelname, r.name) for r in caplog.records
            if r.getMessage().startswith("3 jobs in a row")]
    assert said == [("ERROR", "ajug.launch")], caplog.text
    w = engine.run_worker(coord.port)
    assert w.wait(60) == 0 and coord.wait(60) == 0
    assert values(jug, ["total"]) == {"total": [i * i for i in range(4)]}


def test_settings_from_a_config_file_and_the_environment(procs: Procs, tmp_path: Path) -> None:
    jug = jugfile(tmp_path, n=2, sleep=0.05)
    (tmp_path / "ajug.toml").write_text(
        'workers = "exec:bash {script}"\nadvertise = "127.0.0.1"\nmax-jobs = 1\n'
        'job-setup = ["export FROM_TOML=1", "echo setup-ran"]\n[serve]\nidle-exit = 4\n')
    coord, port = procs.serve(jug, env=env(AJUG_JOB_NAME="mine"))
    assert coord.wait(60) == 0, read_log(coord)
    assert "workers: exec jobs named mine-ex-" in read_log(coord)
    (script,) = (tmp_path / "ex.ajugjobs").glob("mine-ex-*.exec.sh")
    text = script.read_text()
    assert "export FROM_TOML=1\necho setup-ran\nexec " in text and "--idle-exit 4 " in text


@pytest.mark.parametrize("args,message", [
    (["--workers", "bogus"], "--workers 'bogus': one of slurm, pbs, sge, lsf, 'exec:COMMAND'"),
    (["--workers", "exec:echo hi"], "COMMAND must contain {command} or {script}"),
    (["--workers", "exec:ssh {host} {command}"], "needs --exec-hosts"),
    (["--workers", "exec:bash {script}", "--max-jobs", "0"], "--max-jobs 0: must be at least 1"),
    (["--workers", "exec:bash {script}", "--min-jobs", "3", "--max-jobs", "2"],
     "--min-jobs 3: must be from 0 to --max-jobs (2)"),
    (["--workers", "exec:bash {script}", "--job-mem", "lots"], "--job-mem 'lots'"),
    (["--workers", "exec:bash {script}", "--job-time", "soon"], "--job-time 'soon'"),
    (["--workers", "exec:bash {script}", "--idle-exit", "0"], "--idle-exit 0"),
    (["--workers", "exec:bash {script}", "--job-name", "a b"], "--job-name 'a b'"),
])
def test_bad_launcher_options_are_one_line_and_status_2(args: list[str], message: str,
                                                         tmp_path: Path) -> None:
    jug = jugfile(tmp_path)
    out = subprocess.run(ajug_cmd("serve", str(jug), "--port", "0", *args), capture_output=True,
                         text=True, env=env(), timeout=30)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ajug: error: ") and message in lines[0], lines
    assert not (tmp_path / "ex.ajugdata").exists()  # nothing started


def test_slurm_without_sbatch_on_path(tmp_path: Path) -> None:
    jug = jugfile(tmp_path)
    e = env(PATH=str(Path(sys.executable).parent))  # python, but no SLURM commands
    out = subprocess.run(ajug_cmd("serve", str(jug), "--workers", "slurm"), capture_output=True,
                         text=True, env=e, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == ("ajug: error: --workers slurm: sbatch is not on PATH here; run "
                                  "the coordinator where slurm's commands work (a login node)")


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    jug = jugfile(tmp_path)
    tf = tmp_path / "token"
    tf.write_text("abc\n")
    tf.chmod(0o644)
    out = subprocess.run(ajug_cmd("serve", str(jug), *exec_args(), "--token-file", str(tf)),
                         capture_output=True, text=True, env=env(), timeout=30)
    assert out.returncode == 2
    assert f"--token-file {tf} can be read by other users" in out.stderr
    assert f"chmod 600 {tf}" in out.stderr


def test_run_refuses_j_with_workers(tmp_path: Path) -> None:
    jug = jugfile(tmp_path)
    out = subprocess.run(ajug_cmd("run", str(jug), "-j", "2", *exec_args()), capture_output=True,
                         text=True, env=env(), timeout=30)
    assert out.returncode == 2 and "-j starts local workers" in out.stderr


def test_a_token_made_for_the_jobs_is_kept_for_a_restart(procs: Procs, tmp_path: Path) -> None:
    """Without AJUG_TOKEN or --token-file, one is made in the job directory (0600) and used
    again by the next coordinator of the run, so that adopted workers still get in."""
    jug = jugfile(tmp_path, n=2, sleep=0.05)
    e = env()
    del e["AJUG_TOKEN"]
    coord, port = procs.serve(jug, *exec_args("bash {script}", "--max-jobs", "1",
                                              "--idle-exit", "2"), env=e)
    assert coord.wait(60) == 0, read_log(coord)
    tf = tmp_path / "ex.ajugjobs" / "token"
    first = tf.read_text()
    assert len(first.strip()) == 32 and tf.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ex.ajugjobs").stat().st_mode & 0o777 == 0o700
    (tmp_path / "ex.ajugdata").rename(tmp_path / "old.ajugdata")  # run it all again
    coord, port = procs.serve(jug, *exec_args("bash {script}", "--max-jobs", "1",
                                              "--idle-exit", "2"), env=e)
    assert coord.wait(60) == 0, read_log(coord)
    assert tf.read_text() == first
    for script in (tmp_path / "ex.ajugjobs").glob("*.sh"):
        assert first.strip() not in script.read_text()


# -- ajug work --idle-exit ---------------------------------------------------------------------
@pytest.mark.slow
def test_idle_worker_exits_but_not_while_it_runs_a_task(
        engine: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``ajug work --idle-exit 1`` (WorkerOptions.idle_exit_s) against ``ajug serve --stay``,
    both in this process (tests/inproc.py)."""
    caplog.set_level(logging.INFO, logger="ajug")
    jug = jugfile(tmp_path, n=1, sleep=3.0)  # one task far longer than --idle-exit
    coord = engine.make_coordinator(jug, stay=True)
    t0 = time.monotonic()
    w = engine.run_worker(coord.port, idle_exit_s=1.0)
    wait_for(lambda: coord.status()["state"] == "finished", 30, what="the task")
    assert w.wait(30) == 0
    took = time.monotonic() - t0
    assert 3.0 <= took < 15, took
    assert w.worker.idle_exited and w.worker.ran == 1
    assert "no task for 1s (--idle-exit): exiting" in caplog.text
    assert ran(jug) == Counter({"step0": 1})
    assert coord.rc is None  # --stay: the coordinator did not end it, idleness did
    st = coord.status()
    assert st["workers"] == [] and st["totals"]["done"] == 1


def test_idle_exit_passes_to_every_process_of_work_j(procs: Procs, tmp_path: Path) -> None:
    jug = jugfile(tmp_path, n=1, sleep=0.05)
    coord, port = procs.serve(jug, "--stay")
    wait_for(lambda: status(port)["state"] == "running", 10, what="serving")
    w = procs.work(port, "-j", "2", "--idle-exit", "1")
    assert w.wait(30) == 0, read_log(w)
    assert read_log(w).count("(--idle-exit): exiting") == 2


def test_idle_exit_must_be_positive(tmp_path: Path) -> None:
    out = subprocess.run(ajug_cmd("work", "127.0.0.1:1", "--idle-exit", "-1"),
                         capture_output=True, text=True, env=env(), timeout=30)
    assert out.returncode == 2 and "--idle-exit -1: must be a positive number" in out.stderr


def test_status_json_round_trips_the_jobs_section(engine: Any, tmp_path: Path) -> None:
    jug = jugfile(tmp_path, n=2, sleep=0.05)
    coord = engine.make_coordinator(jug, stay=True, launch=launch("bash {script}", max_jobs=1,
                                                                  idle_exit=30))
    st = wait_for(lambda: (s := status_of(coord.port))["state"] == "finished" and s, 30,
                  what="finished")
    jobs = json.loads(json.dumps(st["jobs"]))
    assert set(jobs) >= {"kind", "name", "reason", "error", "min", "max", "pending", "running",
                         "jobs", "ended", "submitted", "dir", "scripts"}
    assert jobs["dir"] == str(tmp_path / "ex.ajugjobs")
    assert jobs["reason"].startswith("the run is finished")


def test_a_stopped_coordinator_ends_its_exec_jobs(engine: Any, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Stopped as SIGTERM stops ``ajug serve`` (the coordinator in this process)."""
    caplog.set_level(logging.INFO, logger="ajug")
    jug = jugfile(tmp_path, n=20, sleep=1.0)
    coord = engine.make_coordinator(jug, launch=launch("bash {script}", max_jobs=2,
                                                       idle_exit=30))
    st = wait_for(lambda: (s := coord.status())["totals"]["running"] == 2 and s, 30, 0.2,
                  "two busy exec jobs")
    pids = [w["pid"] for w in st["workers"]]  # bash exec's the worker: the job's own pid
    assert os.getpid() not in pids
    coord.stop()
    assert coord.wait(30) != 0
    for pid in pids:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists()
                 or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3], 15,
                 what=f"exec job {pid} to end")
    assert "cancelling exec job(s)" in caplog.text


def test_repeatable_settings_from_one_environment_variable(procs: Procs, tmp_path: Path) -> None:
    jug = jugfile(tmp_path, n=1, sleep=0.01)
    e = env(AJUG_WORKERS="exec:bash {script}", AJUG_ADVERTISE="127.0.0.1",
            AJUG_SERVE_JOB_SETUP="export ONE=1\nexport TWO=2\n", AJUG_IDLE_EXIT="2")
    shown = subprocess.run(ajug_cmd("config", "serve", str(jug)), capture_output=True,
                           text=True, env=e, timeout=30).stdout
    assert 'job-setup = ["export ONE=1", "export TWO=2"]  # env AJUG_SERVE_JOB_SETUP' in shown
    coord, port = procs.serve(jug, env=e)
    assert coord.wait(60) == 0, read_log(coord)
    (script,) = (tmp_path / "ex.ajugjobs").glob("*.exec.sh")
    assert "export ONE=1\nexport TWO=2\nexec " in script.read_text()
