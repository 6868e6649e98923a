"""The handshake: version negotiation and mutual challenge-response authentication.

Two small state machines over messages (no I/O), one per side. Each ``receive`` takes the
peer's next message and returns the messages to send back, or raises ``AuthError``,
``VersionMismatch`` or ``ProtocolError``; ``messages.error_for`` turns that exception into the
``error`` reply. The token never crosses the wire: each side proves it holds the token with an
HMAC over both sides' fresh nonces, so a recorded ``auth`` is useless on a later connection.
The worker checks the coordinator's proof *before* it sends its own, because it is about to run
code the coordinator sends. Once a side has checked the other's proof it has ``keys``: the
session keys (``mac.session_keys``) that authenticate every later frame, ``welcome`` included.

Tokens are kept out of every ``repr``, exception message and log line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from ajug.errors import AuthError, ProtocolError, UsageError, VersionMismatch
from ajug.protocol import messages as m
from ajug.protocol.mac import SessionKeys, session_keys

#: Protocol versions this implementation speaks. Only 2: version 1 had no frame MACs, and a
#: relay could make two peers that both still spoke it agree on it (a downgrade).
PROTOCOL_VERSIONS: tuple[int, ...] = (2,)
#: HMAC labels (fixed ASCII, no terminator) so that a proof of one side is never valid for the
#: other. They kept their "1" in version 2: the proofs did not change.
SERVER_LABEL = b"ajug/1 server"
CLIENT_LABEL = b"ajug/1 client"
NONCE_BYTES = m.NONCE_BYTES


def new_nonce() -> bytes:
    """A fresh random nonce: what makes every connection's proofs different."""
    return secrets.token_bytes(NONCE_BYTES)


