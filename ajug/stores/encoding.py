"""How a result is laid out in bytes: ajug's own format, plus reading jug-written results.

ajug format, version 1 (all integers little-endian)::

    header   48 bytes  HEADER below; ``header_crc`` covers the 44 bytes before it
    meta     meta_len  msgpack map (see ``base.META_FIELDS``); checked by ``meta_crc``
    table    16*nbuf   per out-of-band buffer: stored length, raw length (u64 each); ``table_crc``
    pickle   pickle_len  pickle protocol 5 stream (zlib'd if FLAG_ZLIB)
    buffers  ...       each out-of-band buffer as stored (zlib'd if FLAG_ZLIB)

``payload_crc`` (zlib.crc32) covers pickle and buffers as stored, computed piece by piece.
Every length is checked against the container's size before anything large is allocated, and
every crc before a byte is unpickled, so damage raises ``ResultDamaged`` and never yields a
wrong value. A large numpy array goes out as its own memory (``PickleBuffer.raw()``) and comes
back read straight into a preallocated ``bytearray`` that the array then uses: one copy of the
data in memory on either side, writable on load.

jug 2.7 file-store results (read only): a raw ``.npy`` file; an empty file (``None``); or a
zlib stream whose first byte is ``P`` (a pickle follows) or ``N`` (``np.save`` output follows).
Of those, only the zlib form carries a checksum (adler32): a flipped byte inside a raw ``.npy``
is not detectable, and an empty file is jug's ``None`` even if a crash truncated it.
"""

from __future__ import annotations

import bisect
import io
import logging
import pickle
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import msgpack

from ..errors import ResultDamaged, UsageError
from . import streams

log = logging.getLogger(__name__)

MAGIC = b"AJUG"
FORMAT_VERSION = 1
FLAG_ZLIB = 0x01  # pickle stream and buffers are zlib-compressed
FLAG_CLOUDPICKLE = 0x02  # written by cloudpickle (informational: pickle.loads reads both)
#: magic, version, flags, reserved, meta_len, nbuf, pickle_len, pickle_raw_len,
#: table_crc, payload_crc, meta_crc, header_crc
HEADER = struct.Struct("<4sBBHIIQQIIII")
HEADER_BYTES = HEADER.size
TABLE_ENTRY = struct.Struct("<QQ")
#: Writes and compression go in slices of this size: bounded syscalls and temporaries.
IO_SLICE_BYTES = 16 << 20
#: A metadata map larger than this is refused (it is read whole by ``metadata()``).
MAX_META_BYTES = 1 << 20
JUG_NPY_MAGIC = b"\x93NUMPY"
#: A pickle stream that names one of these modules is redone with cloudpickle, which pickles
#: their functions and classes by value: a worker does not have the coordinator's ``__main__``.
BY_VALUE_MODULES = (b"__main__",)

Piece = bytes | memoryview


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


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
        crc = zlib.crc32(data)
    for piece in stored:
        crc = zlib.crc32(piece, crc)
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
        zlib.crc32(table), crc, zlib.crc32(meta_bytes),
    )  # fmt: skip
    head = HEADER.pack(*fields, 0)
    head = HEADER.pack(*fields, zlib.crc32(head[:-4]))
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


def write_chunks(encoded: Encoded, chunk_bytes: int, emit: Callable[[Piece], Any]) -> None:
    """Re-cut the pieces into chunks of exactly ``chunk_bytes`` (the last may be shorter), each
    handed to ``emit`` once whole (``streams.ChunkWriter``)."""
    if chunk_bytes <= 0:
        raise UsageError("chunk size must be positive")
    writer = streams.ChunkWriter(chunk_bytes, emit)
    for piece in encoded.pieces:
        if isinstance(piece, streams.Spilled):
            piece.write_into(writer.write)
        else:
            writer.write(piece)
    writer.close()


def iter_chunks(encoded: Encoded, chunk_bytes: int) -> Iterator[Piece]:
    """``write_chunks`` as a list of chunks (for small values and tests)."""
    chunks: list[Piece] = []
    write_chunks(encoded, chunk_bytes, chunks.append)
    return iter(chunks)


