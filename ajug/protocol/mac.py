"""Authenticated frames after the handshake: the session keys and the per-frame MAC (SPEC 5.3).

The handshake proves that both sides hold the token, but a relay that forwards it faithfully
would otherwise own the connection afterwards and could answer a worker's ``lease`` with code
of its own. So both sides derive two keys from the handshake (HKDF-SHA256 over the token, salted
with both nonces; one key per direction, bound to the role and access asked for) and every later
frame carries HMAC-SHA256 under its direction's key over an implicit sequence number and the
frame's bytes. A frame that was injected, replayed, reordered, altered, or that follows a
dropped one does not verify, and the receiver closes the connection.

Pure: bytes in, bytes out, no I/O. ``framing`` seals and opens frames with a ``FrameMac``;
``auth`` derives the keys; ``connection`` switches a connection over once the handshake is done.
Keys never appear in a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from ajug.errors import ProtocolError
from ajug.protocol import messages as m

#: Bytes of the MAC that ends every frame after the handshake (HMAC-SHA256, not truncated).
TAG_BYTES = 32
#: The sequence number's encoding inside the MAC input: uint64, big-endian.
SEQ = struct.Struct(">Q")
MAX_SEQ = 2**64 - 1
#: HKDF ``info`` labels (ASCII); ``role`` and ``access`` follow, each after one space. Every role
#: is 6 bytes ("worker", "client") and every access 4 ("full", "read"), so ``info`` is unambiguous.
CLIENT_TO_SERVER = b"ajug/2 key client>server"
SERVER_TO_CLIENT = b"ajug/2 key server>client"


@dataclass(frozen=True)
class SessionKeys:
    """The two keys of one connection: ``c2s`` for the worker's or client's frames, ``s2c`` for
    the coordinator's."""

    c2s: bytes = field(repr=False)
    s2c: bytes = field(repr=False)


def session_keys(
    token: bytes, client_nonce: bytes, server_nonce: bytes, role: str, access: str
) -> SessionKeys:
    """HKDF-SHA256 (RFC 5869): salt = cn || sn, IKM = token, one 32-byte key per direction.

    Binding ``role`` and ``access`` means that a relay which rewrites them in ``hello`` (the
    proofs do not cover them) leaves the two sides with different keys: the ``welcome`` fails.
    """
    if role not in m.ROLES or access not in m.ACCESS:
        raise ValueError(f"role must be one of {m.ROLES} and access one of {m.ACCESS}")
    if len(client_nonce) != m.NONCE_BYTES or len(server_nonce) != m.NONCE_BYTES:
        raise ValueError(f"a nonce is {m.NONCE_BYTES} bytes")
    prk = hmac.new(client_nonce + server_nonce, token, hashlib.sha256).digest()
    bound = b" " + role.encode() + b" " + access.encode() + b"\x01"
    return SessionKeys(
        c2s=hmac.new(prk, CLIENT_TO_SERVER + bound, hashlib.sha256).digest(),
        s2c=hmac.new(prk, SERVER_TO_CLIENT + bound, hashlib.sha256).digest(),
    )


class FrameMac:
    """One direction of one connection: its key and the sequence number of its next frame.

    ``seal`` (sender) and ``check`` (receiver) each advance the number by one, so the two
    ends agree on it without sending it: frame number ``seq`` is
    ``HMAC-SHA256(key, uint64_be(seq) || length prefix || body)``, appended to the body.
    The keyed hash object is made once; every frame costs a ``copy`` of it.
    """

    __slots__ = ("_base", "seq")

    def __init__(self, key: bytes, seq: int = 0) -> None:
        if len(key) != 32:
            raise ValueError("a frame key is 32 bytes")
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self.seq = seq

    def __repr__(self) -> str:
        return f"<FrameMac seq={self.seq}>"

    def tag(self, seq: int, prefix: bytes, body: bytes | memoryview) -> bytes:
        """The MAC of frame number ``seq`` (does not advance)."""
        h = self._base.copy()
        h.update(SEQ.pack(seq) + prefix)
        h.update(body)
        return h.digest()

    def seal(self, prefix: bytes, body: bytes | memoryview) -> bytes:
        """The tag of the next frame to send; advances the sequence number."""
        seq = self.seq
        if seq > MAX_SEQ:
            raise ProtocolError("2**64 frames sent on one connection: reconnect")
        self.seq = seq + 1
        return self.tag(seq, prefix, body)

    def check(self, prefix: bytes, body: bytes | memoryview, tag: bytes | memoryview) -> bool:
        """Whether ``tag`` is right for the next frame expected; advances only if it is."""
        if self.seq > MAX_SEQ or not hmac.compare_digest(self.tag(self.seq, prefix, body), tag):
            return False
        self.seq += 1
        return True
