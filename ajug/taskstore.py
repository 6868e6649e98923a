"""Where ``Task.store`` lives: one store for the whole process, as in jug, unless a context
(a thread, an asyncio task) has taken a store of its own with ``isolate``.

A test that runs a coordinator and a worker in one process isolates the worker's thread: the
worker's caching store and the coordinator's plain one then never replace each other, while a
real worker or coordinator process, which never isolates, keeps one store for all its threads.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

_UNSET: Any = object()
_local: ContextVar[Any] = ContextVar("ajug_task_store", default=_UNSET)
_shared: list[Any] = [None]


def current() -> Any:
    """This context's store if it has one, else the process's."""
    store = _local.get()
    return _shared[0] if store is _UNSET else store


def set_current(store: Any) -> None:
    """Set this context's store if it has one, else the process's."""
    if _local.get() is _UNSET:
        _shared[0] = store
    else:
        _local.set(store)


def isolate(store: Any = None) -> None:
    """From now on this context (and those copied from it) has a store of its own: setting
    ``Task.store`` here is seen only here."""
    _local.set(store)


class StoreMeta(type):
    """Makes ``Task.store`` (read or set on the class, as jug's users do) the current store."""

    @property
    def store(cls) -> Any:
        return current()

    @store.setter
    def store(cls, value: Any) -> None:
        set_current(value)


class InstanceStore:
    """``task.store`` on an instance reads the same."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return current()
