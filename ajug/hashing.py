"""Task identity: jug's SHA-1 scheme, reimplemented.

A task's identity is the hex SHA-1 of its function's ``module.name`` and its arguments. For
every argument type jug 2.7 supports the bytes fed to SHA-1 are the ones jug feeds, so a jug
project keeps its results when it moves to ajug. The encoding of one ``(name, value)`` pair:

- the name, pickled with protocol 4 (pinned: the default protocol changes between Pythons);
- an object with ``__jug_hash__()`` (Task, Tasklet, CustomHash): the bytes it returns;
- ``list`` / ``tuple`` (exact types): ``repr(type)``, then each item as ``(index, item)``;
- ``set`` / ``frozenset``: ``b"set"`` / ``b"frozenset"``, then the items' own digests sorted,
  so that iteration order (which depends on PYTHONHASHSEED) never matters;
- ``dict``: ``b"dict"``, then ``(digest(key), value)`` pairs sorted by the key digest;
- ``numpy.ndarray``: ``b"np.ndarray"``, pickled dtype and shape, then the raw C-order bytes
  (object arrays: their elements, one by one);
- anything else (None, bool, int, float, complex, str, bytes, numpy scalars, other picklable
  objects): its pickle, protocol 4. This is stable across processes and Python 3.10-3.13 for the
  builtin scalars; for other objects it is as stable as their pickle. An object that cannot be
  pickled raises ``IdentityError`` naming the task and the argument.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import pickle
import sys
from collections.abc import Callable
from typing import Any

from .errors import IdentityError
from .walk import tasks_in

PICKLE_PROTOCOL = 4

_LIST_TAG = repr(list).encode()
_TUPLE_TAG = repr(tuple).encode()


def _numpy() -> Any:
    """numpy if something already imported it (no value can be an array otherwise): importing
    it here would cost every worker a tenth of a second at start-up for nothing."""
    return sys.modules.get("numpy")

# pickle.dumps of small ints and names is the hot path of hashing a big graph: memoise the
# handful that recur (argument indices and the three field names).
_PICKLED: dict[Any, bytes] = {}


def _pickled_name(n: Any) -> bytes:
    try:
        return _PICKLED[n]
    except KeyError:
        b = pickle.dumps(n, protocol=PICKLE_PROTOCOL)
        if len(_PICKLED) < 4096 and type(n) in (int, str):
            _PICKLED[n] = b
        return b
    except TypeError:  # unhashable name (never produced by ajug itself)
        return pickle.dumps(n, protocol=PICKLE_PROTOCOL)


#: exact types hashed as their pickle and pickled as they are (subclasses take the general
#: path: they may define ``__jug_hash__`` or hold tasks)
PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})


def hash_update(m: Any, elems: Any, where: str = "") -> Any:
    """Feed ``(name, value)`` pairs into the hash object ``m`` the way jug does."""
    for n, e in elems:
        m.update(_pickled_name(n))
        te = type(e)
        if te in PLAIN_TYPES:  # the common case first: pickled as they are
            m.update(pickle.dumps(e, protocol=PICKLE_PROTOCOL))
            continue
        jh = getattr(e, "__jug_hash__", None)
        if jh is not None and not isinstance(e, type):
            m.update(jh())
        elif te is list or te is tuple:
            m.update(_LIST_TAG if te is list else _TUPLE_TAG)
            hash_update(m, enumerate(e), where)
        elif te is set or te is frozenset:
            m.update(b"set" if te is set else b"frozenset")
            items = sorted(hash_one(x, where) for x in e)
            hash_update(m, enumerate(items), where)
        elif te is dict:
            m.update(b"dict")
            pairs = sorted(((hash_one(k, where), v) for k, v in e.items()), key=_first)
            hash_update(m, pairs, where)
        elif te.__name__ == "ndarray" and (_np := _numpy()) is not None and te is _np.ndarray:
            m.update(b"np.ndarray")
            m.update(pickle.dumps(e.dtype, protocol=PICKLE_PROTOCOL))
            m.update(pickle.dumps(e.shape, protocol=PICKLE_PROTOCOL))
            if e.dtype.hasobject:
                hash_update(m, enumerate(e.ravel().tolist()), where)
            else:
                try:
                    m.update(e.data)
                except (BufferError, ValueError):
                    try:
                        m.update(e.copy().data)
                    except ValueError:  # datetime64/timedelta64 have no buffer (nor jug a hash)
                        m.update(_np.ascontiguousarray(e).reshape(-1).view(_np.uint8).data)
        else:
            if isinstance(e, (list, tuple)) and _contains_task(e):
                raise _identity_error(
                    where,
                    e,
                    f"tasks inside a {te.__name__} (a list/tuple subclass such as a namedtuple) "
                    "are not supported; use a plain list, tuple or dict",
                )
            try:
                m.update(pickle.dumps(e, protocol=PICKLE_PROTOCOL))
            except Exception as exc:
                raise _identity_error(where, e, f"it cannot be pickled ({exc})") from None
    return m


def _first(pair: tuple[bytes, Any]) -> bytes:
    return pair[0]


def _identity_error(where: str, e: Any, why: str) -> Exception:
    r = repr(e)
    if len(r) > 80:
        r = r[:77] + "..."
    return IdentityError(
        f"cannot compute the identity of {where or 'a task'}: argument {r} of type "
        f"{type(e).__module__}.{type(e).__qualname__}: {why}. Give it a __jug_hash__ method or "
        "wrap it in ajug.utils.CustomHash"
    )


def _contains_task(obj: Any) -> bool:
    return next(tasks_in([obj], sets=True), None) is not None


def new_hash_object() -> Any:
    return hashlib.sha1()


def hash_one(obj: Any, where: str = "") -> bytes:
    """The digest of one object (hex, as bytes), as jug's ``hash_one``."""
    m = hashlib.sha1()
    hash_update(m, [("hash1", obj)], where)
    return m.hexdigest().encode()


