"""The messages of protocol version 2: constructors, one schema table, and ``validate``.

Both sides call ``validate`` on every message they receive (and ``Connection.send`` on every
message it sends), so the coordinator and the worker can trust field types after it and never
see a ``KeyError`` or ``TypeError`` from a peer's mistake. Constructors build maps with the
fields in the order of protocol/SPEC.md, which is what makes the golden vectors byte-exact.

Receivers ignore fields they do not know (a later minor revision may add some); senders of
version 2 send exactly the fields listed here.
"""

from __future__ import annotations

import re as _re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from ajug.errors import (  # noqa: F401 - UnknownOp, BadField, AccessDenied are re-exported
    AccessDenied,
    AuthError,
    BadField,
    BadMac,
    FrameTooLarge,
    ProtocolError,
    UnknownOp,
    VersionMismatch,
)

Sender = Literal["client", "server"]

UINT64_MAX = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Nesting limit inside free-form maps (info, meta, status): deeper is a field error.
MAX_DEPTH = 32
NONCE_BYTES = 16
PROOF_BYTES = 32

ROLES = ("worker", "client")
#: ``exited.cause``: the worker died by itself, was killed from outside, or nobody can tell.
DEATH_CAUSES = ("task", "outside", "unknown")
ACCESS = ("full", "read")
LEASE_STATES = ("run", "idle", "finished")
#: ``error`` codes, and whether the sender closes the connection after sending it.
ERROR_CODES: dict[str, bool] = {
    "frame": True,  # length prefix over the limit
    "decode": True,  # body is not one msgpack map with str keys
    "op": True,  # unknown op, or one not allowed at this point of the handshake
    "field": True,  # a field missing or of the wrong type
    "version": True,  # no protocol version in common
    "auth": True,  # wrong proof
    "mac": True,  # a frame after the handshake failed authentication
    "access": False,  # the op needs full access or another role; the request is refused
    "timeout": True,  # the handshake did not complete in time
    "internal": False,  # the request failed on the server; the connection carries on
}
#: Ops each role may send once the handshake is done; ``error`` may always be sent. A worker
#: may also give client orders: it holds the full token, which would open a client connection.
ROLE_OPS: dict[str, frozenset[str]] = {
    "worker": frozenset(
        {"lease", "renew", "resume", "code", "bye", "status", "shutdown", "invalidate", "exited",
         "error"}
    ),
    "client": frozenset({"status", "shutdown", "invalidate", "exited", "bye", "error"}),
}
#: Ops that a connection with access "read" may send.
READ_OPS = frozenset({"status", "bye", "error"})

_KEY = _re.compile(r"[0-9a-f]{40}")


# --- field types ---------------------------------------------------------------------------


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


def _bin(n: int) -> _Type:
    return _Pred(f"bin ({n} bytes)", lambda v: type(v) is bytes and len(v) == n)


def _enum(*values: str) -> _Type:
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


class _List(_Type):
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


class _Tuple(_Type):
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


class _Struct(_Type):
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


class _Fast(_Type):
    """A type whose yes/no check is one hand-written function (for the items that come by the
    thousand: reports and leases); errors are still named by the general type's walk."""

    def __init__(self, general: _Type, ok: Any) -> None:
        self.general = general
        self.what = general.what
        self.ok = ok  # type: ignore[method-assign]

    def check(self, value: Any, op: str, path: str) -> None:
        self.general.check(value, op, path)


MAP = _Map()
#: ``input``: with kind "input-missing", the key of the input whose result was not in the store
TASK_ERROR = _Struct(type=STR, msg=STR, tb=STR, kind=STR, optional={"input": KEY})
_KEY_MATCH = _KEY.fullmatch
_KEYS = _List(KEY)


def _done_item_ok(v: Any) -> bool:
    if type(v) is not list or len(v) != 3:
        return False
    k, tok, meta = v
    return (type(k) is str and _KEY_MATCH(k) is not None and type(tok) is int
            and 0 <= tok <= UINT64_MAX and MAP.ok(meta))


