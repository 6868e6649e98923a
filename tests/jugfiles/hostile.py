"""A map, block sums and a total that waits for a gate file: a run that lasts as long as a test
attacks it. Every execution is recorded as JSON lines in ``AJUG_TEST_RUNLOG`` (one at its start,
one at its end, with the pid), so a test can check that no task ran twice at once."""

import json
import os
import time
from pathlib import Path

from ajug import TaskGenerator

N = int(os.environ.get("AJUG_TEST_N", "600"))
BLOCK = 20
TASK_S = float(os.environ.get("AJUG_TEST_TASK_S", "0.05"))
RUNLOG = os.environ.get("AJUG_TEST_RUNLOG", os.devnull)


def record(task, start, ended):
    rec = {"task": task, "pid": os.getpid(), "start": start}
    if ended:
        rec["end"] = time.time()
    fd = os.open(RUNLOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)


@TaskGenerator
def square(i):
    start = time.time()
    record(f"square:{i}", start, False)
    time.sleep(TASK_S)
    record(f"square:{i}", start, True)
    return i * i


@TaskGenerator
def block(xs, b):
    start = time.time()
    record(f"block:{b}", start, False)
    time.sleep(TASK_S)
    record(f"block:{b}", start, True)
    return sum(xs)


@TaskGenerator
def total(bs):
    start = time.time()
    record("total", start, False)
    gate = os.environ.get("AJUG_TEST_GATE")
    deadline = time.monotonic() + float(os.environ.get("AJUG_TEST_GATE_S", "120"))
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    record("total", start, True)
    return sum(bs)


squares = [square(i) for i in range(N)]
blocks = [block(squares[i : i + BLOCK], i // BLOCK) for i in range(0, N, BLOCK)]
result = total(blocks)


def reference():
    """The values, computed sequentially in plain Python."""
    sq = [i * i for i in range(N)]
    bl = [sum(sq[i : i + BLOCK]) for i in range(0, N, BLOCK)]
    return {"squares": sq, "blocks": bl, "result": sum(bl)}
