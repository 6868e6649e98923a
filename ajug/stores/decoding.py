"""Reading a result: ajug's format (format.py), checked before anything is unpickled, and
jug 2.7's file-store results (read only)."""

from __future__ import annotations

import bisect
import io
import logging
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

from ..errors import ResultDamaged, UsageError
from . import streams
from .format import (
    FLAG_ZLIB,
    FORMAT_VERSION,
    HEADER,
    HEADER_BYTES,
    IO_SLICE_BYTES,
    JUG_NPY_MAGIC,
    MAGIC,
    TABLE_ENTRY,
    Piece,
    Readable,
    crc32,
)

log = logging.getLogger("ajug.stores.encoding")


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
    if crc32(memoryview(head)[: HEADER_BYTES - 4]) != header_crc:
        raise ResultDamaged("result header checksum mismatch")
    if version != FORMAT_VERSION:
        raise ResultDamaged(f"result format version {version} is not supported (this ajug reads 1)")
    return _Header(flags, *rest)


def _read_meta(src: Readable, h: _Header) -> dict[str, Any]:
    raw = _read(src, h.meta_len, "metadata")
    if crc32(raw) != h.meta_crc:
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
    if crc32(table) != h.table_crc:
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
            crc = crc32(part, crc)
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
    crc = crc32(data)
    stored_bufs = []
    for i, (stored_len, _) in enumerate(lengths):
        buf = _read(src, stored_len, f"buffer {i}")
        crc = crc32(buf, crc)
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
        return _np_read(io.BytesIO(body))
    raise ResultDamaged(f"jug result has an unknown prefix {bytes(kind)!r}")
