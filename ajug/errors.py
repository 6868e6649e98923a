"""The one exception tree of ajug.

    AjugError                       root: the CLI prints it as one line, never a traceback
    ├── UsageError                  a bad option, a bad address, a bad setting
    ├── JugfileError                the jugfile is missing or raised while it was loaded
    │   └── IdentityError           an argument whose identity cannot be computed (also TypeError)
    ├── StoreError                  anything the store could not do
    │   ├── StoreUnreachable        redis down, directory gone: retried with backoff
    │   ├── StoreFull               disk or redis memory full: free space and resume
    │   ├── ResultMissing           no result under that key (also KeyError)
    │   ├── ResultDamaged           length or checksum wrong: treated as missing
    │   ├── StoreLocked             another coordinator owns the store (names its host, pid)
    │   └── UnstablePickle          a large result pickled differently the second time
    ├── ProtocolError               a frame or message that breaks protocol/SPEC.md
    │   ├── FrameTooLarge           length prefix over the limit           (error code "frame")
    │   ├── VersionMismatch         no protocol version in common          (error code "version")
    │   ├── BadMac                  a frame after the handshake failed authentication ("mac")
    │   ├── UnknownOp               an op unknown, or not this side's to send here ("op")
    │   ├── BadField                a field missing or of the wrong type   (error code "field")
    │   └── ConnectionClosed        the peer closed the connection, or it broke
    ├── AuthError                   wrong token, or the peer failed to prove it has it
    │   └── AccessDenied            the connection's access or role does not allow the op
    ├── ConnectError                the coordinator cannot be reached (after retries)
    │   └── TLSError                TLS failed: not retried
    ├── LeaseLost                   the coordinator reclaimed a lease
    ├── LaunchError                 a batch system did not submit, list or cancel worker jobs
    ├── NotComputed                 value() of a task whose result is not in the store (shell)
    └── TaskFailed                  a task raised; carries the remote traceback

Lower-layer errors (OSError, msgpack's, redis's) are translated into this tree where they
enter ajug, so callers only ever need to catch ``AjugError``.
"""

from __future__ import annotations


class AjugError(Exception):
    """Root of every error ajug raises on purpose. ``str()`` is one actionable line."""


class UsageError(AjugError):
    pass


class JugfileError(AjugError):
    """``details``: the jugfile's own traceback when it raised (shown with ``-v``)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class IdentityError(JugfileError, TypeError):
    def __init__(self, message: str) -> None:
        super().__init__(message)


class StoreError(AjugError):
    pass


class StoreUnreachable(StoreError):
    pass


class StoreFull(StoreError):
    pass


class ResultMissing(StoreError, KeyError):
    """``key``: the result that is missing or damaged, when the store knows it (a worker then
    reports that input as missing, and the coordinator has it computed again)."""

    def __init__(self, message: str = "result missing", key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "result missing"


class ResultDamaged(StoreError):
    pass


class UnstablePickle(StoreError):
    """A large result pickled differently the second time (see ajug/stores/streams.py)."""


class StoreLocked(StoreError):
    """``holder``: who holds the lock, as "another coordinator on HOST (pid N)", when known."""

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder


class ProtocolError(AjugError):
    pass


class FrameTooLarge(ProtocolError):
    pass


class VersionMismatch(ProtocolError):
    pass


class BadMac(ProtocolError):
    """A frame's MAC does not match: injected, replayed, reordered, dropped before it, or
    altered on the way. The connection is closed (a worker reconnects); not an ``AuthError``,
    since the token was right: it is the path between the two sides that cannot be trusted."""


class UnknownOp(ProtocolError):
    """The op is unknown, or not one this side may send here (error code "op")."""


class BadField(ProtocolError):
    """A field is missing or has the wrong type (error code "field")."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection, or it broke (reset, TLS failure)."""


class AuthError(AjugError):
    pass


class AccessDenied(AuthError):
    """The connection's access or role does not allow the op (error code "access")."""


class ConnectError(AjugError):
    pass


class TLSError(ConnectError):
    """TLS failed (a certificate not trusted, TLS against plain TCP): retrying will not help."""


class LeaseLost(AjugError):
    pass


class LaunchError(AjugError):
    """sbatch/qsub/bsub (or an exec command) failed: the launcher retries with backoff."""


class NotComputed(AjugError):
    """``value()`` of a task whose result is not in the store."""


class TaskFailed(AjugError):
    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback
