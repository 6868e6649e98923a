"""jug's exit checks (``exit_after_n_tasks``, ``exit_after_time``, ...), accepted so jugfiles load.

Under jug each ``jug execute`` process runs the jugfile and stops itself after N tasks or at a
time limit, which is how jug users fit a job into a batch system's wall time. Under ajug the
jugfile runs in the coordinator, not in the workers, so these calls cannot stop a worker: they
log once what to use instead (``ajug work --max-tasks N``; a worker that is killed at its wall
time loses only its running tasks, which run again elsewhere).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "exit_after_n_tasks",
    "exit_after_time",
    "exit_env_vars",
    "exit_if_file_exists",
    "exit_when_true",
]

_told: set[str] = set()


def _ignored(what: str) -> None:
    if what not in _told:
        _told.add(what)
        log.info("%s has no effect under ajug (the jugfile runs in the coordinator, not in the "
                 "workers): use `ajug work --max-tasks N` to bound a worker", what)


def exit_if_file_exists(fname: str) -> None:
    _ignored("exit_if_file_exists")


def exit_when_true(f: Callable[..., Any], function_takes_Task: bool = False) -> None:
    _ignored("exit_when_true")


def exit_after_n_tasks(n: int) -> None:
    _ignored("exit_after_n_tasks")


def exit_after_time(hours: float = 0, minutes: float = 0, seconds: float = 0) -> None:
    _ignored("exit_after_time")


def exit_env_vars(environ: Any = None) -> None:
    _ignored("exit_env_vars")
