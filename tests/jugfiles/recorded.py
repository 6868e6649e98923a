"""Independent tasks and a sum, each execution recorded (task, pid, start, end) as one JSON
line in ``AJUG_TEST_RUNLOG``, so a test can tell whether a task ever ran twice at once."""

import json
import os
import time

from ajug import TaskGenerator

N = int(os.environ.get("AJUG_TEST_N", "100"))
TASK_S = float(os.environ.get("AJUG_TEST_TASK_S", "0.05"))
RUNLOG = os.environ.get("AJUG_TEST_RUNLOG", os.devnull)


def record(task, start):
    line = json.dumps({"task": task, "pid": os.getpid(), "start": start, "end": time.time()})
    fd = os.open(RUNLOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: lines of concurrent tasks never mix
    finally:
        os.close(fd)


@TaskGenerator
def square(i):
    start = time.time()
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