def _lease_item_ok(v: Any) -> bool:
    if type(v) is not dict:
        return False
    k, tok, fn = v.get("key"), v.get("tok"), v.get("fn")
    if not (type(k) is str and _KEY_MATCH(k) is not None and type(tok) is int
            and 0 <= tok <= UINT64_MAX and type(fn) is int and 0 <= fn <= UINT64_MAX
            and type(v.get("args")) is bytes):
        return False
    return "after" not in v or _KEYS.ok(v["after"])


DONE_ITEM = _Fast(_Tuple(("key", KEY), ("tok", UINT), ("meta", MAP)), _done_item_ok)
LEASE_ITEM = _Fast(
    _Struct(key=KEY, tok=UINT, fn=UINT, args=BIN, optional={"after": _KEYS}), _lease_item_ok
)
FUNC_ITEM = _Struct(fn=UINT, name=STR, src=STR, code=BIN)
MODULE_ITEM = _Struct(name=STR, path=STR, pkg=BOOL, src=BIN)
KEY_TOK = _Tuple(("key", KEY), ("tok", UINT))

#: The schema of every message, by the side that sends it. "status" is both a request (client)
#: and a reply (server); "error" may be sent by either side.
SCHEMAS: dict[Sender, dict[str, _Struct]] = {
    "client": {
        "hello": _Struct(
            versions=_List(UINT),
            role=_enum(*ROLES),
            access=_enum(*ACCESS),
            nonce=_bin(NONCE_BYTES),
            host=STR,
            pid=INT,
            name=STR,
        ),
        "auth": _Struct(proof=_bin(PROOF_BYTES)),
        "lease": _Struct(
            id=UINT,
            want=UINT,
            wait_ms=UINT,
            done=_List(DONE_ITEM),
            failed=_List(_Tuple(("key", KEY), ("tok", UINT), ("err", TASK_ERROR))),
            optional={"follow": BOOL},
        ),
        "renew": _Struct(id=UINT, leases=_List(KEY_TOK)),
        "resume": _Struct(id=UINT, running=_List(KEY)),
        "code": _Struct(id=UINT, bundle=BOOL),
        "bye": _Struct(),
        "status": _Struct(id=UINT, detail=BOOL),
        "shutdown": _Struct(id=UINT),
        "invalidate": _Struct(id=UINT, keys=_List(KEY)),
        "exited": _Struct(id=UINT, host=STR, pid=INT, status=INT,
                          cause=_enum(*DEATH_CAUSES), detail=STR),
        "error": _Struct(re=NIL_OR_UINT, code=STR, msg=STR),
    },
    "server": {
        "challenge": _Struct(version=UINT, nonce=_bin(NONCE_BYTES), proof=_bin(PROOF_BYTES)),
        "welcome": _Struct(session=STR, access=_enum(*ACCESS), info=MAP),
        "leases": _Struct(
            re=UINT,
            state=_enum(*LEASE_STATES),
            leases=_List(LEASE_ITEM),
            funcs=_List(FUNC_ITEM),
        ),
        "renewed": _Struct(re=UINT, lost=_List(KEY)),
        "resumed": _Struct(re=UINT, kept=_List(KEY_TOK), lost=_List(KEY)),
        "code": _Struct(re=UINT, jugfile=STR, roots=_List(STR), modules=_List(MODULE_ITEM)),
        "status": _Struct(re=UINT, status=MAP),
        "ok": _Struct(re=UINT),
        "error": _Struct(re=NIL_OR_UINT, code=STR, msg=STR),
    },
}


