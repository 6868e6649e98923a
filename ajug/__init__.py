"""ajug: Jug's task model on an asyncio coordinator with leases.

Write a jugfile as for jug (``from ajug import TaskGenerator``), then ``ajug run jugfile.py``.
"""

from __future__ import annotations

from typing import Any

from . import mapreduce
from .barrier import BarrierError, barrier, bvalue
from .compound import CompoundTask, CompoundTaskGenerator
from .errors import AjugError
from .jugfile import is_jug_running
from .options import set_jugdir
from .task import (
    CachedFunction,
    Task,
    TaskGenerator,
    Tasklet,
    iteratetask,
    recursive_dependencies,
    return_tuple,
    value,
)

__version__ = "0.1.0"

__all__ = [
    "connect",
    "run",
    "AjugError",
    "BarrierError",
    "CachedFunction",
    "CompoundTask",
    "CompoundTaskGenerator",
    "Task",
    "TaskGenerator",
    "Tasklet",
    "barrier",
    "bvalue",
    "init",
    "is_jug_running",
    "iteratetask",
    "mapreduce",
    "recursive_dependencies",
    "return_tuple",
    "set_jugdir",
    "value",
]


def init(jugfile: str = "jugfile.py", store: Any = None) -> tuple[Any, dict[str, Any]]:
    """Load a jugfile and open its store, as jug's ``init``: returns ``(store, namespace)``.

    ``store`` is a URL or a Store (default: the file store beside the jugfile). Afterwards
    ``value(task)`` reads results from that store, so a script can use what a run computed.
    """
    from .jugfile import default_store_url, load_jugfile
    from .stores import open_store

    if store is None or isinstance(store, str):
        store = open_store(store or default_store_url(jugfile))
    loaded = load_jugfile(jugfile, store)
    return store, loaded.module.__dict__


def __getattr__(name: str) -> Any:
    """``ajug.run`` and ``ajug.connect`` (ajug/api.py), imported when first used: a jugfile's
    ``from ajug import TaskGenerator`` does not load the engine."""
    if name in ("run", "connect", "RunResult", "Client"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ajug' has no attribute {name!r}")
