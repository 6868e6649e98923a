"""What every result records besides its value: which function made it (and a hash of its
source, for telling results of older code apart), how long it ran, where and when."""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import time
from typing import Any

_SRC_HASHES: dict[int, tuple[Any, str]] = {}


def source_hash(f: Any) -> str:
    """A short hash of ``f``'s source (its bytecode when the source is gone), for stale checks."""
    given = getattr(f, "__ajug_src__", None)  # a stand-in for another function (compound)
    if type(given) is str:
        return given
    hit = _SRC_HASHES.get(id(f))
    if hit is not None and hit[0] is f:
        return hit[1]
    try:
        src = inspect.getsource(f).encode()
    except (OSError, TypeError):
        code = getattr(f, "__code__", None)
        src = code.co_code if code is not None else repr(f).encode()
    h = hashlib.sha1(src).hexdigest()[:16]
    _SRC_HASHES[id(f)] = (f, h)
    return h


def result_meta(t: Any, run_time_s: float | None = None, worker: str = "") -> dict[str, Any]:
    return {
        "func": t.name,
        "src": source_hash(t.f),
        "rt": run_time_s,
        "worker": worker or f"{socket.gethostname()}:{os.getpid()}",
        "ts": time.time(),
    }
