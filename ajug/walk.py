"""Finding the Tasks an argument holds: the one walker behind the graph's edges, the hashing
check and barriers.

It imports nothing of ajug (hashing needs it, and the task model imports hashing): a Task is
recognised by its class's ``_ajug_task`` flag, a NoLoad by ``_ajug_noload``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def is_task(obj: Any) -> bool:
    return getattr(type(obj), "_ajug_task", False) is True


def tasks_in(roots: Iterable[Any], *, sets: bool = False, skip_noload: bool = False
             ) -> Iterator[Any]:
    """Each Task reachable from ``roots``, through lists, tuples, dicts (their values), sets
    (with ``sets``) and objects with ``__jug_dependencies__`` (Tasklets, mapreduce's block
    views, CustomHash); a Task is yielded, not entered. ``skip_noload``: not through a NoLoad,
    whose task the function loads itself if it wants (barriers need not wait for it).
    A Task reachable twice is yielded twice."""
    stack: list[Any] = [roots]
    containers: tuple[type, ...] = (list, tuple, set, frozenset) if sets else (list, tuple)
    while stack:
        for e in stack.pop():
            if is_task(e):
                yield e
            elif hasattr(e, "__jug_dependencies__") and not isinstance(e, type):
                if not (skip_noload and getattr(type(e), "_ajug_noload", False)):
                    stack.append(e.__jug_dependencies__())
            elif isinstance(e, containers):
                stack.append(e)
            elif isinstance(e, dict):
                stack.append(e.values())
