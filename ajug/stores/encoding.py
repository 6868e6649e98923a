"""Writing a result in ajug's format (format.py has the layout): pickled as a value is
returned, laid out as pieces without copying large buffers, written out in bounded slices."""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

from ..errors import UsageError
from . import streams
from .format import (  # noqa: F401 - the layout's names, for callers of encoding
    BY_VALUE_MODULES,
    FLAG_CLOUDPICKLE,
    FLAG_ZLIB,
    FORMAT_VERSION,
    HEADER,
    HEADER_BYTES,
    IO_SLICE_BYTES,
    MAGIC,
    MAX_META_BYTES,
    TABLE_ENTRY,
    Piece,
    crc32,
)

log = logging.getLogger(__name__)

@dataclass
class Encoded:
    """A value laid out for writing: ``pieces`` concatenated are the encoded result.

    Large pieces are views of the caller's arrays, not copies: write them out before mutating
    the value.
    """

    pieces: list[Piece]
    size: int
    meta: dict[str, Any]
    #: ``meta`` as stored in the header (msgpack), for stores that keep it apart too
    meta_bytes: bytes = b""

    def __iter__(self) -> Iterator[Piece]:
        return iter(self.pieces)


# ---------------------------------------------------------------------------------- encoding


@dataclass
class Pickled:
    """A value as a pickle stream and its out-of-band buffers: what it was at the moment it
    was pickled. A worker pickles a task's result as the task returns, so that what is stored
    (and what its dependents receive) is that, whatever happens to the object afterwards.

    ``raws`` may be views of the value's own arrays: the value must not change before they are
    written out or copied (``loads`` copies them)."""

    data: bytes
    raws: list[memoryview]
    cloudpickle: bool
    #: a stream too long to hold (``data`` is then empty): produced again when written out
    spilled: streams.Spilled | None = None

    @property
    def nbytes(self) -> int:
        stream = self.spilled.length if self.spilled is not None else len(self.data)
        return stream + sum(r.nbytes for r in self.raws)

    def loads(self) -> Any:
        """A new copy of the value (buffers copied: a caller may change it in place)."""
        data = self.spilled.materialize() if self.spilled is not None else self.data
        if not self.raws:
            return pickle.loads(data)
        return pickle.loads(data, buffers=[bytearray(r) for r in self.raws])


def pickle_value(value: Any) -> Pickled:
    """Plain pickle (fast) unless it fails or refers to ``__main__``; then cloudpickle. A value
    whose stream may be long is pickled in bounded memory (``streams``)."""
    if streams.maybe_large(value):
        data, pbufs, cloud = streams.pickle_bounded(value)
        raws = [pb.raw() for pb in pbufs]
        if isinstance(data, streams.Spilled):
            return Pickled(b"", raws, cloud, data)
        return Pickled(data, raws, cloud)
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        if not any(name in data for name in BY_VALUE_MODULES):
            return Pickled(data, [pb.raw() for pb in buffers], False)
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    import cloudpickle

    buffers = []
    data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return Pickled(data, [pb.raw() for pb in buffers], True)


def _compress(view: memoryview) -> bytes:
    comp = zlib.compressobj()
    out = [comp.compress(view[i : i + IO_SLICE_BYTES]) for i in range(0, len(view), IO_SLICE_BYTES)]
    out.append(comp.flush())
    return b"".join(out)


