"""Per-task resources and timeouts through the whole engine.

Resources: a coordinator and four workers of one host group in this process (tests/inproc.py);
the tasks write their own start and end times, from which the test checks that the host never
ran two GPU tasks at once while its other workers ran the CPU tasks. Timeouts need processes
(a stuck task ends its worker process, which its supervisor replaces): ``ajug run``.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from procs import ajug_cmd, env, offline_status, values

RESOURCES_JUGFILE = textwrap.dedent("""\
    import json, os, threading, time
    from ajug import TaskGenerator

    LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")

    def note(task, start):
        with open(LOG, "a") as f:  # one short append: whole lines
            f.write(json.dumps({"task": task, "start": start, "end": time.time(),
                                "thread": threading.get_ident()}) + "\\n")

    @TaskGenerator(resources={"gpus": 1})
    def train(i):
        t0 = time.time()
        time.sleep(0.15)
        note(f"train{i}", t0)
        return i * 10

    @TaskGenerator
    def prep(i):
        t0 = time.time()
        time.sleep(0.05)
        note(f"prep{i}", t0)
        return -i

    @TaskGenerator(resources={"memory": "1TiB"})
    def huge():
        return "never"

    trained = [train(i) for i in range(4)]
    prepped = [prep(i) for i in range(12)]
    h = huge()
    """)


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def overlaps(rs: list[dict[str, Any]]) -> int:
    rs = sorted(rs, key=lambda r: r["start"])
    return sum(1 for a, b in zip(rs, rs[1:]) if b["start"] < a["end"])


def test_one_gpu_host_runs_one_gpu_task_at_a_time_and_reports_what_nobody_offers(
        engine: Any, tmp_path: Path) -> None:
    jugfile = tmp_path / "gpus.py"
    jugfile.write_text(RESOURCES_JUGFILE)
    coord = engine.make_coordinator(jugfile, store_url=f"file:{tmp_path / 'store'}")
    offer = {"group": "hostA", "resources": {"gpus": 1, "cpus": 4, "memory": 64 * 1024 ** 3}}
    workers = [engine.run_worker(coord.port, offer=offer, prefetch=0) for _ in range(4)]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = coord.status()
        if st["totals"]["done"] == 16:
            break
        time.sleep(0.05)
    assert st["totals"]["done"] == 16, st["totals"]
    # the 1 TiB task: ready, not leased, and said so
    assert st["totals"]["ready"] == 1
    assert st["unplaceable"] == [{"needs": "memory>=1 TiB", "tasks": 1}]

    runs = records(tmp_path / "runs.log")
    gpu = [r for r in runs if r["task"].startswith("train")]
    cpu = [r for r in runs if r["task"].startswith("prep")]
    assert len(gpu) == 4 and len(cpu) == 12
    assert overlaps(gpu) == 0, gpu  # never two on the host's one GPU
    # meanwhile the other workers ran CPU tasks
    busy_cpu = [c for c in cpu for g in gpu if c["start"] < g["end"] and g["start"] < c["end"]]
    assert busy_cpu, (gpu, cpu)
    assert all(w.alive for w in workers)  # the engine fixture stops them, then the coordinator


TIMEOUT_JUGFILE = textwrap.dedent("""\
    import json, os, time
    from ajug import TaskGenerator

    LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")

    def note(task):
        with open(LOG, "a") as f:
            f.write(json.dumps({"task": task, "pid": os.getpid(), "t": time.time()}) + "\\n")

    @TaskGenerator(timeout=2, retries=1)
    def hang(x):
        note("hang")
        time.sleep(10 ** 6)

    @TaskGenerator
    def square(i):
        note(f"square{i}")
        return i * i

    @TaskGenerator
    def after_hang(x):
        return "never"

    h = hang(1)
    squares = [square(i) for i in range(8)]
    blocked = after_hang(h)
    """)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_task_past_its_timeout_is_stopped_retried_and_failed_with_its_stack(
        tmp_path: Path, start: str) -> None:
    jugfile = tmp_path / "hangs.py"
    jugfile.write_text(TIMEOUT_JUGFILE)
    t0 = time.monotonic()
    out = subprocess.run(ajug_cmd("run", str(jugfile), "-j", "2", "--no-progress"),
                         capture_output=True, text=True, timeout=100, cwd=tmp_path,
                         env=env(AJUG_WORKER_START=start), start_new_session=True)
    took = time.monotonic() - t0
    assert out.returncode == 1, out.stderr
    runs = records(tmp_path / "runs.log")
    hangs = [r for r in runs if r["task"] == "hang"]
    assert len(hangs) == 2, runs  # retries=1: two attempts, no more
    # each attempt ended its worker process: the retry ran in another one
    assert hangs[0]["pid"] != hangs[1]["pid"]
    assert hangs[1]["t"] - hangs[0]["t"] >= 2.0 - 0.1  # stopped after its timeout, not before
    assert took < 60, took
    assert values(jugfile, ["squares"])["squares"] == [i * i for i in range(8)]
    assert sum(1 for r in runs if r["task"].startswith("square")) == 8  # each once

    st = offline_status(jugfile)
    assert st["totals"]["failed"] == 1 and st["totals"]["blocked"] == 1
    (f,) = st["failures"]
    assert f["kind"] == "timeout" and f["type"] == "Timeout"
    assert "2 s" in f["msg"]
    # where it was: the task's own line, and no frame of the worker's machinery
    line = TIMEOUT_JUGFILE.splitlines().index('    time.sleep(10 ** 6)') + 1
    assert f'hangs.py", line {line}, in hang' in out.stderr and "time.sleep(10 ** 6)" in out.stderr
    assert "worker.py" not in out.stderr.split("failed (timeout")[1].split("ajug: [")[0]


@pytest.mark.timeout(120)
def test_ajug_run_resources_and_task_timeout_from_the_command_line(tmp_path: Path) -> None:
    jugfile = tmp_path / "gpus.py"
    jugfile.write_text(RESOURCES_JUGFILE.replace("h = huge()\n", "")
                       + "@TaskGenerator\ndef stuck():\n    time.sleep(10 ** 6)\n\ns = stuck()\n")
    out = subprocess.run(ajug_cmd("run", str(jugfile), "-j", "3", "--no-progress", "--prefetch",
                                  "0", "--resources", "gpus=1", "--task-timeout", "1.5"),
                         capture_output=True, text=True, timeout=100, cwd=tmp_path, env=env(),
                         start_new_session=True)
    assert out.returncode == 1, out.stderr
    runs = records(tmp_path / "runs.log")
    gpu = [r for r in runs if r["task"].startswith("train")]
    assert len(gpu) == 4 and overlaps(gpu) == 0, gpu
    st = offline_status(jugfile)
    assert st["totals"]["done"] == 16
    assert [f["kind"] for f in st["failures"]] == ["timeout"]  # --task-timeout, no retries


@pytest.mark.parametrize("bad", ["gpus", "gpus=lots", "9x=1"])
def test_bad_resources_are_one_line_and_exit_2(tmp_path: Path, bad: str) -> None:
    jugfile = tmp_path / "jf.py"
    jugfile.write_text("from ajug import TaskGenerator\n")
    for args in (["run", str(jugfile)], ["work", "127.0.0.1:1"]):
        out = subprocess.run(ajug_cmd(*args, "--resources", bad), capture_output=True,
                             text=True, timeout=60, cwd=tmp_path, env=env())
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "--resources" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.timeout(120)
def test_a_lone_ajug_work_replaces_itself_after_a_timeout(tmp_path: Path, procs: Any) -> None:
    jugfile = tmp_path / "hangs.py"
    jugfile.write_text(TIMEOUT_JUGFILE)
    serve, port = procs.serve(jugfile)
    other = tmp_path / "elsewhere"
    other.mkdir()
    work = procs.work(port, "--connect-timeout", "10", cwd=other)  # no -j: no supervisor
    assert serve.wait(90) == 1
    assert work.wait(30) == 0
    hangs = [r for r in records(tmp_path / "runs.log") if r["task"] == "hang"]
    assert len(hangs) == 2
    assert hangs[0]["pid"] == hangs[1]["pid"] == work.pid  # the same process, executed afresh
    assert "replacing this worker process" in Path(work.logfile).read_text()
    assert values(jugfile, ["squares"])["squares"] == [i * i for i in range(8)]


PRIORITY_JUGFILE = textwrap.dedent("""\
    import os
    from ajug import TaskGenerator

    LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "order.log")

    @TaskGenerator
    def step(i):
        with open(LOG, "a") as f:
            f.write(f"{i}\\n")
        return i

    early = [step(i) for i in range(5)]
    urgent = step.options(priority=10)(100)
    late = [step(i) for i in range(5, 8)]
    """)


def test_with_one_worker_a_later_high_priority_task_runs_first(engine: Any,
                                                               tmp_path: Path) -> None:
    jugfile = tmp_path / "prio.py"
    jugfile.write_text(PRIORITY_JUGFILE)
    coord = engine.make_coordinator(jugfile, store_url=f"file:{tmp_path / 'store'}")
    w = engine.run_worker(coord.port, prefetch=0)
    assert coord.wait(60) == 0 and w.wait(30) == 0
    order = [int(x) for x in (tmp_path / "order.log").read_text().split()]
    assert order == [100, 0, 1, 2, 3, 4, 5, 6, 7]
