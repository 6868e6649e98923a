"""map, reduce, mapreduce, currymap: many small calls grouped into a few tasks.

Same signatures, grouping and identities as ``jug.mapreduce``, so a jug project that uses them
keeps its results under ajug:

- ``map(f, xs, map_step=4)`` makes one task per ``map_step`` inputs (``map_step=1``: one task
  per input, ``Task(f, x)``) and returns a ``block_access``: a list-like view (``len``,
  indexing, slicing) that can be passed to other tasks without loading anything.
- ``mapreduce(r, m, xs)`` maps ``map_step`` inputs per task and then reduces the partial
  results in a tree whose nodes each take ``reduce_step`` inputs. ``r`` must be associative
  (the order of the inputs is kept; commutativity is not needed).

The helper tasks carry jug's names (``jug.mapreduce._jug_map`` ...), because a task's name is
part of its identity; so do ``map``, ``mapreduce``... themselves, for
``CompoundTask(mapreduce, ...)`` (see ``__jug_name__`` in ``ajug.task.Task``). A mapper or
reducer given as a ``TaskGenerator`` is passed to the tasks as its plain function, hashed
exactly as jug hashes it (jug pickles its own ``TaskGenerator`` class there): see
``ajug.hashing.jug_generator_pickle``.

Unlike jug, a step that would never end (``map_step < 1``, ``reduce_step < 2``) is refused.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .hashing import PICKLE_PROTOCOL, hash_one, jug_generator_pickle
from .task import Task, TaskletMixin, value
from .utils import identity

__all__ = ["map", "reduce", "mapreduce", "currymap", "block_access", "block_access_slice"]

#: The module jug's helper functions live in: their tasks are named after it.
JUG_MODULE = "jug.mapreduce"


class _Unwrapped:
    """A TaskGenerator's plain function, as an argument of a helper task, with jug's hash.

    Calling it calls the function; hashing it gives the bytes jug feeds for the same argument.
    """

    __slots__ = ("f", "jug_hash")

    def __init__(self, f: Callable[..., Any], jug_hash: bytes) -> None:
        self.f = f
        self.jug_hash = jug_hash

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f(*args, **kwargs)

    def __jug_hash__(self) -> bytes:
        return self.jug_hash

    def __repr__(self) -> str:
        return f"TaskGenerator({getattr(self.f, '__qualname__', self.f)!r})"


def _is_generator(f: Any) -> bool:
    return bool(getattr(f, "_jug_is_task_generator", False))


def _as_argument(f: Any) -> Any:
    """``f`` as jug's ``mapreduce`` passes it to its tasks: a TaskGenerator as itself."""
    if _is_generator(f):
        return _Unwrapped(f.f, jug_generator_pickle(f.f))
    return f


def _as_function(f: Any) -> Any:
    """``f`` as jug's ``map`` passes it (``_get_function``): a TaskGenerator's function, hashed
    as jug's ``hash_one`` of the TaskGenerator."""
    if _is_generator(f):
        m = hashlib.sha1(pickle.dumps("hash1", protocol=PICKLE_PROTOCOL))
        m.update(jug_generator_pickle(f.f))
        return _Unwrapped(f.f, m.hexdigest().encode())
    return f


def _callable(f: Any) -> Any:
    return f.f if _is_generator(f) else f


# -- the functions the tasks run ---------------------------------------------------------------
def _jug_map_reduce(reducer: Any, mapper: Any, inputs: Sequence[Any]) -> Any:
    return functools.reduce(_callable(reducer), _jug_map(_callable(mapper), inputs))


def _jug_reduce(reducer: Any, inputs: Sequence[Any]) -> Any:
    return functools.reduce(_callable(reducer), inputs)


def _jug_map(mapper: Any, es: Sequence[Any]) -> list[Any]:
    if mapper is None:
        return list(es)
    return [mapper(e) for e in es]


def _jug_map_curry(mapper: Any, es: Sequence[Any]) -> list[Any]:
    return [mapper(*e) for e in es]


def _jug_named(*fs: Callable[..., Any]) -> None:
    """Tasks of these functions take jug's name for them (it is part of their identity)."""
    for f in fs:
        f.__jug_name__ = f"{JUG_MODULE}.{f.__name__}"  # type: ignore[attr-defined]


_jug_named(_jug_map_reduce, _jug_reduce, _jug_map, _jug_map_curry)


def _break_up(seq: Any, step: int) -> Iterator[Any]:
    """Consecutive slices of ``step`` items (the last may be shorter)."""
    n = len(seq)
    for start in range(0, n, step):
        yield seq[start : start + step]


def _check_step(name: str, step: int, minimum: int) -> None:
    """jug loops forever on these; the value itself is used (and hashed) as given."""
    try:
        ok = operator.index(step) >= minimum
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {step!r}")


