"""Independent tasks and a sum, each execution recorded in ``AJUG_TEST_RUNLOG`` as JSON lines:
{task, pid, start} when it starts, {task, pid, start, end} when it ends, so a test can tell
whether a task ever ran twice at once (and see one that is running)."""

import json
import os
import time

from ajug import TaskGenerator

N = int(os.environ.get("AJUG_TEST_N", "100"))
TASK_S = float(os.environ.get("AJUG_TEST_TASK_S", "0.05"))
RUNLOG = os.environ.get("AJUG_TEST_RUNLOG", os.devnull)


def record(task, start, ended=True):
    rec = {"task": task, "pid": os.getpid(), "start": start}
    if ended:
        rec["end"] = time.time()
    line = json.dumps(rec)
    fd = os.open(RUNLOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: lines of concurrent tasks never mix
    finally:
        os.close(fd)


@TaskGenerator
def square(i):
    start = time.time()
    record(f"square:{i}", start, ended=False)
    time.sleep(TASK_S)
    record(f"square:{i}", start)
    return i * i


@TaskGenerator
def add_all(xs):
    start = time.time()
    record("add_all", start)
    return sum(xs)


squares = [square(i) for i in range(N)]
total = add_all(squares)
