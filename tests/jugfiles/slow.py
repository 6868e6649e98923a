"""A few long tasks and a reduce: for killing and freezing workers in the middle of a task."""

import os
import time

from ajug import TaskGenerator

SECONDS = float(os.environ.get("AJUG_TEST_SLOW_S", "4"))
#: a file each execution appends "x pid" to, when set (tests count executions)
RAN = os.environ.get("AJUG_TEST_RAN", "")


@TaskGenerator
def slow_square(x, seconds):
    time.sleep(seconds)
    if RAN:
        with open(RAN, "a") as f:
            f.write(f"{x} {os.getpid()}\n")
    return x * x


@TaskGenerator
def add_all(xs):
    return sum(xs)


squares = [slow_square(x, SECONDS) for x in range(3)]
total = add_all(squares)