#: per function name: the hash state after the bytes every task of that function starts with
_PREFIXES: dict[str, Any] = {}
_NO_KWARGS = _pickled_name("kwargs") + b"dict"


def _prefix(name: str) -> Any:
    m = _PREFIXES.get(name)
    if m is None:
        m = hashlib.sha1()
        hash_update(m, [("name", name.encode("utf-8"))], name)
        m.update(_pickled_name("args") + _TUPLE_TAG)
        if len(_PREFIXES) < 65536:
            _PREFIXES[name] = m
    return m


_ONE_PLAIN: dict[str, Any] = {}


def task_digest(name: str, args: tuple, kwargs: dict) -> str:
    """The identity of ``name(*args, **kwargs)``: a 40-character hex string."""
    if not kwargs and type(args) is tuple and len(args) == 1 and type(args[0]) in PLAIN_TYPES:
        # ``f(i)``, the commonest task of a big graph
        m = _ONE_PLAIN.get(name)
        if m is None:
            m = _prefix(name).copy()
            m.update(_pickled_name(0))
            if len(_ONE_PLAIN) < 65536:
                _ONE_PLAIN[name] = m
        m = m.copy()
        m.update(pickle.dumps(args[0], protocol=PICKLE_PROTOCOL) + _NO_KWARGS)
        return m.hexdigest()
    if not kwargs and type(args) is tuple:
        # the common ``f(i, "x", 2.5)``: plain values only, no keywords. The same bytes as the
        # general walk below, from a hash state that already holds the name's part
        parts = []
        plain, dumps, pname = PLAIN_TYPES, pickle.dumps, _pickled_name
        for i, a in enumerate(args):
            if type(a) not in plain:
                break
            parts.append(pname(i))
            parts.append(dumps(a, protocol=PICKLE_PROTOCOL))
        else:
            m = _prefix(name).copy()
            parts.append(_NO_KWARGS)
            m.update(b"".join(parts))
            return m.hexdigest()
    m = hashlib.sha1()
    hash_update(m, [("name", name.encode("utf-8")), ("args", args), ("kwargs", kwargs)], name)
    return m.hexdigest()


def task_keys(tasks: list[Any], task_type: type) -> list[str]:
    """Every task's identity (cached on it, as ``Task.key`` does), in one loop: a million-task
    jugfile computes them all at load, and most are ``f(i)`` with one plain argument, whose
    digest is a copy of a cached hash state plus one pickle (no call per task). Tasks of any
    other type than ``task_type`` (a subclass) are asked for their ``key``."""
    out: list[str] = []
    append = out.append
    one, plain, dumps, tail = _ONE_PLAIN, PLAIN_TYPES, pickle.dumps, _NO_KWARGS
    for t in tasks:
        k = t._key
        if k is None and type(t) is not task_type:
            k = t.key
        elif k is None:
            args = t.args
            if (not t.kwargs and type(args) is tuple and len(args) == 1
                    and type(args[0]) in plain):
                m = one.get(t.name)
                if m is None:
                    k = task_digest(t.name, args, t.kwargs)  # caches the state for the next
                else:
                    m = m.copy()
                    m.update(dumps(args[0], PICKLE_PROTOCOL) + tail)  # positional: faster
                    k = m.hexdigest()
            else:
                k = task_digest(t.name, args, t.kwargs)
            t._key = k
        append(k)
    return out


