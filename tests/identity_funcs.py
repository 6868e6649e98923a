"""Functions that both jug and ajug tasks are built from in the identity tests.

A task's identity includes its function's ``module.name``, so jug's and ajug's tasks can only
be compared when they call the very same functions: these, in a module of their own.
"""

from __future__ import annotations

import types
from typing import Any


def f0() -> int:
    return 0


def f1(x: Any) -> Any:
    return x


def f2(a: Any, b: Any) -> Any:
    return (a, b)


def fkw(*args: Any, **kwargs: Any) -> Any:
    return (args, kwargs)


def double(x: Any) -> Any:
    return 2 * x


def add(a: Any, b: Any) -> Any:
    return a + b


def square(x: Any) -> Any:
    return x * x


def pairs(n: int) -> list[tuple[int, int]]:
    return [(i, i * i) for i in range(n)]


def plus1(x: Any) -> Any:
    return x + 1


def scrub() -> None:
    """Undo what jug's ``mapreduce`` does to a TaskGenerator's function: it sets a
    ``__jug_hash__`` attribute on it, which would change every later identity it is part of."""
    for obj in list(globals().values()):
        if isinstance(obj, types.FunctionType):
            obj.__dict__.pop("__jug_hash__", None)
