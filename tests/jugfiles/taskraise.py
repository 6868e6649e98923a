"""Tasks that raise (AJUG_TEST_FAILING of them; none once AJUG_TEST_FIXED=1), a task downstream
of them, and tasks that pass: for failures read after the run."""

import os

from ajug import TaskGenerator

FAILING = int(os.environ.get("AJUG_TEST_FAILING", "1"))
FIXED = os.environ.get("AJUG_TEST_FIXED") == "1"


@TaskGenerator
def simulate(x):
    if x < FAILING and not FIXED:
        scale = x * 3
        raise ValueError(f"bad value {x} (scale {scale})")
    return x


@TaskGenerator
def total(xs):
    return sum(xs)


runs = [simulate(i) for i in range(FAILING + 3)]
result = total(runs)