def _pack_meta(meta: dict[str, Any]) -> bytes:
    try:
        packed = msgpack.packb(meta, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise UsageError(f"result metadata must be msgpack-serializable: {e}") from e
    if len(packed) > MAX_META_BYTES:
        raise UsageError(f"result metadata is {len(packed)} bytes; the limit is {MAX_META_BYTES}")
    return packed


#: the last metadata length seen, by number of caller's fields: the guess for the next one
_META_LEN_GUESS: dict[int, int] = {}


def as_encoded(value: Any, meta: dict[str, Any] | None, compress: bool) -> Encoded:
    """``value`` itself if it was encoded already (a worker encodes a result as its task
    returns; ``meta`` is then in it), else its encoding."""
    if isinstance(value, Encoded):
        return value
    return encode(value, meta, compress)


def encode(value: Any, meta: dict[str, Any] | None = None, compress: bool = False) -> Encoded:
    """Lay ``value`` out as pieces without copying its large buffers.

    ``meta`` is copied and completed: ``ts`` (time written) unless given, and ``size``, the
    exact total encoded length.
    """
    return encode_pickled(pickle_value(value), meta, compress)


def encode_pickled(p: Pickled, meta: dict[str, Any] | None = None,
                   compress: bool = False) -> Encoded:
    """``encode`` of a value already pickled. A spilled stream stays a ``streams.Spilled``
    piece, written out by ``write_to`` / ``write_chunks`` (or ``join``)."""
    data: Any = p.data
    raws = p.raws
    flags = FLAG_CLOUDPICKLE if p.cloudpickle else 0
    if p.spilled is not None and compress:
        data = p.spilled.materialize()
    pickle_raw_len = len(data) if p.spilled is None or compress else p.spilled.length
    stored: list[Piece]
    if compress:
        flags |= FLAG_ZLIB
        data = _compress(memoryview(data))
        stored = [_compress(r) for r in raws]
    else:
        stored = list(raws)
    table = b"".join(TABLE_ENTRY.pack(len(s), len(r)) for s, r in zip(stored, raws, strict=True))
    if p.spilled is not None and not compress:
        data = p.spilled
        crc = p.spilled.crc
    else:
        crc = crc32(data)
    for piece in stored:
        crc = crc32(piece, crc)
    body = HEADER_BYTES + len(table) + len(data) + sum(len(s) for s in stored)

    full_meta = dict(meta or {})
    full_meta.setdefault("ts", time.time())
    # size includes the metadata that states it: guess its length, then iterate to a fixed
    # point (the first guess is almost always right: one pack)
    shape = len(full_meta)
    guess = _META_LEN_GUESS.get(shape, 0)
    full_meta["size"] = body + guess
    meta_bytes = _pack_meta(full_meta)
    for _ in range(4):
        if len(meta_bytes) == guess:
            break
        guess = len(meta_bytes)
        full_meta["size"] = body + guess
        meta_bytes = _pack_meta(full_meta)
    _META_LEN_GUESS[shape] = guess
    fields = (
        MAGIC, FORMAT_VERSION, flags, 0, len(meta_bytes), len(stored), len(data), pickle_raw_len,
        crc32(table), crc, crc32(meta_bytes),
    )  # fmt: skip
    head = HEADER.pack(*fields, 0)
    head = HEADER.pack(*fields, crc32(head[:-4]))
    pieces: list[Piece] = [head + meta_bytes + table, data, *stored]
    return Encoded(pieces, body + len(meta_bytes), full_meta, meta_bytes)


def encode_bytes(value: Any, meta: dict[str, Any] | None = None, compress: bool = False) -> bytes:
    """The whole encoding as one ``bytes`` (a copy: for small values and tests)."""
    return join(encode(value, meta, compress))


def join(encoded: Encoded) -> bytes:
    """The whole encoding as one ``bytes`` (a spilled stream produced again, in memory)."""
    parts: list[Any] = []
    _each_slice(encoded, parts.append)
    return b"".join(parts)


def _each_slice(encoded: Encoded, write: Callable[[Any], Any]) -> None:
    """Every piece to ``write``, in slices of at most ``IO_SLICE_BYTES``."""
    for piece in encoded.pieces:
        if isinstance(piece, streams.Spilled):
            piece.write_into(write)
            continue
        view = memoryview(piece).cast("B")
        for i in range(0, len(view), IO_SLICE_BYTES):
            write(view[i : i + IO_SLICE_BYTES])


def write_to(encoded: Encoded, out: BinaryIO) -> int:
    """Write every piece to ``out`` in bounded slices; return the bytes written."""
    _each_slice(encoded, out.write)
    return encoded.size


def write_chunks(encoded: Encoded, chunk_bytes: int, emit: Callable[[Any], Any],
                 parts: bool = False) -> None:
    """Re-cut the pieces into chunks of exactly ``chunk_bytes`` (the last may be shorter), each
    handed to ``emit`` once whole (``streams.ChunkWriter``; ``parts``: as a list of views)."""
    if chunk_bytes <= 0:
        raise UsageError("chunk size must be positive")
    writer = streams.ChunkWriter(chunk_bytes, emit, parts)
    for piece in encoded.pieces:
        if isinstance(piece, streams.Spilled):
            piece.write_into(lambda b: writer.write(b, stable=False))
        else:
            writer.write(piece)
    writer.close()


def iter_chunks(encoded: Encoded, chunk_bytes: int) -> Iterator[Piece]:
    """``write_chunks`` as a list of chunks (for small values and tests)."""
    chunks: list[Piece] = []
    write_chunks(encoded, chunk_bytes, chunks.append)
    return iter(chunks)
