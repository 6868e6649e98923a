"""Workers started as SLURM jobs (issue 15), against a real one-node SLURM cluster
(tests/slurm_cluster.py): the issue's acceptance tests. Each test counts what ran (tasks append
to a log) and checks the values, not only the exit status."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from procs import Procs, ajug_cmd, env, read_log, status, values, wait_for

ROOT = Path(__file__).resolve().parents[1]

JUGFILE = '''
import os, time
from ajug import TaskGenerator

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")
N, SLEEP, FINAL = {n}, {sleep}, {final}


def note(what):
    with open(LOG, "a") as f:
        f.write(f"{{what}} {{os.environ.get('SLURM_JOB_ID', '-')}} {{time.time():.3f}}\\n")


@TaskGenerator
def step(i):
    note(f"step{{i}}")
    time.sleep(SLEEP)
    return i * i


@TaskGenerator
def final(xs):
    note("final")
    time.sleep(FINAL)
    return sum(xs)


steps = [step(i) for i in range(N)]
total = final(steps)
'''


@pytest.fixture(autouse=True)
def _no_job_left(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Jobs' workers run in sessions of their own, outside the test's process groups: any
    that a failed test left behind (they mention its directory) are killed by pid."""
    yield
    from procs import kill_mentioning

    kill_mentioning(str(tmp_path))


def make_jugfile(tmp_path: Path, n: int, sleep: float, final: float = 0.0) -> Path:
    path = tmp_path / "work.py"
    path.write_text(JUGFILE.format(n=n, sleep=sleep, final=final))
    return path


def runs(jugfile: Path) -> list[tuple[str, str, float]]:
    """(task, SLURM job id, time) of every execution, in order."""
    log = jugfile.parent / "runs.log"
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        what, job, t = line.split()
        out.append((what, job, float(t)))
    return out


def job_name(proc: subprocess.Popen[str]) -> str:
    m = wait_for(lambda: re.search(r"jobs named (\S+)", read_log(proc)), 30,
                 what="the launcher's start line")
    return m.group(1)


def serve_args(*extra: str) -> list[str]:
    return ["--workers", "slurm", "--advertise", "127.0.0.1", *extra]


