"""What a worker process is started with (``ajug work``'s options, or a test's)."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerOptions:
    host: str
    port: int
    token: bytes = b""
    name: str = ""
    prefetch: int | None = None  # None: adapt to task duration
    connect_timeout_s: float = 60.0
    store_url: str | None = None
    ssl: _ssl.SSLContext | None = None
    max_tasks: int | None = None
    #: says connecting / connected / lost to the user (``ajug work``); None: log lines
    say: Callable[[str], None] | None = None
    #: exit (status 0) after this long connected with no task to run or report: frees a
    #: batch job's node while the run waits on something else (a barrier, a long reduce)
    idle_exit_s: float | None = None
    #: what this worker's host offers (``--resources``) and the host group sharing it (every
    #: process of one ``ajug work -j N``); None: tasks that need resources never come here
    offer: dict[str, Any] | None = None
    #: how a task past its timeout ends this process: ``replace()`` must not return (it
    #: re-executes the worker, or exits with EXIT_REPLACE for a supervisor to start a new one)
    replace: Callable[[], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
