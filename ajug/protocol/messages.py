"""The messages of protocol version 2: constructors, one schema table, and ``validate``.

Both sides call ``validate`` on every message they receive (and ``Connection.send`` on every
message it sends), so the coordinator and the worker can trust field types after it and never
see a ``KeyError`` or ``TypeError`` from a peer's mistake. Constructors build maps with the
fields in the order of protocol/SPEC.md, which is what makes the golden vectors byte-exact.

Receivers ignore fields they do not know (a later minor revision may add some); senders of
version 2 send exactly the fields listed here.
"""

from __future__ import annotations

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
from ajug.protocol.schema import (  # noqa: F401 - the field types are re-exported
    BIN,
    BOOL,
    INT,
    INT64_MAX,
    INT64_MIN,
    KEY,
    KEY_MATCH,
    MAP,
    MAX_DEPTH,
    NIL_OR_UINT,
    RESOURCES,
    SECONDS,
    STR,
    UINT,
    UINT64_MAX,
    Fast,
    List,
    Struct,
    Tuple,
    bin_of,
    enum,
)

Sender = Literal["client", "server"]

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



#: ``input``: with kind "input-missing", the key of the input whose result was not in the store
TASK_ERROR = Struct(type=STR, msg=STR, tb=STR, kind=STR, optional={"input": KEY})
_KEYS = List(KEY)


def _done_item_ok(v: Any) -> bool:
    if type(v) is not list or len(v) != 3:
        return False
    k, tok, meta = v
    return (type(k) is str and KEY_MATCH(k) is not None and type(tok) is int
            and 0 <= tok <= UINT64_MAX and MAP.ok(meta))


def _lease_item_ok(v: Any) -> bool:
    if type(v) is not dict:
        return False
    k, tok, fn = v.get("key"), v.get("tok"), v.get("fn")
    if not (type(k) is str and KEY_MATCH(k) is not None and type(tok) is int
            and 0 <= tok <= UINT64_MAX and type(fn) is int and 0 <= fn <= UINT64_MAX
            and type(v.get("args")) is bytes):
        return False
    return ("after" not in v or _KEYS.ok(v["after"])) and ("timeout" not in v
                                                         or SECONDS.ok(v["timeout"]))


DONE_ITEM = Fast(Tuple(("key", KEY), ("tok", UINT), ("meta", MAP)), _done_item_ok)
OFFER = Struct(group=STR, resources=RESOURCES)
LEASE_ITEM = Fast(
    Struct(key=KEY, tok=UINT, fn=UINT, args=BIN, optional={"after": _KEYS, "timeout": SECONDS}),
    _lease_item_ok,
)
FUNC_ITEM = Struct(fn=UINT, name=STR, src=STR, code=BIN)
MODULE_ITEM = Struct(name=STR, path=STR, pkg=BOOL, src=BIN)
KEY_TOK = Tuple(("key", KEY), ("tok", UINT))

#: The schema of every message, by the side that sends it. "status" is both a request (client)
#: and a reply (server); "error" may be sent by either side.
SCHEMAS: dict[Sender, dict[str, Struct]] = {
    "client": {
        "hello": Struct(
            versions=List(UINT),
            role=enum(*ROLES),
            access=enum(*ACCESS),
            nonce=bin_of(NONCE_BYTES),
            host=STR,
            pid=INT,
            name=STR,
        ),
        "auth": Struct(proof=bin_of(PROOF_BYTES)),
        "lease": Struct(
            id=UINT,
            want=UINT,
            wait_ms=UINT,
            done=List(DONE_ITEM),
            failed=List(Tuple(("key", KEY), ("tok", UINT), ("err", TASK_ERROR))),
            optional={"follow": BOOL, "offer": OFFER},
        ),
        "renew": Struct(id=UINT, leases=List(KEY_TOK)),
        "resume": Struct(id=UINT, running=List(KEY)),
        "code": Struct(id=UINT, bundle=BOOL),
        "bye": Struct(),
        "status": Struct(id=UINT, detail=BOOL),
        "shutdown": Struct(id=UINT),
        "invalidate": Struct(id=UINT, keys=List(KEY)),
        "exited": Struct(id=UINT, host=STR, pid=INT, status=INT,
                          cause=enum(*DEATH_CAUSES), detail=STR),
        "error": Struct(re=NIL_OR_UINT, code=STR, msg=STR),
    },
    "server": {
        "challenge": Struct(version=UINT, nonce=bin_of(NONCE_BYTES), proof=bin_of(PROOF_BYTES)),
        "welcome": Struct(session=STR, access=enum(*ACCESS), info=MAP),
        "leases": Struct(
            re=UINT,
            state=enum(*LEASE_STATES),
            leases=List(LEASE_ITEM),
            funcs=List(FUNC_ITEM),
        ),
        "renewed": Struct(re=UINT, lost=List(KEY)),
        "resumed": Struct(re=UINT, kept=List(KEY_TOK), lost=List(KEY)),
        "code": Struct(re=UINT, jugfile=STR, roots=List(STR), modules=List(MODULE_ITEM)),
        "status": Struct(re=UINT, status=MAP),
        "ok": Struct(re=UINT),
        "error": Struct(re=NIL_OR_UINT, code=STR, msg=STR),
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


def done_item(key: str, tok: int, *, rt: float, size: int) -> list[Any]:
    """One entry of a lease request's ``done``: the task ran ``rt`` seconds and its result
    takes ``size`` bytes in the store."""
    return [key, tok, {"rt": rt, "size": size}]


def failed_item(key: str, tok: int, err: Mapping[str, Any]) -> list[Any]:
    """One entry of a lease request's ``failed`` (``err``: a ``task_error`` map)."""
    return [key, tok, dict(err)]


def lease(
    id: int,
    *,
    want: int,
    wait_ms: int = 0,
    done: Iterable[Sequence[Any]] = (),
    failed: Iterable[Sequence[Any]] = (),
    follow: bool = False,
    offer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Report ``done`` ``(key, tok, meta)`` and ``failed`` ``(key, tok, err)``; ask for ``want``
    (``follow``: this worker honours ``after`` and may be given follow-on leases; ``offer``:
    ``{"group": str, "resources": {name: amount}}``, what its host offers, sent in the first
    request of a connection)."""
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
    if offer is not None:
        msg["offer"] = {"group": offer["group"], "resources": dict(offer["resources"])}
    return msg


def lease_item(key: str, tok: int, fn: int, args: bytes, after: Sequence[str] = (),
               timeout: float | None = None) -> dict[str, Any]:
    """``after``: keys this worker runs first (a follow-on lease); absent when empty.
    ``timeout``: seconds the task may run before its worker stops it; absent: no limit."""
    item: dict[str, Any] = {"key": key, "tok": tok, "fn": fn, "args": args}
    if after:
        item["after"] = list(after)
    if timeout:
        item["timeout"] = timeout
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