def test_primes_with_two_jobs(slurm: Any, procs: Procs, tmp_path: Path) -> None:
    """The issue's first acceptance test: right values, sacct shows the worker jobs, nothing
    of the run left in squeue."""
    import shutil

    jugfile = tmp_path / "primes.py"
    shutil.copy(ROOT / "examples" / "primes.py", jugfile)
    coord, port = procs.serve(jugfile, *serve_args("--max-jobs", "2", "--idle-exit", "10"))
    name = job_name(coord)
    assert coord.wait(120) == 0, read_log(coord)
    log = read_log(coord)
    primes = [n for n in range(2, 20_000) if all(n % d for d in range(2, int(n**0.5) + 1))]
    v = values(jugfile, ["totals", "summary"])
    assert v["totals"] == {"count": len(primes), "sum": sum(primes)}
    assert v["summary"] == f"{len(primes)} primes below 20000, summing to {sum(primes)}"
    assert slurm.squeue(name=name) == []
    submitted = re.findall(r"submitted slurm job (\d+)", log)
    assert 1 <= len(submitted) <= 2, log
    if slurm.has_sacct:
        acct = slurm.wait_for(lambda: (a := slurm.sacct(name)) and all(
            j.state not in ("PENDING", "RUNNING") for j in a) and a, 30, "sacct")
        assert sorted(j.id for j in acct) == sorted(submitted)
        assert {j.state.split()[0] for j in acct} <= {"COMPLETED", "CANCELLED"}, acct
        assert all(j.comment == f"ajug primes.py at 127.0.0.1:{port}" for j in acct), acct
    # the job script holds no token; the token file is the user's alone
    jobs_dir = tmp_path / "primes.ajugjobs"
    token = (jobs_dir / "token").read_text().strip()
    assert (jobs_dir / "token").stat().st_mode & 0o077 == 0
    for script in jobs_dir.glob("*.sh"):
        assert token not in script.read_text()
    assert "test-token" == token


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_jobs_grow_to_the_maximum_then_idle_workers_exit(slurm: Any, procs: Procs,
                                                         tmp_path: Path) -> None:
    """300 tasks of 0.2 s, then one of 12 s: three jobs while the short tasks last; during
    the long one all but one worker exit within --idle-exit + a few seconds."""
    idle = 3.0
    jugfile = make_jugfile(tmp_path, 300, 0.2, 12.0)
    coord, port = procs.serve(jugfile, *serve_args(
        "--max-jobs", "3", "--idle-exit", str(idle), "--job-directive", "--oversubscribe"))
    name = job_name(coord)
    most = 0
    final_started: float | None = None
    down_to_one: float | None = None
    deadline = time.monotonic() + 180
    while coord.poll() is None and time.monotonic() < deadline:
        running = [j for j in slurm.squeue(name=name) if j.state == "RUNNING"]
        most = max(most, len(running))
        if final_started is None:
            final_started = next((t for what, _, t in runs(jugfile) if what == "final"), None)
        elif down_to_one is None and len(slurm.squeue(name=name)) == 1:
            down_to_one = time.time()
        time.sleep(0.2)
    assert coord.wait(60) == 0, read_log(coord)
    assert most == 3, read_log(coord)
    assert final_started is not None and down_to_one is not None, read_log(coord)
    # each idle worker exits after `idle` s without work, and its job leaves the queue
    assert down_to_one - final_started < idle + 5, (down_to_one - final_started)
    done = Counter(what for what, _, _ in runs(jugfile))
    assert done == Counter({**{f"step{i}": 1 for i in range(300)}, "final": 1})
    assert values(jugfile, ["total"]) == {"total": sum(i * i for i in range(300))}
    assert slurm.squeue(name=name) == []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_scancel_of_a_worker_job_mid_run(slurm: Any, procs: Procs, tmp_path: Path) -> None:
    """A job killed by SLURM: its leases come back, a replacement job is submitted, the values
    are right, and only what the killed job held ran twice (nothing stored ran again)."""
    jugfile = make_jugfile(tmp_path, 60, 0.5)
    coord, port = procs.serve(jugfile, *serve_args("--max-jobs", "2", "--idle-exit", "10"))
    name = job_name(coord)

    def busy_job() -> str | None:
        st = status(port)
        if st["totals"]["done"] < 5:
            return None
        for w in st["workers"]:
            m = re.match(r"slurm:(\d+)/", w["name"])
            if m and w["n_running"]:
                return m.group(1)
        return None

    victim = wait_for(busy_job, 90, 0.2, "a worker job holding a task")
    slurm.scancel(victim)
    cancelled_at = time.time()
    assert coord.wait(180) == 0, read_log(coord)
    log = read_log(coord)
    assert re.search(rf"job {victim} ended \(CANCELLED\) on \S+ while the run goes on", log), log
    submitted = re.findall(r"submitted slurm job (\d+)", log)
    assert victim in submitted and len(submitted) >= 3, log  # a replacement
    assert values(jugfile, ["total"]) == {"total": sum(i * i for i in range(60))}
    done = runs(jugfile)
    counts = Counter(what for what, _, _ in done)
    assert set(counts) == {f"step{i}" for i in range(60)} | {"final"}
    twice = {w for w, c in counts.items() if c > 1}
    # a task ran twice only if its first run was in the cancelled job, before the scancel
    # (the worker was killed before the result reached the store)
    for w in twice:
        first = next((job, t) for what, job, t in done if what == w)
        assert first[0] == victim and first[1] <= cancelled_at + 1, (w, first)
    assert len(twice) <= 2  # at most what that one worker held (one running, one queued)
    assert slurm.squeue(name=name) == []
    if slurm.has_sacct:
        acct = slurm.wait_for(lambda: (a := slurm.sacct(name)) and len(a) == len(submitted)
                              and a, 30, "sacct")
        assert {j.id: j.state for j in acct}[victim].startswith("CANCELLED")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_restarted_coordinator_adopts_its_jobs(slurm: Any, procs: Procs, tmp_path: Path,
                                               free_tcp_port: int) -> None:
    """The coordinator killed mid-run and started again: it finds its two jobs in the queue
    and adopts them (their workers reconnect and keep their tasks); no job is submitted twice,
    and the run completes with every task run once."""
    jugfile = make_jugfile(tmp_path, 60, 0.5)
    args = serve_args("--max-jobs", "2", "--idle-exit", "30")
    coord, port = procs.serve(jugfile, *args, port=free_tcp_port)
    name = job_name(coord)
    wait_for(lambda: status(port)["totals"]["done"] >= 10
             and len([j for j in slurm.squeue(name=name) if j.state == "RUNNING"]) == 2,
             90, 0.2, "two running jobs and some work done")
    first = re.findall(r"submitted slurm job (\d+)", read_log(coord))
    os.kill(coord.pid, signal.SIGKILL)
    coord.wait(10)
    assert len(first) == 2 and len(slurm.squeue(name=name)) == 2
    coord2, port2 = procs.serve(jugfile, *args, port=free_tcp_port)
    assert coord2.wait(180) == 0, read_log(coord2)
    log2 = read_log(coord2)
    assert len(re.findall(r"is this run's: adopted", log2)) == 2, log2
    assert "submitted slurm job" not in log2, log2
    assert values(jugfile, ["total"]) == {"total": sum(i * i for i in range(60))}
    counts = Counter(what for what, _, _ in runs(jugfile))
    assert counts == Counter({**{f"step{i}": 1 for i in range(60)}, "final": 1})
    assert slurm.squeue(name=name) == []
    if slurm.has_sacct:
        acct = slurm.wait_for(lambda: (a := slurm.sacct(name)) and len(a) >= 2 and a, 30,
                              "sacct")
        assert sorted(j.id for j in acct) == sorted(first)


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_sbatch_refusing_keeps_the_coordinator_serving(slurm: Any, procs: Procs,
                                                       tmp_path: Path) -> None:
    """An unknown partition: one line in the log, status says why, the coordinator serves the
    workers that connect anyway and retries with backoff."""
    jugfile = make_jugfile(tmp_path, 10, 0.05)
    coord, port = procs.serve(jugfile, *serve_args("--max-jobs", "2", "--partition", "nope"))
    name = job_name(coord)
    st = wait_for(lambda: (s := status(port))["jobs"]["failures"] >= 2 and s, 60, 0.5,
                  "two failed submissions")
    jobs = st["jobs"]
    assert "invalid partition specified: nope" in jobs["error"]
    assert "next try in" in jobs["reason"] and jobs["error"] in jobs["reason"]
    assert jobs["submitted"] == 0 and jobs["jobs"] == []
    log = read_log(coord)
    lines = [x for x in log.splitlines() if "invalid partition" in x and " D ajug" not in x]
    assert len(lines) == 1, log
    assert re.search(r"sbatch refused the job: invalid partition specified: nope; "
                     r"retrying in 5s", lines[0]), lines
    text = subprocess.run(ajug_cmd("status", f"127.0.0.1:{port}"), capture_output=True,
                          text=True, env=env(), timeout=30)
    assert "invalid partition specified: nope" in text.stdout, text.stdout
    assert coord.poll() is None
    w = procs.work(port)
    assert w.wait(60) == 0 and coord.wait(60) == 0, read_log(coord)
    assert values(jugfile, ["total"]) == {"total": sum(i * i for i in range(10))}
    assert slurm.squeue(name=name) == []


