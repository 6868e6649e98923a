"""Frames: a 4-byte big-endian length, then that many bytes holding exactly one msgpack map.

Pure functions over bytes (no sockets, no event loop), so that the whole codec is tested by
feeding bytes and comparing bytes. What a caller can rely on:

- ``encode_frame`` produces the canonical encoding of protocol/SPEC.md (msgpack-python's
  ``packb(use_bin_type=True)``: smallest int forms, float64, maps in insertion order), so the
  golden vectors re-encode byte for byte.
- ``FrameDecoder`` never buffers the body of a frame whose length prefix is over the limit: it
  raises ``FrameTooLarge`` as soon as the four prefix bytes are in. A small frame cannot make it
  allocate a large structure (every declared length is bounded by the frame's own length), and
  every map key it returns is a ``str``.
- Everything that goes wrong with the bytes is a ``ProtocolError`` (``FrameTooLarge`` for the
  size), never a msgpack or ``ValueError`` exception.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import msgpack

from ajug.errors import FrameTooLarge, ProtocolError

#: Default limit on the body of one frame (the length prefix value).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Limit on frames before the handshake has completed: an unauthenticated peer gets no more.
HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024
#: Hard ceiling of the format: the prefix is an unsigned 32-bit integer.
FORMAT_MAX_FRAME_BYTES = 2**32 - 1

_PREFIX = struct.Struct(">I")
PREFIX_BYTES = _PREFIX.size


def encode_frame(msg: Mapping[str, Any], *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Return the whole frame (prefix + canonical msgpack) for ``msg``.

    Raises ``FrameTooLarge`` rather than produce a frame the peer would refuse, and
    ``ProtocolError`` for a value msgpack cannot carry (the message is a caller bug, but the
    caller only has to catch ajug errors).
    """
    try:
        body = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {_op_of(msg)} message: {exc}") from None
    limit = min(max_frame_bytes, FORMAT_MAX_FRAME_BYTES)
    if len(body) > limit:
        raise FrameTooLarge(
            f"{_op_of(msg)} message is {len(body)} bytes, over the frame limit of {limit} bytes"
        )
    return _PREFIX.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body into a map with ``str`` keys, or raise ``ProtocolError``."""
    n = len(body)
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_str_keyed_map,
            ext_hook=_refuse_ext,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n // 2,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData:
        raise ProtocolError("frame body has trailing bytes after its msgpack value") from None
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, OverflowError
        raise ProtocolError(f"frame body is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"frame body must be a msgpack map, not {_kind(value)}")
    return value


class FrameDecoder:
    """Incremental decoder: feed it whatever the socket gave, get back the complete frames.

    After an error the stream cannot be resynchronised: the decoder stays failed and every
    later ``feed`` raises the same error. Frames completed before a bad one in the same
    ``feed`` call are returned first and the error is raised by the next call (``feed(b"")``
    is enough), so a peer's last good requests are not lost with the bad one.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need: int | None = None  # body length once the prefix has been read
        self._error: ProtocolError | None = None

    def __repr__(self) -> str:
        return (
            f"<FrameDecoder max_frame_bytes={self.max_frame_bytes} "
            f"buffered={len(self._buf)} failed={self.failed}>"
        )

    @property
    def failed(self) -> bool:
        """True once a bad frame was seen; the connection must then be closed."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that is not complete yet (0 between frames)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the frames they complete, in order."""
        if self._error is not None:
            raise self._error
        if data:
            self._buf += data
        frames: list[dict[str, Any]] = []
        try:
            while True:
                if self._need is None:
                    if len(self._buf) < PREFIX_BYTES:
                        break
                    (need,) = _PREFIX.unpack_from(self._buf)
                    if need > self.max_frame_bytes:
                        raise FrameTooLarge(
                            f"frame of {need} bytes is over the limit of "
                            f"{self.max_frame_bytes} bytes; refused without reading it"
                        )
                    del self._buf[:PREFIX_BYTES]
                    self._need = need
                if len(self._buf) < self._need:
                    break
                body = bytes(self._buf[: self._need])
                del self._buf[: self._need]
                self._need = None
                frames.append(decode_body(body))
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()  # never hold an oversize or bad body
            if not frames:
                raise
        return frames


def _str_keyed_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if type(key) is not str:
            raise ProtocolError(f"map keys must be str, not {_kind(key)}")
        if key in out:
            raise ProtocolError(f"map has the key {key[:40]!r} twice")
        out[key] = value
    return out


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} is not part of the protocol")


def _op_of(msg: Any) -> str:
    op = msg.get("op") if isinstance(msg, Mapping) else None
    return repr(op[:40]) if isinstance(op, str) else "a"


def _kind(value: Any) -> str:
    """The msgpack kind of a decoded value, for error messages."""
    return {
        type(None): "nil",
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        bytes: "bin",
        list: "array",
        dict: "map",
    }.get(type(value), type(value).__name__)
