"""What every ``ajug`` command shares on its command line: checked option types, ``-v``/``-q``/
``-h`` (accepted before the command and after it), the logging they set up, the options of a
coordinator and of its clients, and how an address and TLS options are read.

It imports only click, ssl and ``ajug.errors``, so that every command module can use it
without importing another command module.

Option values are checked by their click type before anything starts: a bad port, a negative
TTL or ``-j 0`` is one line and exit status 2, never a server that wraps the port modulo 65536 or
a run that waits forever. ``ajug.config`` converts values from ``ajug.toml``, ``[tool.ajug]`` and
``AJUG_*`` variables with the same types, so they get the same checks.
"""

from __future__ import annotations

import logging
import math
import ssl
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import UsageError

#: ``-h`` as well as ``--help``, on the group and on every command.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

_LEVEL = {"verbose": 0, "quiet": 0}


class Seconds(click.ParamType):
    """A finite number of seconds within bounds (``nan`` and ``inf`` are refused: a lease that
    never expires, or a timeout that is not a number, is a mistake)."""

    name = "seconds"

    def __init__(self, minimum: float = 0.0, open_min: bool = False) -> None:
        self.minimum = minimum
        self.open_min = open_min

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
        else:
            try:
                v = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if v < self.minimum or (self.open_min and v == self.minimum):
            bound = "more than" if self.open_min else "at least"
            self.fail(f"{v:g} is not {bound} {self.minimum:g} seconds", param, ctx)
        return v

    def __repr__(self) -> str:
        return f"Seconds(>{'' if self.open_min else '='}{self.minimum:g})"


#: A TCP port; 0 asks the system for a free one.
PORT = click.IntRange(0, 65535)
#: A number of processes, tasks, attempts: at least one.
AT_LEAST_ONE = click.IntRange(min=1)
#: A count that may be zero (retries, tasks leased ahead).
AT_LEAST_ZERO = click.IntRange(min=0)
#: A duration that must be positive (a lease TTL, a refresh interval).
POSITIVE_SECONDS = Seconds(0.0, open_min=True)
#: A duration that may be zero (how long to keep trying: 0 tries once).
SECONDS = Seconds(0.0)

EXIT_STATUSES = """\b
Exit status:
  0    every task is done
  1    some task failed, or is blocked behind one (the rest of the graph ran;
       `ajug status JUGFILE --failed` shows why)
  2    a usage error: a bad option, jugfile or store
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so that log lines go above a live
    progress display (rich swaps ``sys.stderr`` while it shows one) instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _apply_level() -> None:
    verbose, quiet = _LEVEL["verbose"], _LEVEL["quiet"]
    if verbose == 0 and quiet == 0:
        level = logging.WARNING
    else:
        level = max(logging.INFO - 10 * verbose + 10 * quiet, logging.DEBUG)
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s",
                                         datefmt="%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level)


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    """Logging at the level of the ``-v``/``-q`` flags seen so far (before the command)."""
    _LEVEL["verbose"], _LEVEL["quiet"] = verbose, quiet
    _apply_level()


def verbosity() -> int:
    """How many ``-v`` were given, before and after the command (workers get as many)."""
    return _LEVEL["verbose"]


def quietness() -> int:
    return _LEVEL["quiet"]


def _more(kind: str) -> Callable[[click.Context, click.Parameter, int], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: int) -> None:
        if value:
            _LEVEL[kind] += value
            _apply_level()

    return callback


def verbosity_options(f: Any) -> Any:
    """``-v``/``-q`` after the command too (``ajug run x.py -v``), adding to those before it."""
    f = click.option("-q", "--quiet", count=True, expose_value=False, callback=_more("quiet"),
                     help="Less output.")(f)
    return click.option("-v", "--verbose", count=True, expose_value=False,
                        callback=_more("verbose"),
                        help="More log output (-vv: debug); tracebacks on errors.")(f)


# -- addresses and TLS ------------------------------------------------------------------------
def parse_address(addr: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port``."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        if default_port is None:
            raise UsageError(f"address {addr!r} has no port: write HOST:PORT, e.g. 127.0.0.1:5555")
        host, port = addr, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
        if not 0 <= p < 65536:
            raise ValueError
    except ValueError:
        raise UsageError(f"address {addr!r}: port must be a number from 0 to 65535") from None
    return host, p


def tls_context(server: bool, cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext | None:
    """The TLS context of ``--tls-cert/--tls-key/--tls-ca``, or None (no TLS) without them."""
    if not (cert or ca):
        return None
    try:
        if server:
            if not cert:
                raise UsageError("--tls-cert is needed to serve TLS (and --tls-key unless the cert has it)")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            if ca:
                ctx.load_verify_locations(ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            # identity is proven by the HMAC handshake; the CA pins who may serve
            ctx.check_hostname = False
            if cert:
                ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"TLS setup failed: {e}") from None
    return ctx


# -- options shared by several commands -------------------------------------------------------
def _apply(f: Any, opts: list[Any]) -> Any:
    for o in reversed(opts):
        f = o(f)
    return f


def coordinator_options(f: Any) -> Any:
    """``serve`` and ``run``: the store, leases, retries, tokens and TLS of a coordinator."""
    return _apply(f, [
        click.option("--store", "store_url", default=None, help="Store URL: a directory (default: <jugfile stem>.ajugdata beside the jugfile) or redis://host:port/db."),
        click.option("--lease-ttl", type=POSITIVE_SECONDS, default=30.0, show_default=True, help="Seconds a lease lives without renewal."),
        click.option("--retries", type=AT_LEAST_ZERO, default=0, show_default=True, help="Times a task that raised (or timed out) is retried, for tasks without retries of their own."),
        click.option("--task-timeout", type=POSITIVE_SECONDS, default=None, help="Seconds a task may run before its worker stops it, for tasks without a timeout of their own (default: none)."),
        click.option("--max-attempts", type=AT_LEAST_ONE, default=3, show_default=True, help="Worker losses before a task is marked failed as suspected of killing workers."),
        click.option("--keep-going/--fail-fast", default=True, show_default=True, help="After a task fails, run the rest of the graph (default) or stop."),
        click.option("--token-file", type=click.Path(dir_okay=False), default=None, help="File holding the shared token (or set AJUG_TOKEN)."),
        click.option("--token", default=None, hidden=True),
        click.option("--read-token-file", type=click.Path(dir_okay=False), default=None, help="File holding a read-only token for status clients (or AJUG_READ_TOKEN)."),
        click.option("--tls-cert", default=None, help="PEM certificate to serve TLS."),
        click.option("--tls-key", default=None, help="PEM private key for --tls-cert."),
        click.option("--tls-ca", default=None, help="CA bundle: require client certificates signed by it."),
        verbosity_options,
    ])


def dashboard_options(f: Any) -> Any:
    f = click.option("--dashboard-host", default="127.0.0.1", show_default=True,
                     help="Address for the dashboard (it has no authentication).")(f)
    return click.option("--dashboard", type=PORT, default=None, metavar="PORT",
                        help="Serve a live web dashboard and /metrics on this port (0: a free one).")(f)


def client_options(f: Any) -> Any:
    """How to reach a coordinator: the same token and TLS options as `ajug status`."""
    return _apply(f, [
        click.option("--token-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the shared token (or set AJUG_TOKEN)."),
        click.option("--token", default=None, hidden=True),
        click.option("--tls-ca", default=None, help="CA bundle to verify the coordinator (enables TLS)."),
        click.option("--tls-cert", default=None, help="Client certificate, if the coordinator requires one."),
        click.option("--tls-key", default=None, help="Private key for --tls-cert."),
    ])
