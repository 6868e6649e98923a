"""Helpers shared by the store tests (values to round-trip, child processes, keys)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
GiB = 1 << 30


def hexkey(i: int | str) -> str:
    """A 40-hex-digit key, like a task hash."""
    return hashlib.sha1(str(i).encode()).hexdigest()


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: they import ajug from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


VALUES = [
    None,
    0,
    -(2**70),
    3.5,
    "text ✓",
    b"\x00bytes",
    bytearray(b"ba"),
    [1, [2, [3]]],
    (1, "a"),
    {"a": 1, 2: [None, {"b": b"x"}]},
    set(range(5)),
    np.arange(12, dtype=np.int32),
    np.arange(24.0).reshape(4, 6)[:, ::2],  # not contiguous
    np.asfortranarray(np.ones((3, 5))),
    np.array(7.5),  # 0-d
    np.float32(2.5),
    np.array(["a", "bc"]),
    np.array([{"o": 1}, None], dtype=object),
    {"arrays": [np.zeros(3), np.ones((2, 2), dtype=np.uint8)]},
]


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.all(a == b))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


ROUND_TRIP_1GIB = """
import resource, sys
import numpy as np
from ajug.stores import open_store
store = open_store(sys.argv[1])
key = "ab" * 20
n = (1 << 30) // 8
value = np.arange(n, dtype=np.int64)
store.save(key, value)
del value
got = store.load(key)
assert got.shape == (n,) and got.dtype == np.int64 and got.flags.writeable
assert np.array_equal(got[:: 1 << 16], np.arange(0, n, 1 << 16))
assert got[-1] == n - 1
store.remove([key])
store.close()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def run_1gib_round_trip(url: str) -> int:
    """Peak RSS in bytes of a process that saves then loads a 1 GiB array through ``url``."""
    proc = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP_1GIB, url],
        capture_output=True,
        env=subprocess_env(),
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return int(proc.stdout.split()[-1])
