"""2,000 tasks: a map, a reduce, a barrier, another map and reduce. Every execution is noted in
a log file, so a test can count the tasks that ran more than once."""

import os
import time

from ajug import TaskGenerator, bvalue

RUNLOG = os.environ.get("AJUG_TEST_RUNLOG", os.devnull)


def note(tag):
    with open(RUNLOG, "a") as f:
        f.write(tag + "\n")


@TaskGenerator
def square(i):
    note(f"square:{i}")
    time.sleep(0.003)
    return i * i


@TaskGenerator
def block_sum(xs, b):
    note(f"block_sum:{b}")
    return sum(xs)


@TaskGenerator
def grand_total(xs, tag):
    note(f"grand_total:{tag}")
    return sum(xs)


@TaskGenerator
def shift(i, t):
    note(f"shift:{i}")
    time.sleep(0.003)
    return t + i


squares = [square(i) for i in range(1000)]
blocks = [block_sum(squares[i : i + 50], i // 50) for i in range(0, 1000, 50)]
total = bvalue(grand_total(blocks, "first"))
shifted = [shift(i, total) for i in range(978)]
answer = grand_total(shifted, "second")
