"""``barrier()`` and ``bvalue()``: stop loading the jugfile until earlier results exist.

Loading stops by raising ``BarrierError``; the loader catches it and records that the graph is
partial. The coordinator serves what it has and loads the jugfile again once that is all done.
Existence is asked of the store in one batch, not per task.
"""

from __future__ import annotations

from typing import Any

from .task import Task, alltasks, value


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
    from .io import NoLoad

    out: list[Task] = []
    queue: list[Any] = [obj]
    while queue:
        e = queue.pop()
        if isinstance(e, NoLoad):
            continue
        if isinstance(e, Task):
            out.append(e)
        elif hasattr(e, "__jug_dependencies__"):
            queue.extend(e.__jug_dependencies__())
        elif isinstance(e, (list, tuple)):
            queue.extend(e)
        elif isinstance(e, dict):
            queue.extend(e.values())
    return out


def bvalue(t: Any) -> Any:
    """``barrier()`` restricted to ``t``'s inputs, then ``value(t)``."""
    if not _all_exist(_needed_tasks(t)):
        raise BarrierError
    return value(t)
