"""About forty short tasks and a reduce: a run that stays in progress while a test attacks it.

``AJUG_TEST_STEADY_S`` sets each task's duration (default 0.1 s). When ``AJUG_TEST_GATE`` names
a file, the reduce waits (at most ``AJUG_TEST_GATE_S``, default 120 s) until that file exists,
so the run lasts exactly as long as the test needs and then completes.
"""

import os
import time
from pathlib import Path

from ajug import TaskGenerator

SECONDS = float(os.environ.get("AJUG_TEST_STEADY_S", "0.1"))
N = 40


@TaskGenerator
def step(x):
    time.sleep(SECONDS)  # not an argument: the tasks' identity does not depend on it
    return x * x


@TaskGenerator
def reduce_all(xs):
    gate = os.environ.get("AJUG_TEST_GATE")
    if gate:
        deadline = time.monotonic() + float(os.environ.get("AJUG_TEST_GATE_S", "120"))
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return sum(xs)


steps = [step(x) for x in range(N)]
total = reduce_all(steps)