def validate(msg: Any, sender: Sender | None = None) -> dict[str, Any]:
    """Return ``msg`` unchanged if it is a well-formed message, else raise ``ProtocolError``.

    ``sender`` is the side that sent it ("client" covers workers too); with ``None`` either
    side's ops are accepted and "status" is told apart by its ``re`` field.
    """
    if type(msg) is not dict:
        raise ProtocolError("a message must be a map")
    op = msg.get("op")
    if type(op) is not str:
        raise BadField("message: field op must be str")
    if sender is None:
        replyish = "re" in msg or op not in SCHEMAS["client"]
        sender = "server" if op in SCHEMAS["server"] and replyish else "client"
    schema = SCHEMAS[sender].get(op)
    if schema is None:
        side = "coordinator" if sender == "server" else "client or worker"
        raise UnknownOp(f"unknown op {op[:40]!r} from a {side}")
    # the quick yes/no walk first (no error text built per item); the walk that names the bad
    # field only when the answer is no
    if not schema.ok(msg):
        schema.check(msg, op, "")
    return msg


def check_allowed(msg: Mapping[str, Any], role: str, access: str) -> None:
    """Raise ``AccessDenied`` unless a peer with ``role``/``access`` may send ``msg``.

    The coordinator calls this per request after the handshake; the reply to a refused request
    is ``error`` code "access" and the connection carries on. An op that nobody may send after
    the handshake (``hello``, ``auth``) raises ``UnknownOp`` (code "op", and the close).
    """
    op = msg.get("op")
    if op not in ROLE_OPS["worker"]:  # hello, auth: the handshake is over
        raise UnknownOp(f"unexpected operation {op!r} after the handshake")
    if op not in ROLE_OPS.get(role, ()):
        if role == "client":
            raise AccessDenied(f"{op} is for workers (ajug work); this is a client connection")
        raise AccessDenied(f"{op}: not allowed for a {role} connection")
    if access != "full" and op not in READ_OPS:
        raise AccessDenied(
            f"{op} needs the full token; this connection has read-only access (it proved the "
            "read-only token): use the coordinator's full token (AJUG_TOKEN or --token-file)"
        )


def error_code(exc: BaseException) -> str:
    """The ``error`` code that tells the peer about ``exc``."""
    if isinstance(exc, FrameTooLarge):
        return "frame"
    if isinstance(exc, BadMac):
        return "mac"
    if isinstance(exc, VersionMismatch):
        return "version"
    if isinstance(exc, UnknownOp):
        return "op"
    if isinstance(exc, BadField):
        return "field"
    if isinstance(exc, AccessDenied):
        return "access"
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, ProtocolError):
        return "decode"
    return "internal"


def request_id(msg: Any) -> int | None:
    """The ``id`` of a (possibly invalid) request if it has a usable one, for an error's ``re``."""
    rid = msg.get("id") if type(msg) is dict else None
    return rid if UINT.ok(rid) else None


def error_for(exc: BaseException, re: int | None = None) -> dict[str, Any]:
    """An ``error`` message for ``exc``; internal errors do not leak their text."""
    code = error_code(exc)
    text = "internal error" if code == "internal" else (str(exc) or type(exc).__name__)
    return error(re, code, text)


# --- constructors (field order = SPEC.md order = canonical encoding) -----------------------


def hello(
    *,
    role: str,
    access: str,
    nonce: bytes,
    host: str,
    pid: int,
    name: str,
    versions: Iterable[int] = (2,),
) -> dict[str, Any]:
    return {
        "op": "hello",
        "versions": list(versions),
        "role": role,
        "access": access,
        "nonce": nonce,
        "host": host,
        "pid": pid,
        "name": name,
    }


def challenge(*, version: int, nonce: bytes, proof: bytes) -> dict[str, Any]:
    return {"op": "challenge", "version": version, "nonce": nonce, "proof": proof}


def auth(*, proof: bytes) -> dict[str, Any]:
    return {"op": "auth", "proof": proof}


def welcome(*, session: str, access: str, info: Mapping[str, Any]) -> dict[str, Any]:
    return {"op": "welcome", "session": session, "access": access, "info": dict(info)}


def task_error(type: str, msg: str, tb: str, kind: str, input: str | None = None) -> dict[str, Any]:
    """The ``err`` map of a failed task (``kind``: see SPEC.md; ``input``: the missing input's
    key, with kind "input-missing")."""
    err = {"type": type, "msg": msg, "tb": tb, "kind": kind}
    if input is not None:
        err["input"] = input
    return err


