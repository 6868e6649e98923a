"""The compact task graph the coordinator keeps once the jugfile is loaded.

Task objects cost about a kilobyte each; a million-task graph is kept instead as parallel
arrays indexed by task number: identities, function numbers, dependencies (CSR), and each
task's arguments already encoded for the wire (pickled once here, keeping pickling off the
lease path; and compact: plain arguments kept as they are would pin the jugfile's freed Task
objects' memory, each tuple and number in an arena of its own).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import sys
import types
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any

import cloudpickle

from .errors import JugfileError
from .hashing import PLAIN_TYPES
from .task import ResultRef, Task, TaskGenerator, source_hash
from .taskopts import NO_OPTIONS, TaskOptions
from .tracebacks import reduce_code


@dataclass
class Function:
    fid: int
    name: str
    src: str  # hash of the source, recorded with each result
    code: bytes  # cloudpickle of the function: shipped once per connection


@dataclass
class Graph:
    keys: list[str] = field(default_factory=list)
    fn: array = field(default_factory=lambda: array("I"))
    dep_start: array = field(default_factory=lambda: array("I", [0]))
    dep_idx: array = field(default_factory=lambda: array("I"))
    #: each task's ``(args, kwargs)``, pickled for the wire
    args: list[bytes] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    #: the distinct options of the graph's tasks (ajug.taskopts), the first one "none", and the
    #: one of each task; ``opt_of`` stays None while no task has any (the common case: no
    #: memory per task)
    options: list[TaskOptions] = field(default_factory=lambda: [NO_OPTIONS])
    opt_of: array | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def opts(self, i: int) -> TaskOptions:
        """Task ``i``'s options (NO_OPTIONS if it has none)."""
        return NO_OPTIONS if self.opt_of is None else self.options[self.opt_of[i]]

    def dependents(self, ndeps: Sequence[int]) -> tuple[array[int], array[int]]:
        """The dependents of every task, as CSR (start offsets, indices): the reverse of the
        inputs. ``ndeps``: each task's number of inputs."""
        n, ds, di = len(self.keys), self.dep_start, self.dep_idx
        count = array("I", bytes(4 * n))
        for j in di:
            count[j] += 1
        start = array("I", accumulate(count, initial=0))
        fill = array("I", start[:-1]) if n else array("I")
        rev = array("I", bytes(4 * len(di)))
        for i in compress(range(n), ndeps):
            for p in range(ds[i], ds[i + 1]):
                j = di[p]
                rev[fill[j]] = i
                fill[j] += 1
        return start, rev

    def deps(self, i: int) -> Sequence[int]:
        return self.dep_idx[self.dep_start[i] : self.dep_start[i + 1]]


#: modules pickled by value (the jugfile and modules beside it): workers cannot import them
_BY_VALUE: set[str] = set()


class _NeedsCloudpickle(Exception):
    pass


def _module_by_name(obj: Any) -> Any:
    """A module from beside the jugfile goes by name: the worker imports it (see codeship).
    By value (cloudpickle's way for registered modules) its ``vars()`` would be pickled, and a
    package whose submodule imports the package would recurse until the stack gives out."""
    if isinstance(obj, types.ModuleType) and obj.__name__ in _BY_VALUE:
        return importlib.import_module, (obj.__name__,)
    return NotImplemented


class _CodePickler(cloudpickle.Pickler):
    """cloudpickle, with the modules beside the jugfile pickled by name, and code objects with
    their file name and source lines (tracebacks on workers show the user's file: tracebacks)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType):
            r = reduce_code(obj)
            if r is not NotImplemented:
                return r
        r = _module_by_name(obj)
        return r if r is not NotImplemented else super().reducer_override(obj)


class _ArgPickler(pickle.Pickler):
    """Pickles arguments with every Task replaced by a reference to its identity.

    Plain pickle is fast but pickles functions and classes by reference; one from the jugfile
    (a mapper passed to ``mapreduce.map``) would not import on a worker, so those send the
    arguments through cloudpickle instead.
    """

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Task):
            return obj.key
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and obj.__module__ in _BY_VALUE:
            raise _NeedsCloudpickle
        if isinstance(obj, TaskGenerator):  # its function never pickles by reference
            raise _NeedsCloudpickle
        return NotImplemented


class _CloudArgPickler(_CodePickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Task):
            return obj.key
        return None


class _ArgUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return ResultRef(pid)


def encode_args(t: Task) -> bytes:
    payload = (t.args, t.kwargs)
    plain = PLAIN_TYPES  # need neither the Task hook nor cloudpickle
    if all(type(a) in plain for a in t.args) and all(type(v) in plain for v in t.kwargs.values()):
        return pickle.dumps(payload, protocol=5)  # the common inc(i): no hook needed
    buf = io.BytesIO()
    try:
        _ArgPickler(buf, protocol=5).dump(payload)
    except Exception:  # _NeedsCloudpickle, or something plain pickle cannot do
        buf = io.BytesIO()
        try:
            _CloudArgPickler(buf, protocol=5).dump(payload)
        except Exception as e:
            raise JugfileError(
                f"the arguments of task {t.name} cannot be pickled to send to workers: {e}"
            ) from None
    return buf.getvalue()


def decode_args(blob: bytes) -> tuple[tuple, dict]:
    args, kwargs = _ArgUnpickler(io.BytesIO(blob)).load()
    return args, kwargs


def _local_modules(jugdir: Path) -> list[Any]:
    """Modules loaded from the jugfile's directory tree (not installed packages): by value."""
    root = str(jugdir) + os.sep
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if not f or name == "__main__":
            continue
        if f.startswith(root) and "site-packages" not in f and "dist-packages" not in f:
            out.append(mod)
    return out