# ---------------------------------------------------------------------------------- decoding


class ChunkReader:
    """A read-only stream over chunks fetched one at a time (redis), holding one in memory.
    It can go back (``seek``) to where it has been: a chunk is fetched again."""

    def __init__(self, count: int, fetch: Callable[[int], bytes]) -> None:
        self._count = count
        self._fetch = fetch
        self._next = 0
        self._chunk = memoryview(b"")
        self._pos = 0
        self._starts: list[int] = []  # where each chunk fetched so far starts in the stream

    def tell(self) -> int:
        return (self._starts[self._next - 1] if self._next else 0) + self._pos

    def seek(self, pos: int) -> None:
        """Back to a position already read past (or forward within the current chunk)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i < 0:
            self._next, self._chunk, self._pos = 0, memoryview(b""), 0
            return
        if i != self._next - 1:
            self._chunk = memoryview(self._fetch(i)).cast("B")
            self._next = i + 1
        self._pos = pos - self._starts[i]

    @classmethod
    def of(cls, chunks: Sequence[Piece]) -> ChunkReader:
        return cls(len(chunks), lambda i: chunks[i])  # type: ignore[arg-type,return-value]

    def readinto(self, buffer: memoryview) -> int:
        target = memoryview(buffer).cast("B")
        done = 0
        while done < len(target):
            if self._pos == len(self._chunk):
                if self._next == self._count:
                    break
                if self._next == len(self._starts):
                    self._starts.append(self.tell())
                self._chunk = memoryview(self._fetch(self._next)).cast("B")
                self._next += 1
                self._pos = 0
                continue
            n = min(len(target) - done, len(self._chunk) - self._pos)
            target[done : done + n] = self._chunk[self._pos : self._pos + n]
            done += n
            self._pos += n
        return done

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        return bytes(buf[:got])


def _fill(src: Readable, buf: bytearray | memoryview, what: str) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        n = src.readinto(view[done:])
        if not n:
            raise ResultDamaged(f"result truncated in its {what} ({done} of {len(view)} bytes)")
        done += n


def _read(src: Readable, n: int, what: str) -> bytearray:
    buf = bytearray(n)
    _fill(src, buf, what)
    return buf


@dataclass
class _Header:
    flags: int
    meta_len: int
    nbuf: int
    pickle_len: int
    pickle_raw_len: int
    table_crc: int
    payload_crc: int
    meta_crc: int


def _parse_header(head: bytes | bytearray) -> _Header:
    if len(head) < HEADER_BYTES:
        raise ResultDamaged(f"result truncated in its header ({len(head)} bytes)")
    magic, version, flags, _, *rest, header_crc = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ResultDamaged("not an ajug result (bad magic)")
    if zlib.crc32(memoryview(head)[: HEADER_BYTES - 4]) != header_crc:
        raise ResultDamaged("result header checksum mismatch")
    if version != FORMAT_VERSION:
        raise ResultDamaged(f"result format version {version} is not supported (this ajug reads 1)")
    return _Header(flags, *rest)


def _read_meta(src: Readable, h: _Header) -> dict[str, Any]:
    raw = _read(src, h.meta_len, "metadata")
    if zlib.crc32(raw) != h.meta_crc:
        raise ResultDamaged("result metadata checksum mismatch")
    try:
        meta = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ResultDamaged(f"result metadata unreadable: {e}") from e
    if not isinstance(meta, dict):
        raise ResultDamaged("result metadata is not a map")
    return meta


def _decompress_into(data: bytes | bytearray, raw_len: int, what: str) -> bytearray:
    out = bytearray(raw_len)
    view = memoryview(out)
    dec = zlib.decompressobj()
    pos = 0
    src = memoryview(data)
    try:
        for i in range(0, len(src), IO_SLICE_BYTES):
            part = dec.decompress(src[i : i + IO_SLICE_BYTES])
            if pos + len(part) > raw_len:
                raise ResultDamaged(f"result {what} decompresses beyond its stated length")
            view[pos : pos + len(part)] = part
            pos += len(part)
        tail = dec.flush()
    except zlib.error as e:
        raise ResultDamaged(f"result {what} does not decompress: {e}") from e
    if tail or pos != raw_len or not dec.eof:
        raise ResultDamaged(f"result {what} decompresses to the wrong length")
    return out


def read_metadata(src: Readable) -> dict[str, Any]:
    """Read the header and metadata only: a few hundred bytes whatever the result's size."""
    h = _parse_header(_read(src, HEADER_BYTES, "header"))
    return _read_meta(src, h)


def _table(h: _Header, table: bytes | bytearray) -> list[tuple[int, int]]:
    if len(table) != h.nbuf * TABLE_ENTRY.size:
        raise ResultDamaged("result truncated in its buffer table")
    if zlib.crc32(table) != h.table_crc:
        raise ResultDamaged("result buffer table checksum mismatch")
    lengths = [TABLE_ENTRY.unpack_from(table, i * TABLE_ENTRY.size) for i in range(h.nbuf)]
    if not h.flags & FLAG_ZLIB and (
        h.pickle_len != h.pickle_raw_len or any(s != r for s, r in lengths)
    ):
        raise ResultDamaged("result lengths inconsistent")
    return lengths


def _length(h: _Header, lengths: list[tuple[int, int]]) -> int:
    return (HEADER_BYTES + h.meta_len + h.nbuf * TABLE_ENTRY.size + h.pickle_len
            + sum(stored for stored, _ in lengths))


#: Bytes ``stated_length`` reads first: the header, the metadata and the buffer table of
#: almost every result (a second read fetches a table that does not fit).
HEAD_PEEK_BYTES = 4096


def stated_length(read: Callable[[int, int], bytes]) -> int:
    """The total length that an ajug result's header and buffer table state, their checksums
    checked: with the container's size, a cheap test for a result cut short (two small reads
    at most, whatever the size). ``read(offset, n)`` returns up to ``n`` bytes from there.
    Raises ``ResultDamaged``."""
    head = read(0, HEAD_PEEK_BYTES)
    h = _parse_header(head[:HEADER_BYTES])
    at, n = HEADER_BYTES + h.meta_len, h.nbuf * TABLE_ENTRY.size
    table = head[at : at + n] if len(head) >= at + n else read(at, n)
    return _length(h, _table(h, table))


def _layout(src: Readable, total: int | None) -> tuple[_Header, dict[str, Any], list[tuple[int, int]]]:
    """Read and check header, metadata and buffer table; ``src`` is then at the pickle stream."""
    h = _parse_header(_read(src, HEADER_BYTES, "header"))
    if total is not None and HEADER_BYTES + h.meta_len > total:
        raise ResultDamaged("result truncated in its metadata")
    meta = _read_meta(src, h)
    table_len = h.nbuf * TABLE_ENTRY.size
    if total is not None and HEADER_BYTES + h.meta_len + table_len > total:
        raise ResultDamaged("result truncated in its buffer table")
    lengths = _table(h, _read(src, table_len, "buffer table"))
    expected = _length(h, lengths)
    if total is not None and expected != total:
        raise ResultDamaged(f"result is {total} bytes but its header says {expected}")
    return h, meta, lengths


def verify_from(src: Readable, total: int | None = None) -> dict[str, Any]:
    """Check one ajug result whole (every checksum) without unpickling it, in bounded memory
    (slices of ``IO_SLICE_BYTES``); return its metadata. Raises ``ResultDamaged``."""
    h, meta, lengths = _layout(src, total)
    crc = 0
    buf = bytearray(min(IO_SLICE_BYTES, max(h.pickle_len, *(s for s, _ in lengths), 1)))
    view = memoryview(buf)
    for n, what in [(h.pickle_len, "pickle stream")] + [
        (stored, f"buffer {i}") for i, (stored, _) in enumerate(lengths)
    ]:
        while n:
            part = view[: min(n, len(view))]
            _fill(src, part, what)
            crc = zlib.crc32(part, crc)
            n -= len(part)
    if total is None and src.readinto(memoryview(bytearray(1))):
        raise ResultDamaged("result has trailing bytes")
    if crc != h.payload_crc:
        raise ResultDamaged("result payload checksum mismatch")
    return meta


