"""Forty short tasks and a reduce: a run that lasts a few seconds, for killing things mid-run."""

import os
import time

from ajug import TaskGenerator

N = int(os.environ.get("AJUG_TEST_N", "40"))
STEP_S = float(os.environ.get("AJUG_TEST_STEP_S", "0.15"))
RUNLOG = os.environ.get("AJUG_TEST_RUNLOG", os.devnull)


def note(tag):
    with open(RUNLOG, "a") as f:
        f.write(tag + "\n")


@TaskGenerator
def step(i, seconds):
    note(f"step:{i}")
    time.sleep(seconds)
    return i * 3


@TaskGenerator
def add_all(xs):
    note("add_all")
    return sum(xs)


steps = [step(i, STEP_S) for i in range(N)]
total = add_all(steps)
