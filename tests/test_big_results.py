"""A large result is saved and loaded in bounded memory on both stores: at most 1.3 times its
size above what the process held before, whether it pickles in-band (bytes, a list) or as
out-of-band buffers (numpy). Peak RSS is measured in a fresh process per step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from procs import ajug_cmd, env
from store_helpers import MiB, subprocess_env

SIZE = 512 * MiB
LIMIT = 1.3

STEP = """
import json, os, resource, sys
import numpy as np
from ajug.stores import encoding, open_store

url, kind, step, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(url)
key = "cd" * 20

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

base = peak()
if step == "save":
    value = (np.ones(size // 8) if kind == "array"
             else os.urandom(1 << 16) * (size >> 16) if kind == "bytes"
             else list(range(size // 36)))
    held = now() - base  # what the value takes in this process
    # as a worker saves a result: pickled as the task returns, then saved with its batch
    p = encoding.pickle_value(value)
    del value
    enc = encoding.encode_pickled(p, {"func": "m.f"})
    del p
    store.save_many([(key, enc, None)])
    del enc
else:
    value = store.load(key)
    held = now() - base
    n = value.nbytes if kind == "array" else len(value)
    assert n == (size // 8 * 8 if kind == "array" else size if kind == "bytes" else size // 36)
    del value
store.close()
print(json.dumps({"base": base, "peak": peak(), "held": held}))
"""


def step(url: str, kind: str, what: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", STEP, url, kind, what, str(SIZE)],
                         capture_output=True, text=True, env=subprocess_env(), timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["bytes", "array", "list"])
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_large_result_saved_and_loaded_in_bounded_memory(
        backend: str, kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        namespace: str) -> None:
    url = (f"{request.getfixturevalue('redis_server')}?namespace={namespace}"
           if backend == "redis" else str(tmp_path / "store"))
    saved = step(url, kind, "save")
    loaded = step(url, kind, "load")
    # the peak above the process's start, in sizes of the value as it sits in that process
    report = {k: round((v["peak"] - v["base"]) / v["held"], 2) for k, v in
              (("save", saved), ("load", loaded))}
    print(f"\n{backend} {kind}: peak above the start, in value sizes: {report} "
          f"(value: {saved['held'] / MiB:.0f} MiB)")
    assert report["save"] <= LIMIT and report["load"] <= LIMIT, report
    if backend == "redis":
        import redis

        r = redis.Redis.from_url(request.getfixturevalue("redis_server"))
        keys = list(r.scan_iter(match=f"{namespace}*"))
        if keys:
            r.delete(*keys)
        r.close()


BIG_JUGFILE = """
import os, resource
from ajug import TaskGenerator

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

@TaskGenerator
def big(size):
    base = peak()
    return base, os.urandom(1 << 16) * (size >> 16)

@TaskGenerator
def check(made):
    base, data = made
    return base, peak(), len(data), os.getpid()

result = check(big(%d))
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.redis
def test_worker_returning_a_large_result_stays_in_bounded_memory(
        tmp_path: Path, redis_server: str, namespace: str) -> None:
    """The whole worker path on redis (the store that peaked at 3 times): the task returns
    512 MiB, the worker saves it, its dependent (on the same worker) loads it."""
    jugfile = tmp_path / "big.py"
    jugfile.write_text(BIG_JUGFILE % SIZE)
    store = f"{redis_server}?namespace={namespace}"
    out = subprocess.run(ajug_cmd("run", str(jugfile), "-j", "1", "--store", store,
                                  "--no-progress"),
                         env=env(), capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    code = ("import json, ajug\n"
            f"_, ns = ajug.init({str(jugfile)!r}, {store!r})\n"
            "print(json.dumps(ajug.value(ns['result'])))\n")
    got: Any = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                              text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    base, peak, n, _pid = json.loads(got.stdout.strip().splitlines()[-1])
    assert n == SIZE
    ratio = (peak - base) / SIZE
    print(f"\nworker peak above its start: {ratio:.2f} times the result")
    assert ratio <= LIMIT
