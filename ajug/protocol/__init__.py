"""The wire protocol of ajug (version 2), specified in protocol/SPEC.md.

``framing``, ``messages`` and ``auth`` are pure (bytes and dicts in, bytes and dicts out);
``connection`` is the only module that touches asyncio. Import the I/O-free parts freely;
the coordinator and the worker use ``open_connection`` / ``accept`` and ``Connection``.
"""

from __future__ import annotations

from ajug.protocol.auth import PROTOCOL_VERSIONS, ClientHandshake, ServerHandshake
from ajug.protocol.connection import (
    HANDSHAKE_TIMEOUT_S,
    Connection,
    ConnectionClosed,
    Peer,
    accept,
    open_connection,
)
from ajug.protocol.framing import MAX_FRAME_BYTES, FrameDecoder, decode_body, encode_frame
from ajug.protocol.messages import AccessDenied, BadField, UnknownOp, check_allowed, validate

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSIONS",
    "AccessDenied",
    "BadField",
    "ClientHandshake",
    "Connection",
    "ConnectionClosed",
    "FrameDecoder",
    "Peer",
    "ServerHandshake",
    "UnknownOp",
    "accept",
    "check_allowed",
    "decode_body",
    "encode_frame",
    "open_connection",
    "validate",
]
