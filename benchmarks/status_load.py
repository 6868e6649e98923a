"""``ajug status JUGFILE`` against ``jug status`` on the same jugfile and the same kind of store:
what each engine takes to load a big jugfile, compute its identities and ask the store about
every task, without a coordinator. The store is fresh (nothing computed yet: the status a user
asks for when a run starts); one process each, wall time of the whole command.

    python -m benchmarks --workloads status [--status-n 1000000] --systems ajug,jug
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any


def run_ajug(b: Any, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    from benchmarks import run as R

    tag = f"status-ajug-{kind}-{rep}"
    store = b.store("ajug", kind, tag)
    rus = b.tmp / f"{tag}.rusage"
    cmd = [sys.executable, "-c", R.WRAP, str(rus), "ajug", "status", str(b.jugfile(wl)),
           "--store", store, "--json"]
    t0 = time.perf_counter()
    p = b.spawn(cmd, b.wl_env(wl, "ajug", n), tag)
    (rc,) = R._wait([p], b.timeout(wl, n))
    out: dict[str, Any] = {"wall_s": time.perf_counter() - t0, **R._rusage(rus)}
    if rc != 0:
        out["error"] = f"exit {rc}: {b.log_tail(tag)}"
    else:
        st = json.loads((b.tmp / f"{tag}.out").read_text())
        if st["tasks"] != n or st["totals"]["ready"] != n:
            out["error"] = f"status counted {st['tasks']} tasks, {st['totals']['ready']} ready"
    b.drop_store(kind, store)
    return out


def run_jug(b: Any, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    from benchmarks import run as R

    tag = f"status-jug-{kind}-{rep}"
    store = b.store("jug", kind, tag)
    rus = b.tmp / f"{tag}.rusage"
    cmd = [sys.executable, "-c", R.WRAP, str(rus), "jug", "status", str(b.jugfile(wl)),
           "--jugdir", store, "--will-cite"]
    t0 = time.perf_counter()
    p = b.spawn(cmd, b.wl_env(wl, "jug", n), tag)
    (rc,) = R._wait([p], b.timeout(wl, n))
    out: dict[str, Any] = {"wall_s": time.perf_counter() - t0, **R._rusage(rus)}
    total = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+Total",
                      (b.tmp / f"{tag}.out").read_text(), re.M)
    if rc not in (0, 1) or total is None:  # jug status exits 1 while tasks are left to run
        out["error"] = f"exit {rc}: {b.log_tail(tag)}"
    elif int(total.group(3)) != n:
        out["error"] = f"jug status counted {total.group(3)} ready of {n}"
    b.drop_store(kind, store)
    return out
