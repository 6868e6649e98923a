"""Loading a jugfile: run it as a module and collect the tasks it defines.

The jugfile is executed as a module named after its file (``primes.py`` -> ``primes``), as jug
does, so task names (``primes.is_prime``) and identities match jug's. The module is put in
``sys.modules`` even when a barrier stops it half way, so that its functions can be pickled.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from . import task as _task
from .barrier import BarrierError
from .codeship import code_roots
from .errors import AjugError, JugfileError
from .hashing import task_keys
from .options import note_jugfile
from .task import Task

log = logging.getLogger(__name__)


@dataclass
class LoadedJugfile:
    path: Path
    module: types.ModuleType
    #: unique tasks (first occurrence of each identity), in creation order
    tasks: list[Task]
    #: loading stopped at a barrier: more tasks will appear once these are done
    hit_barrier: bool
    #: where the jugfile's own code lives: its directory and what it added to ``sys.path``
    #: (workers import modules from there; see codeship)
    code_roots: list[str] = field(default_factory=list)
    loads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    #: each task's identity to its position in ``tasks`` (``build_graph`` takes it as it is)
    index: dict[str, int] = field(default_factory=dict)


#: True inside an ``ajug`` command (its coordinator, workers, status...), as jug's flag is
#: inside ``jug``: jugfiles use ``is_jug_running()`` to do extra work only when run by hand.
_running = False


#: From this many tasks, a jugfile's Task objects take long to free: a command that leaves them
#: alive to the end exits without freeing them one by one (``cli.main``; about 0.9 s for a
#: million, a quarter of ``ajug status``). ``loading.release_tasks`` frees them early instead.
BIG_GRAPH = 100_000
big_graph_alive = False


def is_jug_running() -> bool:
    """True when this code runs under ajug (not a plain ``python script.py``)."""
    return _running


def set_running(flag: bool = True) -> None:
    global _running
    _running = flag


def default_store_url(jugfile: str | os.PathLike[str]) -> str:
    """``<stem>.ajugdata`` beside the jugfile: the embedded file store."""
    p = Path(jugfile).resolve()
    return str(p.with_name(p.stem + ".ajugdata"))


def check_jugfile(jugfile: str | os.PathLike[str]) -> Path:
    p = Path(jugfile)
    if not p.exists():
        raise JugfileError(f"jugfile {str(p)!r} not found: give the path to your jugfile (a .py file)")
    if p.is_dir():
        raise JugfileError(f"{str(p)!r} is a directory: give the path to your jugfile (a .py file)")
    return p.resolve()


def load_jugfile(jugfile: str | os.PathLike[str], store: Any) -> LoadedJugfile:
    """Run the jugfile with ``store`` as ``Task.store`` and return its tasks.

    Raises ``JugfileError`` (with the jugfile's traceback in ``.details``) when it raises.
    The cyclic garbage collector waits meanwhile: its full passes over every object made so
    far took two thirds of running a million-task jugfile (0.85 of 1.24 s); garbage in
    cycles made meanwhile is collected by its next pass, as soon as the load is done.
    """
    with gc_paused():
        return _load(jugfile, store)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a while (nested: the outermost turns it back on).
    The coordinator keeps it off until the Task objects are released (``loading``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load(jugfile: str | os.PathLike[str], store: Any) -> LoadedJugfile:
    path = check_jugfile(jugfile)
    modname = path.stem
    module = types.ModuleType(modname)
    module.__file__ = str(path)
    sys.modules[modname] = module
    jugdir = str(path.parent)
    if jugdir not in sys.path:
        sys.path.insert(0, jugdir)
    path_before = set(sys.path)
    _task.reset()
    Task.store = store
    note_jugfile(str(path), getattr(store, "url", "") or "")
    hit_barrier = False
    try:
        code = compile(path.read_bytes(), str(path), "exec")
        exec(code, module.__dict__)
    except BarrierError:
        hit_barrier = True
    except AjugError:
        raise
    except SystemExit as e:
        raise JugfileError(f"jugfile {path.name} called sys.exit({e.code}) while loading") from None
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        err = JugfileError(
            f"jugfile {path.name} raised {type(e).__name__}: {e} (run with -v for the traceback)",
            details=tb,
        )
        raise err from None
    tasks, index = unique_tasks_indexed(_task.alltasks)
    global big_graph_alive
    big_graph_alive = big_graph_alive or len(tasks) >= BIG_GRAPH
    roots = code_roots(jugdir, [p for p in sys.path if p not in path_before])
    return LoadedJugfile(path=path, module=module, tasks=tasks, hit_barrier=hit_barrier,
                         code_roots=roots, index=index)


def unique_tasks(tasks: list[Task]) -> list[Task]:
    """First task of each identity, in order."""
    return unique_tasks_indexed(tasks)[0]


def unique_tasks_indexed(tasks: list[Task]) -> tuple[list[Task], dict[str, int]]:
    """First task of each identity, in order, and each identity's position among them.
    Identities are computed in creation order, so each dependency's is cached before its
    dependents need it (no deep recursion on long chains)."""
    keys = task_keys(tasks, Task)
    index = dict(zip(keys, range(len(keys))))
    if len(index) == len(keys):  # no task made twice: no loop per task
        return list(tasks), index
    seen: set[str] = set()
    add = seen.add
    out: list[Task] = []
    append = out.append
    for t, k in zip(tasks, keys):
        if k not in seen:
            add(k)
            append(t)
    return out, dict(zip(map(_KEY, out), range(len(out))))


_KEY = attrgetter("_key")
