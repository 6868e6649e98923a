"""What a worker host offers (``--resources``), which host group it is, and how a worker
process whose task timed out is replaced.

Every process of one ``ajug work -j N`` (or of one ``ajug run``) is one host group and shares
one offer: the supervisor passes its own group to its children (``--group``). A host that says
nothing offers its CPU count (``cpus``) and physical memory (``memory``), and nothing else.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from .access import token_fd
from .errors import UsageError
from .local import worker_command
from .taskopts import parse_resources

log = logging.getLogger(__name__)


def physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not on Linux
        return None


def default_group() -> str:
    """This process's own host group: host name and pid (one ``ajug work`` invocation)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def host_offer(resources: str | None, group: str | None) -> dict[str, Any]:
    """The ``offer`` of the lease protocol: ``{"group": ..., "resources": {...}}``."""
    offered: dict[str, float] = {"cpus": float(os.cpu_count() or 1)}
    mem = physical_memory()
    if mem:
        offered["memory"] = float(mem)
    if resources:
        try:
            offered.update(parse_resources(resources))
        except (ValueError, TypeError) as e:
            raise UsageError(f"--resources {resources!r}: {e}") from None
    return {"group": group or default_group(), "resources": offered}


def child_args(resources: str | None, group: str) -> list[str]:
    """What a supervisor adds to its workers' ``work`` arguments: its group and offer."""
    return ["--group", group, "--supervised", *(["--resources", resources] if resources else [])]


def without_token(argv: list[str]) -> list[str]:
    """``argv`` less the options that carry the token itself (it goes through a descriptor)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--token", "--token-fd"):
            skip = True
            continue
        if a.startswith(("--token=", "--token-fd=")):
            continue
        out.append(a)
    return out


def reexec(token: bytes, argv: list[str] | None = None) -> None:
    """Replace this process with the same ``ajug`` command (an ``ajug work`` no supervisor
    watches, whose task timed out): the same pid, so the same host group; the token through
    an inherited descriptor."""
    args = without_token(sys.argv[1:] if argv is None else argv)
    fd = token_fd(token)
    os.set_inheritable(fd, True)
    cmd = [*worker_command([]), *args, "--token-fd", str(fd)]
    log.info("replacing this worker process")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