# -- lazy views over map's results -------------------------------------------------------------
class block_access_slice(TaskletMixin):
    """A slice of a ``block_access``: depends only on the blocks it covers."""

    __slots__ = ("base", "start", "stop", "stride", "_hvalue")

    def __init__(self, access: block_access, orig: tuple[int, int, int]) -> None:
        self.base = access
        self.start, self.stop, self.stride = orig
        self._hvalue: bytes | None = None

    def _range(self) -> range:
        return range(self.start, self.stop, self.stride)

    def __getitem__(self, p: Any) -> Any:
        if isinstance(p, slice):
            r = self._range()[p]
            return block_access_slice(self.base, (r.start, r.stop, r.step))
        return self.base[self._range()[operator.index(p)]]

    def __len__(self) -> int:
        return len(self._range())

    def __jug_hash__(self) -> bytes:
        if self._hvalue is None:
            self._hvalue = hash_one(
                {
                    "type": "map-access-slice",
                    "base": self.base,
                    "start": self.start,
                    "stop": self.stop,
                    "stride": self.stride,
                }
            )
        return self._hvalue

    def __jug_dependencies__(self) -> list[Task]:
        size = self.base.block_size
        return [self.base.blocks[b] for b in sorted({i // size for i in self._range()})]

    def __jug_value__(self) -> list[Any]:
        return [value(self[i]) for i in range(len(self))]

    def can_load(self) -> bool:
        return all(b.can_load() for b in self.__jug_dependencies__())

    def __repr__(self) -> str:
        return f"block_access_slice({self.base!r}, {self.start}:{self.stop}:{self.stride})"


class block_access(TaskletMixin):
    """The result of ``map``: ``len(blocks)`` tasks of ``block_size`` results each, as one list.

    Indexing gives a Tasklet (``blocks[i // size][i % size]``), slicing a ``block_access_slice``;
    either can be passed to tasks, and ``value()`` of the whole gives the list of results.
    """

    __slots__ = ("blocks", "block_size", "len", "_hvalue")

    def __init__(self, blocks: list[Task], block_size: int, len: int) -> None:
        self.blocks = blocks
        self.block_size = block_size
        self.len = len
        self._hvalue: bytes | None = None

    def __getitem__(self, p: Any) -> Any:
        if isinstance(p, slice):
            return block_access_slice(self, p.indices(self.len))
        p = operator.index(p)
        if p < 0:
            p += self.len
        if not 0 <= p < self.len:
            raise IndexError(p)
        return self.blocks[p // self.block_size][p % self.block_size]

    def __len__(self) -> int:
        return self.len

    def __jug_hash__(self) -> bytes:
        if self._hvalue is None:
            self._hvalue = hash_one(
                {
                    "type": "map-access",
                    "len": self.len,
                    "blocks": self.blocks,
                    "block_size": self.block_size,
                }
            )
        return self._hvalue

    def __jug_dependencies__(self) -> list[Task]:
        return self.blocks

    def __jug_value__(self) -> list[Any]:
        out: list[Any] = []
        for blk in self.blocks:
            out.extend(value(blk))
        return out

    def can_load(self) -> bool:
        return all(b.can_load() for b in self.blocks)

    def __repr__(self) -> str:
        return f"block_access(<{len(self.blocks)} blocks of {self.block_size}>, len={self.len})"


# -- the public functions ----------------------------------------------------------------------
def mapreduce(
    reducer: Callable[[Any, Any], Any],
    mapper: Callable[[Any], Any] | None,
    inputs: Sequence[Any],
    map_step: int = 4,
    reduce_step: int = 8,
) -> Task:
    """A task computing ``functools.reduce(reducer, map(mapper, inputs))`` as a tree of tasks.

    ``reducer`` must be associative; the order of the inputs is kept. Empty ``inputs`` give
    ``identity([])``. ``mapper=None`` reduces the inputs themselves.
    """
    _check_step("map_step", map_step, 1)
    _check_step("reduce_step", reduce_step, 2)
    r = _as_argument(reducer)
    m = _as_argument(mapper)
    level = [Task(_jug_map_reduce, r, m, chunk) for chunk in _break_up(inputs, map_step)]
    while len(level) > 1:
        level = [Task(_jug_reduce, r, group) for group in _break_up(level, reduce_step)]
    if not level:
        return identity([])
    return level[0]


def map(
    mapper: Callable[[Any], Any], sequence: Sequence[Any], map_step: int = 4
) -> block_access | list[Task]:
    """``[mapper(x) for x in sequence]`` as tasks of ``map_step`` calls each.

    Returns a ``block_access`` (list-like, lazy); with ``map_step=1``, a list of
    ``Task(mapper, x)``, the same tasks as building them by hand.
    """
    _check_step("map_step", map_step, 1)
    if map_step == 1:
        f = _callable(mapper)
        return [Task(f, s) for s in sequence]
    f = _as_function(mapper)
    blocks: list[Task] = []
    n = 0
    for chunk in _break_up(sequence, map_step):
        blocks.append(Task(_jug_map, f, chunk))
        n += len(chunk)
    return block_access(blocks, map_step, n)


def currymap(mapper: Callable[..., Any], sequence: Sequence[Any], map_step: int = 4) -> list[Any]:
    """``[mapper(*args) for args in sequence]`` as tasks of ``map_step`` calls each.

    Returns one Task (``map_step=1``) or Tasklet per element.
    """
    _check_step("map_step", map_step, 1)
    if map_step == 1:
        f = _callable(mapper)
        return [Task(f, *s) for s in sequence]
    f = _as_function(mapper)
    out: list[Any] = []
    for chunk in _break_up(sequence, map_step):
        t = Task(_jug_map_curry, f, chunk)
        out.extend(t[i] for i in range(len(chunk)))
    return out


def reduce(reducer: Callable[[Any, Any], Any], inputs: Sequence[Any], reduce_step: int = 8) -> Task:
    """A task computing ``functools.reduce(reducer, inputs)`` as a tree of tasks.

    ``inputs`` may hold Tasks or values; ``reducer`` must be associative.
    """
    return mapreduce(reducer, None, inputs, reduce_step=reduce_step)


_jug_named(mapreduce, map, currymap, reduce)
