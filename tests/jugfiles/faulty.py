"""Tasks that fail in every way a task can: raise, raise once, kill their worker, segfault."""

import ctypes
import os
from pathlib import Path

from ajug import TaskGenerator

MARKS = Path(os.environ.get("AJUG_TEST_MARKS", "."))


@TaskGenerator
def ok(i):
    return i + 1


@TaskGenerator
def raises(x):
    raise ValueError(f"bad input {x}")


@TaskGenerator
def flaky(x):
    """Fails on its first attempt only (counted in a file), so --retries 1 lets it through."""
    mark = MARKS / "flaky.attempts"
    n = int(mark.read_text()) if mark.exists() else 0
    mark.write_text(str(n + 1))
    if n == 0:
        raise RuntimeError("first attempt fails")
    return x * 10


@TaskGenerator
def exits(x):
    os._exit(3)


@TaskGenerator
def segfault(x):
    ctypes.string_at(0)


@TaskGenerator
def after(x):
    return x


oks = [ok(i) for i in range(10)]
bad = raises(1)
downstream = after(after(bad))
retried = flaky(4)
killers = [after(exits(0)), segfault(0)] if os.environ.get("AJUG_TEST_KILLERS") else []