def decode_from(src: Readable, total: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Decode one ajug result from a stream; return ``(value, meta)``.

    ``total`` is the container's size (file size, manifest length): when given, lengths that
    disagree with it are refused before any large allocation.
    """
    h, meta, lengths = _layout(src, total)
    compressed = bool(h.flags & FLAG_ZLIB)
    if h.pickle_len > streams.SPILL_BYTES and not compressed and hasattr(src, "seek"):
        # a long stream is read twice rather than held whole (``streams``)
        value = streams.decode_two_pass(src, h.pickle_len, [n for n, _ in lengths],
                                        h.payload_crc, src.tell())  # type: ignore[attr-defined]
        return value, meta

    data = _read(src, h.pickle_len, "pickle stream")
    crc = zlib.crc32(data)
    stored_bufs = []
    for i, (stored_len, _) in enumerate(lengths):
        buf = _read(src, stored_len, f"buffer {i}")
        crc = zlib.crc32(buf, crc)
        stored_bufs.append(buf)
    if total is None and src.readinto(memoryview(bytearray(1))):
        raise ResultDamaged("result has trailing bytes")
    if crc != h.payload_crc:
        raise ResultDamaged("result payload checksum mismatch")
    if compressed:
        data = _decompress_into(data, h.pickle_raw_len, "pickle stream")
        for i, (_, raw_len) in enumerate(lengths):
            stored_bufs[i] = _decompress_into(stored_bufs[i], raw_len, f"buffer {i}")
    return pickle.loads(data, buffers=stored_bufs), meta


def decode(data: Piece | Sequence[Piece]) -> Any:
    """Decode a result held in memory: one bytes-like object or a list of chunks."""
    chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
    total = sum(memoryview(c).nbytes for c in chunks)
    return decode_from(ChunkReader.of(chunks), total)[0]


def metadata_of(data: Piece) -> dict[str, Any]:
    """The metadata of a result held in memory (or its first chunk)."""
    return read_metadata(ChunkReader.of([data]))


def is_ajug(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


# ------------------------------------------------------------------------------ jug's format


def _np_read(stream: BinaryIO) -> Any:
    import numpy as np

    try:
        return np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise ResultDamaged(f"jug .npy result unreadable: {e}") from e


#: How each of jug 2.7's file formats starts: ``.npy``, zlib (any compression level), parquet.
JUG_PREFIXES = (JUG_NPY_MAGIC, b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"PAR1")


def looks_like_jug(prefix: bytes) -> bool:
    """Whether a file that is not ajug's starts as one of jug's formats (a cheap look: random
    bytes usually do not)."""
    return prefix.startswith(JUG_PREFIXES)


def decode_jug(stream: BinaryIO, size: int) -> Any:
    """Decode a result that jug 2.7's file store wrote; ``stream`` is at the file's start.

    A raw ``.npy`` is read directly into its array (``np.fromfile`` for a real file). The
    zlib form is read and decompressed whole, which verifies its adler32 checksum.
    """
    if size == 0:
        return None
    prefix = stream.read(len(JUG_NPY_MAGIC))
    stream.seek(0)
    if prefix == JUG_NPY_MAGIC:
        return _np_read(stream)
    if prefix[:4] == b"PAR1":
        try:
            import polars as pl
        except ImportError as e:
            raise UsageError("this jug result is a polars DataFrame: install polars") from e
        return pl.read_parquet(stream)
    raw = stream.read()
    try:
        data = zlib.decompress(raw)
    except zlib.error as e:
        raise ResultDamaged(f"jug result does not decompress: {e}") from e
    del raw
    if not data:
        return None
    kind, body = data[:1], memoryview(data)[1:]
    if kind == b"P":
        try:
            return pickle.loads(body)
        except (pickle.UnpicklingError, EOFError) as e:
            raise ResultDamaged(f"jug result unpickling failed: {e}") from e
    if kind == b"N":
        return _np_read(io.BytesIO(body))  # type: ignore[arg-type]
    raise ResultDamaged(f"jug result has an unknown prefix {bytes(kind)!r}")