def register_by_value(jugdir: Path) -> None:
    for mod in _local_modules(jugdir):
        _BY_VALUE.add(mod.__name__)
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:
            pass


def pickle_function(f: Any, name: str) -> bytes:
    buf = io.BytesIO()
    try:
        _CodePickler(buf, protocol=5).dump(f)
        return buf.getvalue()
    except Exception as e:
        raise JugfileError(f"function {name} cannot be pickled to send to workers: {e}") from None


def _note_options(g: Graph, ids: dict[TaskOptions, int], i: int, o: TaskOptions) -> None:
    if o == NO_OPTIONS:
        return
    k = ids.get(o)
    if k is None:
        k = ids[o] = len(g.options)
        g.options.append(o)
    if g.opt_of is None:
        g.opt_of = array("I", bytes(4 * len(g.keys)))
    g.opt_of[i] = k


#: tasks looked at together by ``build_graph``'s quick path
CHUNK = 4096


class _Builder:
    """What ``build_graph`` keeps while it adds tasks: a million-task graph is added in chunks
    of tasks with plain arguments only (no dependencies), checked and copied at C speed; a
    chunk with anything else goes task by task."""

    def __init__(self, g: Graph, encode: bool) -> None:
        self.g, self.encode = g, encode
        self.fids: dict[int, int] = {}  # id(function) -> its number
        self.opt_ids: dict[TaskOptions, int] = {}

    def fid(self, t: Task) -> int:
        got = self.fids.get(id(t.f))
        if got is None:
            g = self.g
            got = self.fids[id(t.f)] = len(g.functions)
            code = pickle_function(t.f, t.name) if self.encode else b""
            g.functions.append(Function(got, t.name, source_hash(t.f), code))
        return got

    def add_chunk(self, chunk: list[Task]) -> bool:
        """All of ``chunk`` at once if every task has plain arguments only and no options."""
        args = list(map(_ARGS, chunk))
        if (any(map(_KWARGS, chunk)) or any(map(_OPTS, chunk))
                or not PLAIN_TYPES.issuperset(map(type, chain.from_iterable(args)))):
            return False
        g, fids = self.g, self.fids
        ids = list(map(id, map(_F, chunk)))
        if ids.count(ids[0]) == len(ids):  # one function (the usual chunk)
            g.fn.extend(repeat(self.fid(chunk[0]), len(ids)))
        else:
            for t in chunk:
                self.fid(t)
            g.fn.extend(map(fids.__getitem__, ids))
        g.dep_start.extend(repeat(len(g.dep_idx), len(chunk)))
        if self.encode:  # the bytes encode_args gives, pickled at C speed
            g.args.extend(map(pickle.dumps, zip(args, repeat(_NO_KWARGS)), repeat(5)))
        return True

    def add(self, pos: int, t: Task, index: dict[str, int]) -> None:
        g = self.g
        if t.opts is not None:
            _note_options(g, self.opt_ids, pos, t.opts)
        g.fn.append(self.fid(t))
        if not t.kwargs and PLAIN_TYPES.issuperset(map(type, t.args)):
            g.dep_start.append(len(g.dep_idx))
            if self.encode:
                g.args.append(pickle.dumps((t.args, t.kwargs), protocol=5))
            return
        seen: set[int] = set()
        for d in t.dependencies():
            j = index.get(d.key)
            if j is None:  # a dependency created outside the jugfile's task list
                raise JugfileError(f"task {t.name} depends on a task that is not in the graph")
            if j not in seen:
                seen.add(j)
                g.dep_idx.append(j)
        g.dep_start.append(len(g.dep_idx))
        if self.encode:
            g.args.append(encode_args(t))


_ARGS, _KWARGS, _OPTS, _F = (attrgetter(a) for a in ("args", "kwargs", "opts", "f"))
_NO_KWARGS: dict[str, Any] = {}  # pickled, never changed


def build_graph(tasks: list[Task], jugdir: Path | None = None, encode: bool = True,
                index: dict[str, int] | None = None) -> Graph:
    """Compile unique tasks (in order) into a Graph. Dependencies must come before dependents.

    ``encode=False`` skips pickling functions and arguments (offline status needs no wire).
    ``index``: each task's key to its position, if the caller has it (``unique_tasks``).
    """
    if jugdir is not None and encode:
        register_by_value(jugdir)
    g = Graph()
    g.keys = [t._key or t.key for t in tasks]
    if index is None or len(index) != len(g.keys):
        index = dict(zip(g.keys, range(len(g.keys))))
    g.index = index
    b = _Builder(g, encode)
    for start in range(0, len(tasks), CHUNK):
        chunk = tasks[start : start + CHUNK]
        if not b.add_chunk(chunk):
            for pos, t in enumerate(chunk, start):
                b.add(pos, t, index)
    return g