def lease(
    id: int,
    *,
    want: int,
    wait_ms: int = 0,
    done: Iterable[Sequence[Any]] = (),
    failed: Iterable[Sequence[Any]] = (),
    follow: bool = False,
) -> dict[str, Any]:
    """Report ``done`` ``(key, tok, meta)`` and ``failed`` ``(key, tok, err)``; ask for ``want``
    (``follow``: this worker honours ``after`` and may be given follow-on leases)."""
    msg = {
        "op": "lease",
        "id": id,
        "want": want,
        "wait_ms": wait_ms,
        "done": [d if type(d) is list else list(d) for d in done],
        "failed": [f if type(f) is list else list(f) for f in failed],
    }
    if follow:
        msg["follow"] = True
    return msg


def lease_item(key: str, tok: int, fn: int, args: bytes, after: Sequence[str] = ()) -> dict[str, Any]:
    """``after``: keys this worker runs first (a follow-on lease); absent when empty."""
    item = {"key": key, "tok": tok, "fn": fn, "args": args}
    if after:
        item["after"] = list(after)
    return item


def func_item(fn: int, name: str, src: str, code: bytes) -> dict[str, Any]:
    return {"fn": fn, "name": name, "src": src, "code": code}


def leases(
    re: int,
    *,
    state: str,
    leases: Iterable[Mapping[str, Any]] = (),
    funcs: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "op": "leases",
        "re": re,
        "state": state,
        "leases": [x if type(x) is dict else dict(x) for x in leases],
        "funcs": [dict(f) for f in funcs],
    }


def renew(id: int, leases: Iterable[Sequence[Any]]) -> dict[str, Any]:
    return {"op": "renew", "id": id, "leases": [list(kt) for kt in leases]}


def renewed(re: int, lost: Iterable[str] = ()) -> dict[str, Any]:
    return {"op": "renewed", "re": re, "lost": list(lost)}


def resume(id: int, running: Iterable[str]) -> dict[str, Any]:
    return {"op": "resume", "id": id, "running": list(running)}


def resumed(
    re: int, kept: Iterable[Sequence[Any]] = (), lost: Iterable[str] = ()
) -> dict[str, Any]:
    return {"op": "resumed", "re": re, "kept": [list(kt) for kt in kept], "lost": list(lost)}


def code(id: int, bundle: bool = False) -> dict[str, Any]:
    """Where the jugfile's code lives; with ``bundle``, the coordinator's copy of it too."""
    return {"op": "code", "id": id, "bundle": bundle}


def module_item(name: str, path: str, pkg: bool, src: bytes) -> dict[str, Any]:
    return {"name": name, "path": path, "pkg": pkg, "src": src}


def code_reply(
    re: int, *, jugfile: str, roots: Iterable[str], modules: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    return {"op": "code", "re": re, "jugfile": jugfile, "roots": list(roots),
            "modules": [dict(x) for x in modules]}


def bye() -> dict[str, Any]:
    return {"op": "bye"}


def status(id: int, detail: bool = False) -> dict[str, Any]:
    return {"op": "status", "id": id, "detail": detail}


def status_reply(re: int, status: Mapping[str, Any]) -> dict[str, Any]:
    return {"op": "status", "re": re, "status": dict(status)}


def shutdown(id: int) -> dict[str, Any]:
    return {"op": "shutdown", "id": id}


def invalidate(id: int, keys: Iterable[str]) -> dict[str, Any]:
    return {"op": "invalidate", "id": id, "keys": list(keys)}


def exited(id: int, host: str, pid: int, status: int, cause: str, detail: str) -> dict[str, Any]:
    """A supervisor tells how one of its worker processes ended (``status``: an exit status,
    or minus the signal that killed it)."""
    return {"op": "exited", "id": id, "host": host, "pid": pid, "status": status,
            "cause": cause, "detail": detail}


def ok(re: int) -> dict[str, Any]:
    return {"op": "ok", "re": re}


def error(re: int | None, code: str, msg: str) -> dict[str, Any]:
    return {"op": "error", "re": re, "code": code, "msg": msg}
