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
  size, ``BadMac`` for a frame that fails authentication), never a msgpack or ``ValueError``
  exception.
- After the handshake both take a ``FrameMac`` (``mac``): a frame's last ``TAG_BYTES`` are then
  its MAC (SPEC 2.1), and the decoder checks it before it looks at the body at all, so nothing an
  unauthenticated sender put there is ever decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import msgpack

from ajug.errors import BadMac, FrameTooLarge, ProtocolError
from ajug.protocol.mac import TAG_BYTES, FrameMac

#: Default limit on one frame: the length prefix's value (the body and, after the handshake, its MAC).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Limit on frames before the handshake has completed: an unauthenticated peer gets no more.
HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024
#: Hard ceiling of the format: the prefix is an unsigned 32-bit integer.
FORMAT_MAX_FRAME_BYTES = 2**32 - 1

_PREFIX = struct.Struct(">I")
PREFIX_BYTES = _PREFIX.size


def encode_frame(
    msg: Mapping[str, Any], *, max_frame_bytes: int = MAX_FRAME_BYTES, mac: FrameMac | None = None
) -> bytes:
    """Return the whole frame (prefix + canonical msgpack [+ MAC]) for ``msg``.

    Raises ``FrameTooLarge`` rather than produce a frame the peer would refuse, and
    ``ProtocolError`` for a value msgpack cannot carry (the message is a caller bug, but the
    caller only has to catch ajug errors). With ``mac`` the frame is sealed with the next
    sequence number (only once it is known to fit: a refused message uses up no number).
    """
    try:
        body = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {_op_of(msg)} message: {exc}") from None
    return frame_body(body, max_frame_bytes=max_frame_bytes, mac=mac, what=_op_of(msg))


def frame_body(
    body: bytes,
    *,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    mac: FrameMac | None = None,
    what: str = "a",
) -> bytes:
    """The frame for an already encoded ``body`` (whatever it holds): prefix, body, MAC."""
    n = len(body) + (TAG_BYTES if mac is not None else 0)
    limit = min(max_frame_bytes, FORMAT_MAX_FRAME_BYTES)
    if n > limit:
        raise FrameTooLarge(
            f"{what} message is {n} bytes, over the frame limit of {limit} bytes"
        )
    prefix = _PREFIX.pack(n)
    if mac is None:
        return prefix + body
    return b"".join((prefix, body, mac.seal(prefix, body)))


def decode_body(body: bytes | memoryview) -> dict[str, Any]:
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
    """Incremental decoder: ``push`` whatever the socket gave, ``next`` the complete frames one
    at a time (``feed`` does both and returns every complete frame).

    One at a time because the format changes between two frames: the connection sets ``mac``
    once the handshake is done, and the frames after that point must be checked with it (a
    peer that pipelines, or cheats, may have sent them in the same read).

    After an error the stream cannot be resynchronised: the decoder stays failed and every
    later call raises the same error. Frames completed before a bad one are returned first (by
    ``feed``, the error is raised by its next call; ``feed(b"")`` is enough), so a peer's last
    good requests are not lost with the bad one.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES, mac: FrameMac | None = None) -> None:
        self.max_frame_bytes = max_frame_bytes
        #: set after the handshake: every frame then ends with its MAC, checked before decoding
        self.mac = mac
        #: the client side, right after sending ``auth``: the coordinator's answer is a sealed
        #: ``welcome`` or, if it refused our proof, a plain ``error`` (it has no keys in common
        #: with us then). Only for that one frame, and only an ``error`` (SPEC 5.3).
        self.plain_error_once = False
        self._buf = bytearray()
        self._need: int | None = None  # the prefix value once the prefix has been read
        self._error: ProtocolError | None = None

    def __repr__(self) -> str:
        return (
            f"<FrameDecoder max_frame_bytes={self.max_frame_bytes} "
            f"buffered={len(self._buf)} failed={self.failed} mac={self.mac!r}>"
        )

    @property
    def failed(self) -> bool:
        """True once a bad frame was seen; the connection must then be closed."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes held that are not a complete frame yet (0 between frames, once all are read)."""
        return len(self._buf) + (PREFIX_BYTES if self._need is not None else 0)

    def push(self, data: bytes) -> None:
        """Add bytes (kept only until ``next`` has taken the frames out of them)."""
        if self._error is None and data:
            self._buf += data

    def next(self) -> dict[str, Any] | None:
        """The next complete frame, or None until more bytes are pushed."""
        if self._error is not None:
            raise self._error
        try:
            if self._need is None:
                if len(self._buf) < PREFIX_BYTES:
                    return None
                (need,) = _PREFIX.unpack_from(self._buf)
                if need > self.max_frame_bytes:
                    raise FrameTooLarge(
                        f"frame of {need} bytes is over the limit of "
                        f"{self.max_frame_bytes} bytes; refused without reading it"
                    )
                del self._buf[:PREFIX_BYTES]
                self._need = need
            need = self._need
            if len(self._buf) < need:
                return None
            frame = bytes(self._buf[:need])
            del self._buf[:need]
            self._need = None
            return decode_body(frame) if self.mac is None else self._open(frame)
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()  # never hold an oversize or bad body
            raise

    def _open(self, frame: bytes) -> dict[str, Any]:
        """Check a sealed frame's MAC, then decode its body."""
        assert self.mac is not None
        plain_error_ok, self.plain_error_once = self.plain_error_once, False
        seq = self.mac.seq
        if len(frame) >= TAG_BYTES:
            view = memoryview(frame)
            body = view[:-TAG_BYTES]
            if self.mac.check(_PREFIX.pack(len(frame)), body, view[-TAG_BYTES:]):
                return decode_body(body)
        if plain_error_ok:
            try:
                msg = decode_body(frame)
            except ProtocolError:
                msg = None
            if msg is not None and msg.get("op") == "error":
                return msg
        raise BadMac(
            f"frame {seq} failed authentication (its MAC does not match: injected, replayed, "
            "reordered, altered on the way, or one before it was dropped)"
        )

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the frames they complete, in order."""
        if self._error is not None:
            raise self._error
        self.push(data)
        frames: list[dict[str, Any]] = []
        try:
            while (frame := self.next()) is not None:
                frames.append(frame)
        except ProtocolError:
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
