"""What every ``ajug`` command shares on its command line: checked option types, ``-v``/``-q``/
``-h`` (accepted before the command and after it), and the logging they set up.

Option values are checked by their click type before anything starts: a bad port, a negative
TTL or ``-j 0`` is one line and exit status 2, never a server that wraps the port modulo 65536 or
a run that waits forever. ``ajug.config`` converts values from ``ajug.toml``, ``[tool.ajug]`` and
``AJUG_*`` variables with the same types, so they get the same checks.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import click

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
