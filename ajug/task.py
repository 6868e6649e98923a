"""The jug task model: Task, Tasklet, TaskGenerator, value.

These are jug's semantics, so a jugfile runs after changing ``jug`` to ``ajug`` in its imports.
Building a Task does no work: it records the call. Every Task created is appended to
``alltasks``, in creation order, which is the order the coordinator serves them in.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from .errors import ResultMissing
from .hashing import (
    JugPickled,
    hash_one,
    hash_update,
    jug_generator_pickle,
    jug_get_check_pickle,
    lambda_key,
    new_hash_object,
    task_digest,
)
from .resultmeta import result_meta, source_hash  # noqa: F401 - jug's names, here as there
from .taskopts import TaskOptions, make_options
from .taskstore import InstanceStore, StoreMeta
from .walk import tasks_in

__all__ = [
    "Task",
    "Tasklet",
    "TaskGenerator",
    "iteratetask",
    "return_tuple",
    "value",
    "recursive_dependencies",
    "CachedFunction",
    "alltasks",
]

#: Every Task built since the last reset, in creation order (jug's ``jug.task.alltasks``).
alltasks: list[Task] = []
_record = alltasks.append  # the list is emptied in place, never replaced
_new_object = object.__new__


def reset() -> None:
    """Forget every task (the jugfile is about to be loaded again)."""
    del alltasks[:]


class _getitem:
    """``t[i]`` as a Tasklet operation. Hashes as jug's does, so identities match jug's."""

    __slots__ = ("slice",)

    def __init__(self, slice: Any) -> None:
        self.slice = slice

    def __call__(self, obj: Any) -> Any:
        return value(obj)[value(self.slice)]

    def __jug_hash__(self) -> bytes:
        return hash_one(("jug.task._getitem", self.slice))

    def __jug_dependencies__(self) -> list[Any]:
        """The index may itself be (or hold) a Task: ``t[other_task]``."""
        return [self.slice]

    def __repr__(self) -> str:
        return f"ajug.task._getitem({self.slice!r})"


class TaskletMixin:
    __slots__ = ()

    def __getitem__(self, slice: Any) -> Tasklet:
        return Tasklet(self, _getitem(slice))

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError(
            "you cannot iterate over a Task's result while building the graph: use "
            "iteratetask(task, n) when the size is known, or bvalue(task) otherwise"
        )


class Task(TaskletMixin, metaclass=StoreMeta):
    """A lazy call ``f(*args, **kwargs)`` whose result is kept in the store under its identity.

    Arguments that are Tasks (or lists/tuples/dicts holding Tasks) are replaced by their results
    before ``f`` is called. Two Tasks with the same function and arguments are the same task.
    """

    #: The store ``value()`` and ``can_load()`` use (set by ``ajug.init``, the coordinator and
    #: the worker; a class attribute, as in jug: one per process unless a thread isolates its
    #: own, see ajug.taskstore).
    store: Any = InstanceStore()
    #: resources, timeout, retries, priority (ajug.taskopts): not part of the identity
    opts: TaskOptions | None = None
    _ajug_task = True  # what ajug.walk recognises a Task by

    def __init__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        while isinstance(f, partial):
            args = f.args + args
            kwargs = {**f.keywords, **kwargs}
            f = f.func
        if getattr(f, "__name__", "") == "<lambda>":
            raise ValueError(
                "ajug.Task does not work with lambda functions: use a named function (def); "
                "to apply a lambda to a task's result use Tasklet(task, lambda r: ...)"
            )
        # ``__jug_name__``: ajug's own versions of jug's functions take jug's name (it is hashed)
        jug_name = getattr(f, "__jug_name__", None)
        self.name = jug_name if type(jug_name) is str else f"{f.__module__}.{f.__name__}"
        self.f = f
        self.args = args
        self.kwargs = kwargs
        self._key: str | None = None
        alltasks.append(self)

    # -- identity -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """The identity as a 40-character hex string (the store key)."""
        k = self._key
        if k is None:
            k = self._key = task_digest(self.name, self.args, self.kwargs)
        return k

    def set_options(self, *, resources: Any = None, timeout: float | None = None,
                    retries: int | None = None, priority: int | None = None) -> Task:
        """Options for this task over its function's (identity unchanged); returns the task."""
        new = make_options(resources, timeout, retries, priority)
        self.opts = self.opts.merged(new) if self.opts is not None else new
        return self

    def hash(self) -> bytes:
        """The identity, as bytes of hex (jug's return type)."""
        return self.key.encode()

    def __jug_hash__(self) -> bytes:
        return self.key.encode()

    # -- graph ----------------------------------------------------------------------------
    def dependencies(self) -> Iterator[Task]:
        """The Tasks this one needs directly (through Tasklets and containers)."""
        return tasks_in((self.args, self.kwargs))

    # -- results --------------------------------------------------------------------------
    def can_load(self, store: Any = None) -> bool:
        if hasattr(self, "_result"):
            return True
        store = store if store is not None else Task.store
        if store is None:
            return False
        return bool(store.contains(self.key))

    def can_run(self) -> bool:
        return all(hasattr(d, "_result") or d.can_load() for d in self.dependencies())

    def is_loaded(self) -> bool:
        return hasattr(self, "_result")

    def load(self) -> None:
        if Task.store is None:
            raise ResultMissing(f"no store is open to load {self.name} ({self.key}); call ajug.init")
        self._result = Task.store.load(self.key)

    def _get_result(self) -> Any:
        if not hasattr(self, "_result"):
            self.load()
        return self._result

    result = property(_get_result, doc="The result (loaded from the store when needed)")

    def value(self) -> Any:
        return self._get_result()

    def execute(self) -> Any:
        """Call the function on the values of the arguments (does not save)."""
        args = [value(a) for a in self.args]
        kwargs = {k: value(v) for k, v in self.kwargs.items()}
        return self.f(*args, **kwargs)

    def run(self, save: bool = True, **_ignored: Any) -> Any:
        """Run now, in this process, and (by default) save the result to ``Task.store``."""
        self._result = self.execute()
        if save and Task.store is not None:
            Task.store.save(self.key, self._result, result_meta(self))
        return self._result

    def invalidate(self) -> None:
        if Task.store is not None:
            Task.store.remove([self.key])
        self.unload()

    def unload(self) -> None:
        self.__dict__.pop("_result", None)

    def unload_recursive(self) -> None:
        self.unload()
        for d in recursive_dependencies(self):
            d.unload()

    def __str__(self) -> str:
        return f"Task: {self.name}()"

    def __repr__(self) -> str:
        return f"Task({self.name}, args={self.args!r}, kwargs={self.kwargs!r})"


