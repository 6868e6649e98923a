"""The field types of protocol messages: each a quick yes/no check (``ok``) and a walk that
names the bad field (``check``, raising ``BadField``). The message table that uses them is in
messages.py."""

from __future__ import annotations

import re
from typing import Any

from ajug.errors import BadField

UINT64_MAX = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Nesting limit inside free-form maps (info, meta, status): deeper is a field error.
MAX_DEPTH = 32

_KEY = re.compile(r"[0-9a-f]{40}")
KEY_MATCH = _KEY.fullmatch


class _Type:
    """A field type: ``check`` raises ``BadField`` naming the op and the path of the field."""

    what = "?"

    def check(self, value: Any, op: str, path: str) -> None:
        if not self.ok(value):
            raise BadField(f"{op}: field {path} must be {self.what}")

    def ok(self, value: Any) -> bool:
        raise NotImplementedError


class _Pred(_Type):
    def __init__(self, what: str, ok: Any) -> None:
        self.what = what
        self.ok = ok  # type: ignore[method-assign]


UINT = _Pred("uint", lambda v: type(v) is int and 0 <= v <= UINT64_MAX)
INT = _Pred("int", lambda v: type(v) is int and INT64_MIN <= v <= INT64_MAX)
BOOL = _Pred("bool", lambda v: type(v) is bool)
STR = _Pred("str", lambda v: type(v) is str)
BIN = _Pred("bin", lambda v: type(v) is bytes)
KEY = _Pred("a key (40 lowercase hex chars)", lambda v: type(v) is str and _KEY.fullmatch(v))
NIL_OR_UINT = _Pred("uint or nil", lambda v: v is None or UINT.ok(v))
#: a positive number of seconds (a task's timeout)
SECONDS = _Pred("a positive number of seconds",
                lambda v: type(v) in (int, float) and 0 < v < 1e12)
#: what a worker's host offers: resource name -> amount (at most 64 names)
RESOURCES = _Pred("a map of resource names to amounts >= 0",
                  lambda v: type(v) is dict and len(v) <= 64 and all(
                      type(k) is str and 0 < len(k) <= 64 and type(x) in (int, float)
                      and 0 <= x < 1e30 for k, x in v.items()))


def bin_of(n: int) -> _Type:
    return _Pred(f"bin ({n} bytes)", lambda v: type(v) is bytes and len(v) == n)


def enum(*values: str) -> _Type:
    return _Pred(" or ".join(repr(v) for v in values), lambda v: type(v) is str and v in values)


class _Map(_Type):
    """A free-form map: str keys, plain msgpack values, at most ``MAX_DEPTH`` deep."""

    what = "map"

    def ok(self, value: Any) -> bool:
        if type(value) is not dict:
            return False
        for k, v in value.items():  # the usual case: one level of plain values
            t = type(v)
            if type(k) is not str or t is dict or t is list or t is tuple:
                break
            if t is int:
                if not INT64_MIN <= v <= UINT64_MAX:
                    return False
            elif v is not None and t is not float and t is not str and t is not bool and t is not bytes:
                return False
        else:
            return True
        return _nested_ok(value)


def _nested_ok(value: dict[Any, Any]) -> bool:
    """The walk for a map holding maps or arrays: str keys, plain values, bounded depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if type(v) is dict:
            for k, item in v.items():
                if type(k) is not str:
                    return False
                stack.append((item, depth + 1))
        elif type(v) in (list, tuple):
            stack.extend((item, depth + 1) for item in v)
        elif type(v) is int:
            if not INT64_MIN <= v <= UINT64_MAX:
                return False
        elif v is not None and type(v) not in (bool, float, str, bytes):
            return False
    return True


class List(_Type):
    def __init__(self, item: _Type) -> None:
        self.item = item
        self.what = f"array of {item.what}"

    def ok(self, value: Any) -> bool:
        return type(value) in (list, tuple) and all(map(self.item.ok, value))

    def check(self, value: Any, op: str, path: str) -> None:
        if type(value) not in (list, tuple):
            raise BadField(f"{op}: field {path} must be {self.what}")
        for i, item in enumerate(value):
            self.item.check(item, op, f"{path}[{i}]")


class Tuple(_Type):
    """A fixed-length array such as ``[key, tok, meta]``."""

    def __init__(self, *items: tuple[str, _Type]) -> None:
        self.items = items
        self.oks = tuple(t.ok for _, t in items)
        self.what = "[" + ", ".join(f"{name}: {t.what}" for name, t in items) + "]"

    def ok(self, value: Any) -> bool:
        if type(value) not in (list, tuple) or len(value) != len(self.oks):
            return False
        for ok, item in zip(self.oks, value):
            if not ok(item):
                return False
        return True

    def check(self, value: Any, op: str, path: str) -> None:
        if type(value) not in (list, tuple) or len(value) != len(self.items):
            raise BadField(f"{op}: field {path} must be {self.what}")
        for i, ((_name, t), item) in enumerate(zip(self.items, value, strict=True)):
            t.check(item, op, f"{path}[{i}]")


_MISSING = object()


class Struct(_Type):
    """A map with named fields (extra fields are ignored). ``optional`` fields may be absent
    (a later addition to the version that older peers neither send nor read)."""

    what = "map"

    def __init__(self, optional: dict[str, _Type] | None = None, **fields: _Type) -> None:
        self.fields = fields
        self.optional = optional or {}
        self._oks = tuple((name, t.ok) for name, t in fields.items())
        self._opt_oks = tuple((name, t.ok) for name, t in self.optional.items())

    def ok(self, value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name, ok in self._oks:
            v = value.get(name, _MISSING)
            if v is _MISSING or not ok(v):
                return False
        for name, ok in self._opt_oks:
            if name in value and not ok(value[name]):
                return False
        return True

    def check(self, value: Any, op: str, path: str) -> None:
        if type(value) is not dict:
            raise BadField(f"{op}: field {path} must be a map")
        for name, t in self.fields.items():
            sub = f"{path}.{name}" if path else name
            if name not in value:
                raise BadField(f"{op}: field {sub} must be {t.what} (missing)")
            t.check(value[name], op, sub)
        for name, t in self.optional.items():
            if name in value:
                t.check(value[name], op, f"{path}.{name}" if path else name)


class Fast(_Type):
    """A type whose yes/no check is one hand-written function (for the items that come by the
    thousand: reports and leases); errors are still named by the general type's walk."""

    def __init__(self, general: _Type, ok: Any) -> None:
        self.general = general
        self.what = general.what
        self.ok = ok  # type: ignore[method-assign]

    def check(self, value: Any, op: str, path: str) -> None:
        self.general.check(value, op, path)


MAP = _Map()


MAP = _Map()