@pytest.mark.timeout(120)
def test_a_stopped_coordinator_cancels_its_jobs(slurm: Any, procs: Procs, tmp_path: Path) -> None:
    """SIGTERM mid-run: the coordinator cancels every job of the run before it exits."""
    jugfile = make_jugfile(tmp_path, 40, 1.0)
    coord, port = procs.serve(jugfile, *serve_args("--max-jobs", "2", "--idle-exit", "30"))
    name = job_name(coord)
    wait_for(lambda: len([j for j in slurm.squeue(name=name) if j.state == "RUNNING"]) == 2
             and status(port)["totals"]["running"] == 2, 60, 0.2, "two busy jobs")
    coord.send_signal(signal.SIGTERM)
    assert coord.wait(60) != 0
    assert slurm.squeue(name=name) == [], read_log(coord)
    assert re.search(r"cancelling slurm job\(s\) \d+ \d+", read_log(coord))
    assert len(runs(jugfile)) < 40  # it did stop mid-run


def test_ajug_run_with_slurm_workers(slurm: Any, procs: Procs, tmp_path: Path) -> None:
    """`ajug run --workers slurm`: no local worker, the jobs do the work, the summary line
    counts them, and nothing is left in the queue."""
    jugfile = make_jugfile(tmp_path, 6, 0.1)
    run = procs.start(["-v", "run", str(jugfile), "--no-progress", *serve_args(
        "--max-jobs", "1", "--idle-exit", "5")], "run")
    name = job_name(run)
    assert run.wait(90) == 0, read_log(run)
    log = read_log(run)
    assert "local workers" not in log and re.search(r"worker slurm:\d+/ \(", log), log
    assert re.search(r"\] 7/7 done .*; jobs: \d running, \d pending", log), log
    jobs = {job for _, job, _ in runs(jugfile)}
    assert len(jobs) == 1 and jobs != {"-"}  # every task ran in the one SLURM job
    assert values(jugfile, ["total"]) == {"total": sum(i * i for i in range(6))}
    assert slurm.squeue(name=name) == []
