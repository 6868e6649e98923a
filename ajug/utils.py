"""Helpers for jugfiles: identity, CustomHash, timed_path, jug_execute, cached_glob.

As in ``jug.utils``. The tasks these make carry jug's names (``identity``,
``jug.utils.jug_execute``, ``jug.utils.glob_sort``: ``__jug_name__``) because a task's name is
part of its identity: a jug project that used them keeps its results under ajug.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from .hashing import hash_one
from .task import Task, TaskGenerator, Tasklet, value

__all__ = [
    "identity",
    "CustomHash",
    "hash_with_mtime_size",
    "timed_path",
    "jug_execute",
    "sync_move",
    "glob_sort",
    "cached_glob",
]


def _identity(x: Any) -> Any:
    return x


def identity(x: Any) -> Any:
    """A task whose result is ``x``: a large argument is hashed once instead of per use.

    A Task or Tasklet is returned unchanged (it already is a task).
    """
    if isinstance(x, (Task, Tasklet)):
        return x
    return Task(_identity, x)


_identity.__jug_name__ = "identity"  # type: ignore[attr-defined]  # jug's name (it is hashed)


class CustomHash:
    """``obj`` as a task argument, identified by ``hash_function(obj)`` instead of its content.

    ``hash_function`` must return ``bytes`` and be a strong hash: two objects with the same
    hash are taken to be the same input. The task receives ``value(obj)``, and a Task inside
    ``obj`` is still a dependency.
    """

    def __init__(self, obj: Any, hash_function: Callable[[Any], bytes]) -> None:
        self.obj = obj
        self.hash_function = hash_function

    def __jug_hash__(self) -> bytes:
        h = self.hash_function(self.obj)
        if not isinstance(h, (bytes, bytearray, memoryview)):
            name = getattr(self.hash_function, "__qualname__", repr(self.hash_function))
            raise TypeError(
                f"CustomHash: the hash function {name} returned {type(h).__name__}, not bytes"
            )
        return bytes(h)

    def __jug_value__(self) -> Any:
        return value(self.obj)

    def __jug_dependencies__(self) -> list[Any]:
        return [self.obj]

    def __repr__(self) -> str:
        return f"CustomHash({self.obj!r}, {self.hash_function!r})"


def hash_with_mtime_size(path: str | bytes) -> bytes:
    """A hash of ``path`` with the file's modification time and size (jug's, byte for byte).

    The time is in whole seconds (as jug has it): a rewrite within the same second that keeps
    the size is not noticed.
    """
    st = os.stat(path)
    return hash_one((path, st[stat.ST_MTIME], st.st_size))


def timed_path(path: str | bytes) -> CustomHash:
    """``path``, as an argument whose identity changes when the file is touched or resized,
    so that the tasks reading it (and their dependents) run again."""
    return CustomHash(path, hash_with_mtime_size)


def _jug_execute(
    args: list[str], check_exit: bool = True, run_after: Any = None, return_value: Any = None
) -> Any:
    import subprocess

    ret = subprocess.call(args)
    if check_exit and ret != 0:
        raise SystemError(f"command {args!r} exited with status {ret}")
    return return_value


#: ``jug_execute(args, check_exit=True, run_after=None, return_value=None)``: a task that runs
#: an external command. ``run_after`` only orders it after other tasks; ``return_value`` is
#: its result, so that later tasks can depend on it (e.g. the name of the file it wrote). A
#: non-zero exit raises ``SystemError`` unless ``check_exit`` is false.
jug_execute = TaskGenerator(_jug_execute)
_jug_execute.__jug_name__ = "jug.utils.jug_execute"  # type: ignore[attr-defined]


def sync_move(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` and fsync the destination directory, so the rename persists."""
    os.rename(src, dst)
    fd = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse to fsync a directory
        pass
    finally:
        os.close(fd)


def glob_sort(pattern: str) -> list[str]:
    """``glob.glob(pattern)``, sorted (glob's own order depends on the filesystem)."""
    from glob import glob

    return sorted(glob(pattern))


glob_sort.__jug_name__ = "jug.utils.glob_sort"  # type: ignore[attr-defined]


def cached_glob(pattern: str) -> list[str]:
    """``glob_sort(pattern)`` now, cached in the store: later runs see the same file list until
    the task is invalidated (new files are not picked up by themselves)."""
    t = Task(glob_sort, pattern)
    if not t.can_load():
        return t.run()
    return t.value()