# -- the bytes jug feeds for its own objects ------------------------------------------------
class _JugTaskGenerator:
    """Stands for an instance of ``jug.task.TaskGenerator`` while pickling, for its bytes only."""

    __slots__ = ("state",)

    def __init__(self, state: tuple[Any, Any]) -> None:
        self.state = state

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (copyreg.__newobj__, (_JugTaskGenerator,), self.state)  # type: ignore[attr-defined]


class _JugPickler(pickle._Pickler):
    """The pure-Python pickler, writing ``_JugTaskGenerator`` as the global jug.task.TaskGenerator.

    The C pickler refuses to name a class after a module it cannot import (or whose attribute is
    another object); the Python one writes the same opcodes and lets us name it.
    """

    def save_global(self, obj: Any, name: Any = None) -> None:
        if obj is _JugTaskGenerator:
            me: Any = self  # the pure-Python pickler's own methods (untyped)
            me.save("jug.task")
            me.save("TaskGenerator")
            me.write(pickle.STACK_GLOBAL)
            me.memoize(obj)
            return
        super().save_global(obj, name)  # type: ignore[misc]


def jug_generator_pickle(f: Callable[..., Any]) -> bytes:
    """The bytes of ``pickle.dumps(jug.TaskGenerator(f), protocol=4)``, without jug.

    jug's TaskGenerator pickles as its class plus the state ``(f.__module__, f.__name__)``.
    """
    buf = io.BytesIO()
    state = (getattr(f, "__module__", None), getattr(f, "__name__", None))
    _JugPickler(buf, protocol=PICKLE_PROTOCOL).dump(_JugTaskGenerator(state))
    return buf.getvalue()


class JugPickled:
    """Hashes as the given bytes: what jug's hash_update feeds for the object it stands for."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __jug_hash__(self) -> bytes:
        return self.data


_OUR_GET_CHECK = b"\x8c\tajug.task\x94\x8c\n_get_check"
_JUG_GET_CHECK = b"\x8c\x08jug.task\x94\x8c\n_get_check"


def jug_get_check_pickle(data: bytes) -> bytes:
    """The pickle (protocol 4) of jug's ``partial(jug.task._get_check, i=i, n=n)``, which is
    how jug hashes a ``return_tuple`` Tasklet, from ``data``, the pickle of ajug's: the
    function's module renamed (one name in one frame; the frame's length shrinks by one)."""
    if data.count(_OUR_GET_CHECK) != 1 or data[2:3] != pickle.FRAME:
        return data  # not the expected shape: hash as it is (an ajug-only identity)
    body = data[11:].replace(_OUR_GET_CHECK, _JUG_GET_CHECK)
    return data[:3] + len(body).to_bytes(8, "little") + body


def _stable(obj: Any) -> Any:
    """frozensets (pickled in hash-seed order) as sets (hashed sorted), inside tuples too."""
    if type(obj) is frozenset:
        return set(obj)
    if type(obj) is tuple:
        return tuple(_stable(o) for o in obj)
    return obj


def _hashable_or_type(obj: Any) -> Any:
    """``obj`` if it can be hashed, else its type's name (what a lambda captures may not be)."""
    try:
        hash_one(obj)
    except Exception:
        return ("unhashable", type(obj).__module__, type(obj).__qualname__)
    return _stable(obj)


def lambda_key(f: Any) -> tuple:
    """A lambda has no stable pickle: identify it by its code and what it captures.

    The same key as jug's, so that Tasklets of lambdas have jug's identities.
    """

    def code_key(c: Any) -> tuple:
        consts = tuple(code_key(x) if hasattr(x, "co_code") else _stable(x) for x in c.co_consts)
        return (c.co_code, consts, c.co_names)

    closure = []
    for cell in f.__closure__ or ():
        try:
            closure.append(_hashable_or_type(cell.cell_contents))
        except ValueError:  # an empty cell
            closure.append(None)
    defaults = tuple(_hashable_or_type(d) for d in f.__defaults__ or ())
    kwdefaults = {k: _hashable_or_type(v) for k, v in (f.__kwdefaults__ or {}).items()}
    return ("<lambda>", code_key(f.__code__), tuple(closure), defaults, kwdefaults)
