"""CompoundTask: a function that builds a sub-graph, standing for it once its result exists.

``CompoundTask(f, *args)`` has the identity of ``Task(f, *args)``. If that result is in the
store, the compound is just that stored result and ``f`` is never called, so the sub-graph's
(possibly thousands of) tasks are not even created. Otherwise ``f(*args)`` builds the sub-graph
now and the compound is a task that returns the sub-graph's result and saves it under the
compound's identity, so that the next load takes the short path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .resultmeta import source_hash
from .task import Task, alltasks

__all__ = ["CompoundTask", "CompoundTaskGenerator", "compound_task_execute"]


def compound_task_execute(x: Any, h: Any) -> Any:
    """What the compound task runs: the value of the sub-graph (``h`` is only its identity)."""
    return x


# jug's name, so that status shows what jug shows (the identity is the compound's own anyway)
compound_task_execute.__jug_name__ = "jug.compound.compound_task_execute"  # type: ignore[attr-defined]


class _Collector:
    """``compound_task_execute`` for the compound of one function: it records that function's
    source hash, so that the result it saves reads as made by the function's code (the next
    load finds it as ``Task(f, ...)``, and a stale check compares it with ``f``'s source)."""

    __jug_name__ = compound_task_execute.__jug_name__  # type: ignore[attr-defined]

    def __init__(self, src: str) -> None:
        self.__ajug_src__ = src

    def __call__(self, x: Any, h: Any) -> Any:
        return x

    def __repr__(self) -> str:
        return f"<compound_task_execute for source {self.__ajug_src__}>"


_COLLECTORS: dict[str, _Collector] = {}


def _collector(f: Callable[..., Any]) -> _Collector:
    """One collector per source (tasks of one function share their function entry)."""
    src = source_hash(f)
    got = _COLLECTORS.get(src)
    if got is None:
        got = _COLLECTORS[src] = _Collector(src)
    return got


def _forget(task: Task) -> None:
    """Remove ``task`` from ``alltasks`` (it is the last one created, unless ``f`` is odd)."""
    if alltasks and alltasks[-1] is task:
        alltasks.pop()
        return
    for i in range(len(alltasks) - 1, -1, -1):
        if alltasks[i] is task:
            del alltasks[i]
            return


def CompoundTask(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Task:
    """A task for ``f(*args, **kwargs)``, where ``f`` returns Tasks (or a structure of them).

    Loaded: ``Task(f, *args, **kwargs)`` with its stored result. Not loaded: the tasks ``f``
    creates, plus one task with the same identity that collects their result.
    """
    task = Task(f, *args, **kwargs)
    if task.can_load():
        return task
    _forget(task)
    h = task.key
    del task
    inner = f(*args, **kwargs)
    compound = Task(_collector(f), inner, h)
    compound._key = h  # stands for Task(f, *args, **kwargs): dependents hash it as such
    return compound


def CompoundTaskGenerator(f: Callable[..., Any]) -> Callable[..., Task]:
    """Decorator: calling ``f(*args)`` gives ``CompoundTask(f, *args)``."""

    @functools.wraps(f)
    def generator(*args: Any, **kwargs: Any) -> Task:
        return CompoundTask(f, *args, **kwargs)

    generator.f = f  # type: ignore[attr-defined]
    return generator
