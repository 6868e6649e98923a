"""jug's ``jug.hooks``: a registry of callbacks by event name, so jugfiles that register hooks load.

jug calls its hooks from the process that executes tasks (``execute.task-executed1`` after each
task, ...). ajug runs the jugfile in the coordinator and the tasks on workers, which never see
the jugfile's hooks: the registry is kept (``jug_hook`` calls what was registered, for scripts
that call it themselves) but ajug's engine calls no hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register_hook", "register_hook_once", "jug_hook", "reset_all_hooks"]

_hooks: dict[str, list[Callable[..., Any]]] = {}
_once: set[tuple[str, Any]] = set()


def register_hook(name: str, f: Callable[..., Any]) -> None:
    _hooks.setdefault(name, []).append(f)


def register_hook_once(name: str, key: Any, f: Callable[..., Any]) -> None:
    """Register ``f`` unless a hook with ``key`` was registered for ``name`` (a jugfile loaded
    again past a barrier registers its hooks again)."""
    if (name, key) in _once:
        return
    _once.add((name, key))
    register_hook(name, f)


def jug_hook(name: str, args: tuple[Any, ...] = ()) -> None:
    for f in _hooks.get(name, []):
        f(*args)


def reset_all_hooks() -> None:
    _hooks.clear()
    _once.clear()
