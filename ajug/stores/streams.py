"""Large results in bounded memory: a big pickle stream is never held whole, on either side.

numpy arrays already travel as out-of-band buffers (views of their own memory, read back into
their final ``bytearray``); what this module adds is the *in-band* part: a 600 MB ``bytes``, a
list of millions of floats, a pandas object column.

Writing, two passes over the value, one after the other in the same thread (a worker saves a
big result right as its task returns, so nothing changes it in between):

1. ``pickle_bounded`` pickles into a sink that keeps at most ``SPILL_BYTES``. Beyond that it
   keeps nothing, only the length and the checksum: the header needs both before the stream.
2. When the result is written, ``Spilled.write_into`` pickles the value again straight into the
   file or the redis chunks, in slices, and checks that length and checksum are those of pass 1
   (``UnstablePickle`` otherwise: a result whose pickle changes from one pass to the next cannot
   be saved this way, and its task fails with that message).

Reading (``decode_two_pass``), for a pickle stream over ``SPILL_BYTES`` in a container that can
be read twice (a file, redis chunks): pass 1 checks the checksum and reads the out-of-band
buffers, pass 2 unpickles straight from the container, checking the checksum again before the
value is returned. Damage never yields a value, as with the one-pass decoder.

Peak memory is then the value itself plus a slice (16 MiB) or a redis chunk (64 MiB by default).
Compressed stores (``compress``) still hold the compressed stream whole.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ResultDamaged, UnstablePickle
from .format import crc32

#: A pickle stream longer than this is not held in memory whole (it also keeps such a result
#: out of a worker's cache, whose items are at most 64 MiB).
SPILL_BYTES = 64 << 20
#: Writes and reads of a spilled stream go in slices of this size.
SLICE_BYTES = 16 << 20
#: Modules whose names in a pickle stream mean it must be redone with cloudpickle.
BY_VALUE_MODULES = (b"__main__",)
_CONTAINERS = (list, tuple, dict, set, frozenset)


def maybe_large(value: Any) -> bool:
    """A cheap guess (no walk of the value): might its pickle stream exceed ``SPILL_BYTES``?
    ``sys.getsizeof`` counts the data of bytes, str and numpy arrays, the item slots of a big
    container; the items of a small container are looked at too."""
    size = sys.getsizeof(value, 0)
    if size >= SPILL_BYTES // 8:
        return True
    if type(value) in _CONTAINERS and 0 < len(value) <= 64:
        items = value.values() if type(value) is dict else value
        return size + sum(sys.getsizeof(x, 0) for x in items) >= SPILL_BYTES // 8
    return False


class _Sink:
    """Pass 1: keeps the stream until it passes ``limit``, then only its length and crc; notes
    a module that forces cloudpickle."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.length = 0
        self.crc = 0
        self.spilled = False
        self.by_value = False
        self._tail = b""

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        self.crc = crc32(view, self.crc)
        self.length += n
        if not self.by_value:
            head = bytes(view[:64]) if n > 64 else bytes(view)
            window = self._tail + head
            if n <= 4096:
                window = self._tail + bytes(view)
            if any(name in window for name in BY_VALUE_MODULES):
                self.by_value = True
            self._tail = bytes(view[-16:])
        if not self.spilled:
            if self.length > self.limit:
                self.spilled = True
                self.parts = []
            else:
                self.parts.append(bytes(view))
        return n


class _Forward:
    """Pass 2: hands the stream to ``write`` in slices, checking its length and crc."""

    def __init__(self, write: Callable[[Any], Any]) -> None:
        self.out = write
        self.length = 0
        self.crc = 0

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        for i in range(0, len(view), SLICE_BYTES):
            part = view[i : i + SLICE_BYTES]
            self.crc = crc32(part, self.crc)
            self.out(part)
        self.length += len(view)
        return len(view)


def _pickler(file: Any, cloud: bool, buffers: list[pickle.PickleBuffer]) -> pickle.Pickler:
    if cloud:
        import cloudpickle

        return cloudpickle.CloudPickler(file, protocol=5, buffer_callback=buffers.append)
    return pickle.Pickler(file, protocol=5, buffer_callback=buffers.append)


class Spilled:
    """A pickle stream too long to hold: the value it comes from, and what pass 1 measured."""

    def __init__(self, value: Any, cloud: bool, length: int, crc: int, nbuf: int) -> None:
        self.value, self.cloud = value, cloud
        self.length, self.crc, self.nbuf = length, crc, nbuf

    @property
    def nbytes(self) -> int:
        return self.length

    def __len__(self) -> int:
        return self.length

    def write_into(self, write: Callable[[Any], Any]) -> None:
        """Pass 2: the stream again, to ``write`` in slices (see the module docstring)."""
        out = _Forward(write)
        buffers: list[pickle.PickleBuffer] = []
        _pickler(out, self.cloud, buffers).dump(self.value)
        if (out.length, out.crc, len(buffers)) != (self.length, self.crc, self.nbuf):
            raise UnstablePickle(
                "the result pickles differently each time (a __reduce__ that is not "
                "deterministic, or an object changed while it was saved), so it cannot be "
                "saved without holding all of it in memory; make its pickling deterministic"
            )

    def materialize(self) -> bytes:
        """The whole stream in memory (for a compressed store, or one that needs it whole)."""
        parts: list[bytes] = []
        self.write_into(lambda b: parts.append(bytes(b)))
        return b"".join(parts)


