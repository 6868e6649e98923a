"""A chain of N steps (AJUG_TEST_N, default 400); step AJUG_TEST_BAD fails on its first attempt,
by raising (AJUG_TEST_HOW=raise) or by killing its worker (AJUG_TEST_HOW=kill). Each step
also records which process ran it, so a test can see where the chain went."""

import os
import signal
from pathlib import Path

from ajug import TaskGenerator

MARKS = Path(os.environ.get("AJUG_TEST_MARKS", "."))
N = int(os.environ.get("AJUG_TEST_N", "400"))
BAD = int(os.environ.get("AJUG_TEST_BAD", "-1"))
HOW = os.environ.get("AJUG_TEST_HOW", "raise")


@TaskGenerator
def start():
    return (0, [os.getpid()])


@TaskGenerator
def step(prev, k):
    if k == BAD:
        mark = MARKS / "bad.attempts"
        n = int(mark.read_text()) if mark.exists() else 0
        mark.write_text(str(n + 1))
        if n == 0:
            if HOW == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"step {k} fails on its first attempt")
    value, pids = prev
    return (value + 1, pids[-3:] + [os.getpid()])


x = start()
for k in range(1, N + 1):
    x = step(x, k)
last = x
