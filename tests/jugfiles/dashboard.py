"""Slow tasks, a task that raises and one blocked behind it: every state the dashboard shows."""

import os
import time

from ajug import TaskGenerator

SECONDS = float(os.environ.get("AJUG_TEST_SLOW_S", "1"))


@TaskGenerator
def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


@TaskGenerator
def add_all(xs):
    return sum(xs)


@TaskGenerator
def boom(x):
    raise ValueError(f"bad input {x}")


squares = [slow_square(x, SECONDS) for x in range(3)]
total = add_all(squares)
bad = boom(1)
after = add_all([bad, total])
