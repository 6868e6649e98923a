"""Forty short tasks and a reduce: a run that lasts a few seconds, for killing things mid-run."""

import os
import time

from ajug import TaskGenerator

N = int(os.environ.get("AJUG_TEST_N", "40"))
STEP_S = float(os.environ.get("AJUG_TEST_STEP_S", "0.15"))


@TaskGenerator
def step(i, seconds):
    time.sleep(seconds)
    return i * 3


@TaskGenerator
def add_all(xs):
    return sum(xs)


steps = [step(i, STEP_S) for i in range(N)]
total = add_all(steps)
