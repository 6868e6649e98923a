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


def _timed(b: Any, engine: str, kind: str, rep: int, wl: str, n: int,
           command: list[str]) -> tuple[dict[str, Any], str, str]:
    """One status command on a fresh store: its measurement, its output and its log tag."""
    from benchmarks import run as R

    tag = f"status-{engine}-{kind}-{rep}"
    store = b.store(engine, kind, tag)
    rus = b.tmp / f"{tag}.rusage"
    where = ["--store", store] if engine == "ajug" else ["--jugdir", store, "--will-cite"]
    cmd = [sys.executable, "-c", R.WRAP, str(rus), engine, "status", str(b.jugfile(wl)),
           *where, *command]
    t0 = time.perf_counter()
    p = b.spawn(cmd, b.wl_env(wl, engine, n), tag)
    (rc,) = R._wait([p], b.timeout(wl, n))
    out: dict[str, Any] = {"wall_s": time.perf_counter() - t0, **R._rusage(rus)}
    b.drop_store(kind, store)
    if rc not in (0, 1):  # jug status exits 1 while tasks are left to run
        out["error"] = f"exit {rc}: {b.log_tail(tag)}"
    return out, (b.tmp / f"{tag}.out").read_text(), tag


def run_ajug(b: Any, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    out, text, _ = _timed(b, "ajug", kind, rep, wl, n, ["--json"])
    if "error" not in out:
        st = json.loads(text)
        if st["tasks"] != n or st["totals"]["ready"] != n:
            out["error"] = f"status counted {st['tasks']} tasks, {st['totals']['ready']} ready"
    return out


def run_jug(b: Any, wl: str, kind: str, n: int, rep: int, last: bool) -> dict[str, Any]:
    out, text, tag = _timed(b, "jug", kind, rep, wl, n, [])
    total = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+Total", text, re.M)
    if "error" not in out and total is None:
        out["error"] = f"no totals from jug status: {b.log_tail(tag)}"
    elif total is not None and int(total.group(3)) != n:
        out["error"] = f"jug status counted {total.group(3)} ready of {n}"
    return out
