"""``ajug shell``: the jugfile's names, ``value``, ``store``, ``tasks`` and ``invalidate`` in an
interactive Python (IPython if installed), as jug's shell.

An ajug error in the shell (``value()`` of a task not computed yet, an ``invalidate`` target
that matches nothing) is one line saying what to do, not a traceback through ajug's code.
"""

from __future__ import annotations

import code
import sys
from typing import Any

import click

from .errors import AjugError, NotComputed, ResultMissing
from .failures import clear_records
from .offline import Offline, downstream, remove, select


def shell_namespace(off: Offline, jugfile: str, store_url: str | None = None) -> dict[str, Any]:
    from .task import Task, Tasklet, value

    where = f"{jugfile} --store {store_url}" if store_url else jugfile

    g = off.graph
    by_key = {t.key: t for t in off.loaded.tasks}

    def value_(what: Any) -> Any:
        """The value of a task (or of the tasks inside a list, dict, ...), loaded from the store."""
        try:
            return value(what)
        except ResultMissing:
            base = what.base if isinstance(what, Tasklet) else what
            name = f"{base.name} {base.key[:12]}" if isinstance(base, Task) else "a task it needs"
            raise NotComputed(f"{name} is not computed yet: `ajug run {where}` computes it "
                              f"(`ajug status {where} --failed` says if it failed)") from None

    def invalidate_(what: Any) -> int:
        """Remove the results of a task (or a function name / identity prefix) and downstream."""
        if isinstance(what, Tasklet):
            what = what.base
        seeds = {g.index[what.key]} if isinstance(what, Task) else select(g, [str(what)])
        hit = downstream(g, seeds)
        for i in hit:
            t = by_key.get(g.keys[i])
            if t is not None:
                t.unload()
        clear_records(off.store, [g.keys[i] for i in hit])
        return remove(off.store, [g.keys[i] for i in hit])

    ns = dict(off.loaded.module.__dict__)
    ns.update(value=value_, store=off.store, tasks=off.loaded.tasks, invalidate=invalidate_,
              graph=g)
    return ns


class _Console(code.InteractiveConsole):
    """The standard console, with ajug's errors as one line."""

    def showtraceback(self) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, AjugError):
            self.write(f"ajug: {e}\n")
            return
        super().showtraceback()


def _ipython(ns: dict[str, Any]) -> bool:
    """IPython with ajug's errors as one line; False if it is not installed."""
    try:
        from IPython.terminal.ipapp import TerminalIPythonApp
    except ImportError:
        return False
    app = TerminalIPythonApp.instance(user_ns=ns)  # what IPython.start_ipython does
    app.initialize(["--no-banner"])

    def one_line(shell: Any, etype: Any, evalue: Any, tb: Any, tb_offset: Any = None) -> None:
        print(f"ajug: {evalue}", file=sys.stderr)

    shell = app.shell
    if shell is not None:
        shell.set_custom_exc((AjugError,), one_line)
    app.start()
    return True


def start_shell(ns: dict[str, Any], banner: str, plain: bool) -> None:
    if not plain:
        click.echo(banner, err=True)
        if _ipython(ns):
            return
        banner = ""
    if not sys.stdin.isatty():  # a piped script: its output without prompts
        sys.ps1 = sys.ps2 = ""
    _Console(locals=ns).interact(banner=banner, exitmsg="")
