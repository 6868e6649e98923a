"""How a result is laid out in bytes: ajug's own format, plus reading jug-written results.

ajug format, version 1 (all integers little-endian)::

    header   48 bytes  HEADER below; ``header_crc`` covers the 44 bytes before it
    meta     meta_len  msgpack map (see ``base.META_FIELDS``); checked by ``meta_crc``
    table    16*nbuf   per out-of-band buffer: stored length, raw length (u64 each); ``table_crc``
    pickle   pickle_len  pickle protocol 5 stream (zlib'd if FLAG_ZLIB)
    buffers  ...       each out-of-band buffer as stored (zlib'd if FLAG_ZLIB)

``payload_crc`` (CRC-32, zlib's) covers pickle and buffers as stored, computed piece by piece.
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

import struct
import zlib
from collections.abc import Callable
from typing import Protocol

#: The checksum of every part of a result: zlib's CRC-32 (``crc32(data, running)``), computed
#: by ISA-L when ``isal`` is installed (the ``fast`` extra; about 10 times faster on large
#: buffers). Same values either way: the format does not depend on it, and results written
#: with one are read with the other.
crc32: Callable[..., int]
try:
    from isal.isal_zlib import crc32
    CRC32_IMPL = "isal"
except ImportError:  # pragma: no cover - isal is optional
    crc32 = zlib.crc32
    CRC32_IMPL = "zlib"

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
