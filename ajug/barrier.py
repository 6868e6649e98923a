"""``barrier()`` and ``bvalue()``: stop loading the jugfile until earlier results exist.

Loading stops by raising ``BarrierError``; the loader catches it and records that the graph is
partial. The coordinator serves what it has and loads the jugfile again once that is all done.
Existence is asked of the store in one batch, not per task.
"""

from __future__ import annotations

from typing import Any

from .task import Task, alltasks, value
from .walk import tasks_in


class BarrierError(Exception):
    """Raised inside a jugfile at a barrier whose inputs are not all computed yet."""


def _all_exist(tasks: list[Task]) -> bool:
    missing = [t for t in tasks if not t.is_loaded()]
    if not missing:
        return True
    store = Task.store
    if store is None:
        return False
    keys = list(dict.fromkeys(t.key for t in missing))
    return all(store.exists(keys))


def barrier() -> None:
    """Everything defined so far must be computed before the jugfile goes on."""
    if not _all_exist(list(alltasks)):
        raise BarrierError


def _needed_tasks(obj: Any) -> list[Task]:
    """The tasks whose results ``value(obj)`` reads (not those behind a NoLoad)."""
    return list(tasks_in([obj], skip_noload=True))


def bvalue(t: Any) -> Any:
    """``barrier()`` restricted to ``t``'s inputs, then ``value(t)``."""
    if not _all_exist(_needed_tasks(t)):
        raise BarrierError
    return value(t)
