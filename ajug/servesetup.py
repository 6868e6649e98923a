"""What ``ajug serve`` and ``ajug run`` do alike around a coordinator: its settings from their
options (the tokens leave the environment there), the dashboard and the worker-job launcher
started beside it, each closing the coordinator if it cannot start.

The coordinator is imported when it is needed, so that ``ajug work`` does not load it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .access import check_listen, forget_tokens, read_token
from .cliparams import tls_context
from .errors import UsageError

if TYPE_CHECKING:
    from .serving import Settings

log = logging.getLogger("ajug")


def coordinator_settings(jugfile: str, store_url: str | None, host: str, port: int,
                         made_token: bytes | None = None, **kw: Any) -> Settings:
    """The coordinator's settings from ``coordinator_options``; the tokens leave the
    environment here (``forget_tokens``)."""
    from .jugfile import check_jugfile, default_store_url
    from .serving import Settings

    path = check_jugfile(jugfile)
    token = made_token if made_token is not None else read_token(kw["token"], kw["token_file"])
    if kw["token"]:
        log.warning("--token is visible in the process list; prefer AJUG_TOKEN or --token-file")
    check_listen(host, port, token)  # before anything is opened; check_bound after binding
    rt = read_token(None, kw["read_token_file"], "AJUG_READ_TOKEN") or None
    forget_tokens()
    return Settings(
        jugfile=str(path),
        store_url=store_url or default_store_url(path),
        host=host,
        port=port,
        token=token,
        read_token=rt,
        lease_ttl_s=kw["lease_ttl"],
        max_attempts=kw["max_attempts"],
        retries=kw["retries"],
        task_timeout_s=kw.get("task_timeout"),
        fail_fast=not kw["keep_going"],
        ssl=tls_context(True, kw["tls_cert"], kw["tls_key"], kw["tls_ca"]),
    )


async def start_dashboard(coord: Any, port: int | None, host: str) -> Any:
    """Start the dashboard beside the coordinator: its server (None without), which a process
    leaves to its exit, and whoever runs coordinators in a longer-lived process closes."""
    if port is None:
        return None
    from .dashboard import dashboard_url
    from .dashboard import start_dashboard as start
    from .serving import bind_error

    try:
        server = await start(coord, host, port)
    except OSError as e:
        await coord.close()
        raise UsageError(bind_error(host, port, e, "serve the dashboard on", "--dashboard PORT",
                                    "--dashboard-host")) from None
    print(f"ajug: dashboard on {dashboard_url(server, host)}", flush=True)
    return server


async def start_launcher(coord: Any, lo: Any) -> Any:
    """The launcher of --workers (None without); the coordinator closes if it cannot start."""
    if lo is None:
        return None
    from .launch.options import start_launcher as start

    try:
        launcher = await start(coord, lo)
    except BaseException:
        await coord.close()
        raise
    print(f"ajug: workers: {lo.label} jobs named {launcher.name} (at most {lo.max_jobs}, "
          f"{lo.cpus} CPU(s) each), scripts and logs in {launcher.job_dir}", flush=True)
    return launcher