def server_proof(token: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """HMAC-SHA256(token, "ajug/1 server" + client_nonce + server_nonce)."""
    return hmac.new(token, SERVER_LABEL + client_nonce + server_nonce, hashlib.sha256).digest()


def client_proof(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """HMAC-SHA256(token, "ajug/1 client" + server_nonce + client_nonce)."""
    return hmac.new(token, CLIENT_LABEL + server_nonce + client_nonce, hashlib.sha256).digest()


def _check_token(token: Any, what: str) -> bytes:
    if not isinstance(token, bytes):
        raise TypeError(f"{what} must be bytes, not {type(token).__name__}")
    return token


def _check_nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return new_nonce()
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    return nonce


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


class ClientHandshake:
    """The worker's or client's side: ``hello()``, then ``receive`` challenge and welcome.

    ``server`` ("host:port") is only used in error messages. ``nonce`` is for golden vectors
    and tests; leave it ``None`` otherwise.
    """

    def __init__(
        self,
        token: bytes,
        role: str,
        access: str = "full",
        host: str = "",
        pid: int = 0,
        name: str = "",
        *,
        versions: tuple[int, ...] = PROTOCOL_VERSIONS,
        server: str = "?",
        nonce: bytes | None = None,
    ) -> None:
        self._token = _check_token(token, "token")
        if role not in m.ROLES:
            raise UsageError(f"role must be one of {m.ROLES}, not {role!r}")
        if access not in m.ACCESS:
            raise UsageError(f"access must be one of {m.ACCESS}, not {access!r}")
        if role == "worker" and access != "full":
            raise UsageError("a worker needs the full token: it runs the coordinator's code")
        self.role, self.access, self.host, self.pid, self.name = role, access, host, pid, name
        self.versions = tuple(versions)
        self.server = server
        self.nonce = _check_nonce(nonce)
        self._state = "start"
        self.version: int | None = None
        self.session: str | None = None
        self.info: dict[str, Any] = {}
        #: set once the coordinator's proof checked out (before ``auth`` is sent)
        self.keys: SessionKeys | None = None

    def __repr__(self) -> str:
        return (
            f"<ClientHandshake {self.role} access={self.access} server={self.server} "
            f"state={self._state}>"
        )

    @property
    def done(self) -> bool:
        return self._state == "done"

    def hello(self) -> dict[str, Any]:
        """The first message of the connection."""
        if self._state != "start":
            raise ProtocolError("hello() was already sent")
        self._state = "challenge"
        return m.hello(
            role=self.role,
            access=self.access,
            nonce=self.nonce,
            host=self.host,
            pid=self.pid,
            name=self.name,
            versions=self.versions,
        )

    def receive(self, msg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Take the coordinator's next message; return what to send (``[]`` when done)."""
        msg = m.validate(msg, "server")
        op = msg["op"]
        if op == "error":
            raise self._refused(msg)
        if self._state == "challenge" and op == "challenge":
            return [self._on_challenge(msg)]
        if self._state == "welcome" and op == "welcome":
            if msg["access"] != self.access:
                raise ProtocolError(
                    f"the coordinator at {self.server} granted {msg['access']} access, "
                    f"we asked for {self.access}"
                )
            self.session, self.info = msg["session"], msg["info"]
            self._state = "done"
            return []
        raise m.UnknownOp(f"handshake: expected {self._state}, got {op}")

    def _on_challenge(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["version"] not in self.versions:
            raise VersionMismatch(
                f"the coordinator at {self.server} chose protocol version {msg['version']}, "
                f"we offered {list(self.versions)}"
            )
        expected = server_proof(self._token, self.nonce, msg["nonce"])
        if not hmac.compare_digest(expected, msg["proof"]):
            raise AuthError(self._wrong_token())
        self.version = msg["version"]
        self.keys = session_keys(self._token, self.nonce, msg["nonce"], self.role, self.access)
        self._state = "welcome"
        return m.auth(proof=client_proof(self._token, msg["nonce"], self.nonce))

    def _wrong_token(self) -> str:
        if self.role == "worker":  # it was about to run this peer's code: say that it won't
            return (
                f"the coordinator at {self.server} did not prove it has the token; refusing to "
                "run its code (if it is yours, the tokens differ: check AJUG_TOKEN or "
                "--token-file on both sides)"
            )
        which = "read-only token" if self.access == "read" else "token"
        where = "AJUG_READ_TOKEN" if self.access == "read" else "AJUG_TOKEN or --token-file"
        return (
            f"our {which} does not match the one of the coordinator at {self.server}: "
            f"check {where} (it must be the coordinator's)"
        )

    def _refused(self, msg: dict[str, Any]) -> Exception:
        code, text = msg["code"], _short(msg["msg"])
        where = f"the coordinator at {self.server}"
        if code == "version":
            return VersionMismatch(f"{where} speaks no protocol version we speak: {text}")
        if code == "auth":
            return AuthError(f"{where} refused our token for {self.access} access: {text}")
        if code == "access":
            return m.AccessDenied(f"{where} refused {self.role} access: {text}")
        return ProtocolError(f"{where} ended the handshake ({code}): {text}")


class ServerHandshake:
    """The coordinator's side: ``receive`` hello, then auth.

    A "read" request is checked against ``read_token`` when one is configured, else against
    ``full_token``. ``nonce`` and ``session`` are for golden vectors and tests.
    """

    def __init__(
        self,
        full_token: bytes,
        read_token: bytes | None = None,
        versions: tuple[int, ...] = PROTOCOL_VERSIONS,
        *,
        welcome_info: Mapping[str, Any] | None = None,
        session: str | None = None,
        nonce: bytes | None = None,
    ) -> None:
        self._full = _check_token(full_token, "full_token")
        self._read = None if read_token is None else _check_token(read_token, "read_token")
        self.versions = tuple(versions)
        self.welcome_info = dict(welcome_info or {})
        self.session = session if session is not None else secrets.token_hex(8)
        self.nonce = _check_nonce(nonce)
        self._state = "hello"
        self._token = b""
        self._client_nonce = b""
        self.version: int | None = None
        self.role: str | None = None
        self.access: str | None = None
        self.host: str | None = None
        self.pid: int | None = None
        self.name: str | None = None
        #: set once the client's proof checked out (before ``welcome`` is sent)
        self.keys: SessionKeys | None = None

    def __repr__(self) -> str:
        return (
            f"<ServerHandshake state={self._state} role={self.role} access={self.access} "
            f"session={self.session}>"
        )

    @property
    def done(self) -> bool:
        return self._state == "done"

    def receive(self, msg: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Take the client's next message; return what to send back."""
        msg = m.validate(msg, "client")
        op = msg["op"]
        if self._state == "hello" and op == "hello":
            return [self._on_hello(msg)]
        if self._state == "auth" and op == "auth":
            return [self._on_auth(msg)]
        if op == "error":
            raise ProtocolError(f"the client ended the handshake ({msg['code']})")
        raise m.UnknownOp(f"handshake: expected {self._state}, got {op}")

    def _on_hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        common = set(self.versions).intersection(msg["versions"])
        if not common:
            theirs = sorted(set(msg["versions"]))[:8]
            raise VersionMismatch(
                f"no protocol version in common: the client speaks {theirs}, "
                f"this coordinator speaks {sorted(self.versions)} (run the same ajug "
                "release on every machine)"
            )
        if msg["role"] == "worker" and msg["access"] != "full":
            raise m.AccessDenied("a worker needs full access")
        self.version = max(common)
        self.role, self.access = msg["role"], msg["access"]
        self.host, self.pid, self.name = msg["host"], msg["pid"], msg["name"]
        read = self._read if self.access == "read" else None
        self._token = read if read is not None else self._full
        self._client_nonce = msg["nonce"]
        self._state = "auth"
        return m.challenge(
            version=self.version,
            nonce=self.nonce,
            proof=server_proof(self._token, self._client_nonce, self.nonce),
        )

    def _on_auth(self, msg: dict[str, Any]) -> dict[str, Any]:
        expected = client_proof(self._token, self.nonce, self._client_nonce)
        if not hmac.compare_digest(expected, msg["proof"]):
            raise AuthError(f"wrong token for {self.access} access")
        self._state = "done"
        assert self.access is not None and self.role is not None
        self.keys = session_keys(self._token, self._client_nonce, self.nonce, self.role, self.access)
        return m.welcome(session=self.session, access=self.access, info=self.welcome_info)
