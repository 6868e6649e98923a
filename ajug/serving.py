"""What a coordinator is started with (``Settings``), and the one line that says why it cannot
listen. Kept apart from the coordinator so the CLI can build settings without importing it."""

from __future__ import annotations

import errno
import ssl as _ssl
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PORT = 5555
#: upper bounds of the task duration histogram (Prometheus buckets, seconds)
DURATION_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


@dataclass
class Settings:
    jugfile: str
    store_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: bytes = b""
    read_token: bytes | None = None
    lease_ttl_s: float = 30.0
    max_attempts: int = 3
    retries: int = 0
    #: default timeout of a task without one of its own (``--task-timeout``); None: none
    task_timeout_s: float | None = None
    stay: bool = False
    fail_fast: bool = False
    ssl: _ssl.SSLContext | None = None
    max_frame_bytes: int = 64 * 1024 * 1024
    handshake_timeout_s: float = 10.0
    finish_grace_s: float = 3.0
    resume_grace_s: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)


def bind_error(host: str, port: int, e: OSError, what: str = "listen on",
               port_flag: str = "--port", host_flag: str = "--host") -> str:
    """One line for a socket that cannot listen, saying what to change."""
    where = f"cannot {what} {host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (f"{where}: the port is in use (another `ajug serve`?); choose another "
                f"{port_flag}, or 0 for a free one")
    if e.errno == errno.EACCES:
        return (f"{where}: permission denied (ports below 1024 need privileges); choose a "
                f"{port_flag} from 1024 to 65535, or 0 for a free one")
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {host} is not an address of this machine ({host_flag})"
    return f"{where}: {e.strerror or e}"