class ResultRef(Task):
    """A stand-in, on a worker, for a Task whose result is in the store under ``key``.

    Leases carry arguments with other tasks replaced by their keys; the worker rebuilds them as
    ResultRefs so that ``value()`` (and jug's NoLoad pattern) work inside the task's function.
    """

    def __init__(self, key: str, name: str = "") -> None:  # noqa: D107 - no alltasks entry
        self._key = key
        self.name = name or "result"
        self.f = None  # type: ignore[assignment]
        self.args = ()
        self.kwargs = {}

    def __reduce__(self) -> Any:
        return (ResultRef, (self._key, self.name))

    def dependencies(self) -> Iterator[Task]:
        return iter(())


class Tasklet(TaskletMixin):
    """A light Task: ``f(value(base))``, computed when loaded and never stored (e.g. ``t[0]``)."""

    __slots__ = ("base", "f")

    def __init__(self, base: Any, f: Any) -> None:
        self.base = base
        self.f = f

    def dependencies(self) -> Iterator[Any]:
        """The base, and whatever the operation reads when it runs: the index of ``t[i]`` (which
        may be a Task, a Tasklet or a tuple holding them), the bound arguments of a ``partial``.
        Every walker of the graph (leasing, offline status, invalidation, barriers) goes
        through here, so what ``value()`` will load is what the graph waits for."""
        yield self.base
        yield from _operation_deps(self.f)

    __jug_dependencies__ = dependencies

    def value(self) -> Any:
        return self.__jug_value__()

    def __jug_value__(self) -> Any:
        return self.f(value(self.base))

    def can_load(self) -> bool:
        return bool(self.base.can_load())

    def unload(self) -> None:
        self.base.unload()

    def unload_recursive(self) -> None:
        self.base.unload_recursive()

    def __jug_hash__(self) -> bytes:
        m = new_hash_object()
        m.update(b"Tasklet")
        f = self.f
        if getattr(f, "__name__", "") == "<lambda>":
            f = lambda_key(f)
        elif isinstance(f, partial) and f.func is _get_check:
            f = JugPickled(jug_get_check_pickle(pickle.dumps(f, protocol=4)))
        hash_update(m, [("base", self.base), ("f", f)], "a Tasklet")
        return m.hexdigest().encode()

    def __repr__(self) -> str:
        return f"Tasklet({self.base!r}, {self.f!r})"


def _operation_deps(f: Any) -> list[Any]:
    """What a Tasklet's operation needs computed besides its base (Tasks, or containers and
    Tasklets holding them; the walkers look inside)."""
    out: list[Any] = []
    while isinstance(f, partial):
        out.append(f.args)
        out.append(f.keywords)
        f = f.func
    deps = getattr(f, "__jug_dependencies__", None)
    if deps is not None and not isinstance(f, type):
        out.extend(deps())
    return out


def value(elem: Any) -> Any:
    """The value of ``elem``: Tasks replaced by their results, through lists/tuples/dicts."""
    if isinstance(elem, (Task, Tasklet)):
        return elem.value()
    t = type(elem)
    if t is list:
        return [value(e) for e in elem]
    if t is tuple:
        return tuple(value(e) for e in elem)
    if t is dict:
        return {k: value(v) for k, v in elem.items()}
    if hasattr(elem, "__jug_value__"):
        return elem.__jug_value__()
    return elem