def pickle_bounded(value: Any) -> tuple[bytes | Spilled, list[pickle.PickleBuffer], bool]:
    """Pass 1 (see the module docstring): ``(stream or Spilled, out-of-band buffers,
    cloudpickle used)``. Plain pickle unless it fails or names ``__main__``."""
    for cloud in (False, True):
        sink = _Sink(SPILL_BYTES)
        buffers: list[pickle.PickleBuffer] = []
        try:
            _pickler(sink, cloud, buffers).dump(value)
        except (pickle.PicklingError, AttributeError, TypeError):
            if cloud:
                raise
            continue
        if sink.by_value and not cloud:
            continue
        if sink.spilled:
            return Spilled(value, cloud, sink.length, sink.crc, len(buffers)), buffers, cloud
        return b"".join(sink.parts), buffers, cloud
    raise AssertionError("unreachable")  # pragma: no cover


class ChunkWriter:
    """Cuts a stream of pieces into chunks of exactly ``chunk_bytes`` (the last may be shorter)
    and hands each to ``emit`` as soon as it is whole: as one view (``parts=False``; a chunk
    that straddles pieces is joined, one at a time) or as the list of its parts (``parts=True``:
    nothing copied, so a result's array is never copied whole to cross a chunk boundary).

    A piece written with ``stable=False`` (a slice of a stream being produced, reused once the
    call returns) is copied as it comes."""

    def __init__(self, chunk_bytes: int, emit: Callable[[Any], Any], parts: bool = False) -> None:
        self.chunk_bytes = chunk_bytes
        self.emit = emit
        self.parts = parts
        self._parts: list[memoryview] = []
        self._len = 0

    def write(self, piece: Any, stable: bool = True) -> None:
        view = memoryview(piece).cast("B")
        size, pos = self.chunk_bytes, 0
        while pos < len(view):
            take = min(size - self._len, len(view) - pos)
            part = view[pos : pos + take]
            self._parts.append(part if stable else memoryview(bytes(part)))
            self._len += take
            pos += take
            if self._len == size:
                self._emit()

    def _emit(self) -> None:
        parts, self._parts, self._len = self._parts, [], 0
        if self.parts:
            self.emit(parts)
        else:
            self.emit(parts[0] if len(parts) == 1 else memoryview(b"".join(parts)))

    def close(self) -> None:
        if self._parts:
            self._emit()


# ----------------------------------------------------------------------------------- reading


class _Limited(io.RawIOBase):
    """Pass 2 of a read: the pickle stream, ``n`` bytes of ``src``, its crc computed as the
    unpickler reads it."""

    def __init__(self, src: Any, n: int) -> None:
        self.src, self.left, self.crc = src, n, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")[: self.left]
        got = self.src.readinto(view) if len(view) else 0
        if got:
            self.crc = crc32(view[:got], self.crc)
            self.left -= got
        return got


def decode_two_pass(src: Any, pickle_len: int, stored: list[int], crc_expected: int,
                    start: int) -> Any:
    """Decode the pickle stream at ``start`` (``src`` is there) and its out-of-band buffers
    (``stored`` lengths, right after it) with ``pickle_len`` bytes never held whole. ``src``
    must be seekable (``seek``/``readinto``). Raises ``ResultDamaged``."""
    crc = 0
    slice_buf = memoryview(bytearray(min(SLICE_BYTES, max(pickle_len, 1))))
    left = pickle_len
    while left:
        part = slice_buf[: min(left, len(slice_buf))]
        got = _readinto_all(src, part)
        if got < len(part):
            raise ResultDamaged(f"result truncated in its pickle stream ({pickle_len - left + got}"
                                f" of {pickle_len} bytes)")
        crc = crc32(part, crc)
        left -= len(part)
    del slice_buf
    pickle_crc = crc
    buffers = []
    for i, n in enumerate(stored):
        buf = bytearray(n)
        if _readinto_all(src, memoryview(buf)) < n:
            raise ResultDamaged(f"result truncated in its buffer {i}")
        crc = crc32(buf, crc)
        buffers.append(buf)
    if crc != crc_expected:
        raise ResultDamaged("result payload checksum mismatch")
    src.seek(start)
    stream = _Limited(src, pickle_len)
    try:
        value = pickle.Unpickler(io.BufferedReader(stream, SLICE_BYTES), buffers=buffers).load()
    except Exception as e:  # noqa: BLE001 - changed under us: damage, not a value
        raise ResultDamaged(f"result changed while it was read: {e}") from e
    scratch = memoryview(bytearray(1 << 16))
    while stream.readinto(scratch):  # whatever the unpickler left: counted, then compared
        pass
    if stream.crc != pickle_crc:
        raise ResultDamaged("result changed while it was read")
    return value


def _readinto_all(src: Any, view: memoryview) -> int:
    done = 0
    while done < len(view):
        n = src.readinto(view[done:])
        if not n:
            break
        done += n
    return done
