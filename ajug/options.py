"""jug's ``jug.options``, so that jugfiles which set ``default_options.<name>`` load unchanged.

Jugfiles tune jug from inside (``jug.options.default_options.execute_wait_cycle_time_secs = 1``).
Every name jug 2.7 defines is here with jug's default; assigning any name is accepted, as in jug.
What each means under ajug (the README's compatibility section has the same table):

- ``jugfile``, ``jugdir``: set by ajug when it loads a jugfile (the jugfile's path, the store's
  URL), so a jugfile that reads them sees where it runs. Assigning them changes nothing.
- ``execute_keep_going``: ajug keeps going after a failure by default; ``--fail-fast`` stops.
  The jugfile's value is not read (the command line decides).
- ``execute_wait_cycle_time``, ``execute_wait_cycle_time_secs``, ``execute_nr_wait_cycles``:
  how long a jug process polls for locked tasks and barriers. ajug's workers are told when work is
  ready, so nothing polls: accepted, no effect.
- ``aggressive_unload``: ajug's coordinator never holds results and workers keep a bounded cache:
  accepted, no effect.
- everything else (``pdb``, ``debug``, ``verbose``, ``short``, ``print_out``, ``will_cite``,
  ``status_*``, ``execute_name``, ``execute_pattern``, ...): jug's command-line settings, accepted,
  no effect (use ajug's own flags).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

__all__ = ["Options", "default_options", "set_jugdir", "JUG_DEFAULTS"]

#: jug 2.7's defaults: its main options and those of its execute and status subcommands
#: (plus the ``_secs`` spelling older jugfiles use).
JUG_DEFAULTS: dict[str, Any] = {
    "jugdir": "%(jugfile)s.jugdata",
    "jugfile": "jugfile.py",
    "subcommand": None,
    "aggressive_unload": False,
    "argv": None,
    "print_out": print,
    "short": False,
    "pdb": False,
    "verbose": "quiet",
    "debug": False,
    "will_cite": False,
    "execute_keep_going": False,
    "execute_keep_failed": False,
    "execute_name": None,
    "execute_pattern": None,
    "execute_wait_cycle_time": 12.0,
    "execute_wait_cycle_time_secs": 12,
    "execute_nr_wait_cycles": 150,
    "execute_no_check_environment": False,
    "status_cache": False,
    "status_cache_clear": False,
    "status_cache_file": ".jugstatus.sqlite3",
}


class Options:
    """Chained options, as jug's: a name not set here is looked up in ``next``.

    ``autoinit``, if given, is called once with this object before the first lookup of a name
    that is not set (jug fills its defaults that way)."""

    def __init__(self, next: Options | None, autoinit: Callable[[Options], None] | None = None):
        self.next = next
        self._autoinit = autoinit

    def update(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            setattr(self, k, v)

    def copy(self) -> Options:
        return copy.deepcopy(self)

    def __getattr__(self, name: str) -> Any:
        if name in ("__deepcopy__", "_autoinit") or name.startswith("__"):
            raise AttributeError(name)
        d = self.__dict__
        init = d.get("_autoinit")
        if init:
            d["_autoinit"] = None
            init(self)
        if name in d:
            return d[name]
        nxt = d.get("next")
        if nxt is None:
            raise AttributeError(name)
        return getattr(nxt, name)


def _load_defaults(opt: Options) -> None:
    for k, v in JUG_DEFAULTS.items():
        opt.__dict__.setdefault(k, v)


default_options = Options(None, autoinit=_load_defaults)


def note_jugfile(jugfile: str, store_url: str) -> None:
    """Called by ajug as it loads a jugfile: what the jugfile reads back is where it runs."""
    _load_defaults(default_options)
    default_options.__dict__["_autoinit"] = None
    default_options.__dict__.update(jugfile=jugfile, jugdir=store_url)


def set_jugdir(jugdir: Any) -> Any:
    """jug's ``set_jugdir``: open a store (a URL, a path, ``"dict_store"`` for an in-memory one,
    or a store object) and make it the one ``value()`` reads from. Returns the store."""
    from .stores import open_store
    from .task import Task

    if jugdir is None:
        jugdir = "jugdata"
    if isinstance(jugdir, str):
        store = open_store("memory:" if jugdir == "dict_store" else jugdir)
    else:
        store = jugdir
    Task.store = store
    return store