def recursive_dependencies(t: Any, max_level: int = -1) -> Iterator[Task]:
    """Every Task ``t`` needs, directly or not, each once."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(t, 0)]
    while stack:
        cur, level = stack.pop()
        if max_level >= 0 and level >= max_level:
            continue
        for d in cur.dependencies():
            if id(d) not in seen:
                seen.add(id(d))
                yield d
                stack.append((d, level + 1))


def CachedFunction(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``f`` now (while the graph is built), reusing its result from the store."""
    t = Task(f, *args, **kwargs)
    if not t.can_load():
        if not t.can_run():
            raise ValueError(f"ajug.CachedFunction: the inputs of {t.name} are not computed yet")
        return t.run()
    return value(t)


class TaskGenerator:
    """Decorator: calling the decorated function returns a Task instead of running it."""

    _jug_is_task_generator = True

    def __init__(self, f: Callable[..., Any] | None = None, *, resources: Any = None,
                 timeout: float | None = None, retries: int | None = None,
                 priority: int | None = None, _opts: TaskOptions | None = None) -> None:
        """``@TaskGenerator``, or ``@TaskGenerator(resources=..., timeout=..., retries=...,
        priority=...)``: options every task of the function gets (see ajug.taskopts; they
        are not part of the tasks' identities)."""
        if _opts is None and (resources, timeout, retries, priority) != (None, None, None, None):
            _opts = make_options(resources, timeout, retries, priority)
        self._opts = _opts
        self.f: Any = f  # None only while it waits for its function (@TaskGenerator(...))
        self.__name__ = getattr(f, "__name__", "task")
        self.__doc__ = getattr(f, "__doc__", None)
        self.__module__ = getattr(f, "__module__", None)  # type: ignore[assignment]
        self.__wrapped__ = f
        self._task_name: str | None = None  # Task's name for f, once a first Task made it

    def options(self, *, resources: Any = None, timeout: float | None = None,
                retries: int | None = None, priority: int | None = None) -> TaskGenerator:
        """The same function with these options over its own (``f.options(priority=5)(x)``)."""
        new = make_options(resources, timeout, retries, priority)
        merged = self._opts.merged(new) if self._opts is not None else new
        return TaskGenerator(self.f, _opts=merged)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._task_name
        if name is not None:
            # a million calls build a million Tasks: the same object Task() builds, without
            # working out the name again
            t = _new_object(Task)
            t.name = name
            t.f = self.f
            t.args = args
            t.kwargs = kwargs
            t._key = None
            _record(t)
        elif self.f is None:  # @TaskGenerator(timeout=...): this call gets the function
            if len(args) != 1 or kwargs or not callable(args[0]):
                raise TypeError("TaskGenerator(...) with options decorates one function")
            return TaskGenerator(args[0], _opts=self._opts)
        else:
            t = Task(self.f, *args, **kwargs)  # the checks (lambda, partial) and the name
            if t.f is self.f:
                self._task_name = t.name
        if self._opts is not None:
            t.opts = self._opts
        return t

    def __jug_hash__(self) -> bytes:
        """As an argument, it hashes as jug's TaskGenerator does (by its pickle), so that tasks
        that take one keep jug's identities."""
        return jug_generator_pickle(self.f)

    def __reduce__(self) -> Any:
        if self._opts is not None:
            return (_task_generator, (self.f, self._opts))
        return (TaskGenerator, (self.f,))

    def __repr__(self) -> str:
        return f"TaskGenerator({self.f!r})"


def _task_generator(f: Any, opts: TaskOptions) -> TaskGenerator:
    return TaskGenerator(f, _opts=opts)


class iteratetask:
    """``a, b = iteratetask(t, 2)``: the first ``n`` items of a task's result as Tasklets."""

    def __init__(self, base: Any, n: int) -> None:
        self.base = base
        self.n = n

    def __getitem__(self, i: int) -> Tasklet:
        if i >= self.n:
            raise IndexError(i)
        return self.base[i]

    def __len__(self) -> int:
        return self.n


def _get_check(r: Any, i: int, n: int) -> Any:
    if len(r) != n:
        raise ValueError(f"expected a tuple of size {n}, got {len(r)}")
    return r[i]


def return_tuple(n: int) -> Callable[[Any], Callable[..., tuple]]:
    """Make a TaskGenerator of an ``n``-tuple return ``n`` Tasklets, for ``x, y = f()``."""

    def wrapper(f: Any) -> Callable[..., tuple]:
        def wrapped(*args: Any, **kwargs: Any) -> tuple:
            r = f(*args, **kwargs)
            return tuple(Tasklet(r, partial(_get_check, i=i, n=n)) for i in range(n))

        return wrapped

    return wrapper
