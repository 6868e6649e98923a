"""The result encoding: round trips, zero-copy buffers, damage detection, jug's format."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import VALUES, same

from ajug.errors import ResultDamaged, UsageError
from ajug.stores import decoding, encoding

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: object, compress: bool) -> None:
    enc = encoding.encode(value, {"func": "m.f", "rt": 0.5}, compress=compress)
    blob = encoding.encode_bytes(value, {"func": "m.f"}, compress=compress)
    assert len(b"".join(enc.pieces)) == enc.size == enc.meta["size"]
    assert same(decoding.decode(blob), value)
    for chunk in (1, 7, 64, 1 << 20):
        assert same(decoding.decode(list(encoding.iter_chunks(enc, chunk))), value)
    out, meta = decoding.decode_from(io.BytesIO(blob), len(blob))
    assert same(out, value)
    assert meta["func"] == "m.f"


def test_metadata_is_completed_and_read_alone() -> None:
    big = np.ones(1 << 20)
    enc = encoding.encode(big, {"func": "m.f", "src": "abc", "rt": 1.25, "worker": "h:1"})
    assert enc.meta["size"] == enc.size
    assert enc.meta["ts"] > 0

    class Counting(io.BytesIO):
        read_bytes = 0

        def readinto(self, b):  # type: ignore[no-untyped-def]
            n = super().readinto(b)
            Counting.read_bytes += n
            return n

    src = Counting(encoding.encode_bytes(big, {"func": "m.f"}))
    meta = decoding.read_metadata(src)
    assert meta["func"] == "m.f"
    assert Counting.read_bytes < 200  # header + metadata, not the 8 MiB payload


def test_large_array_is_not_copied_on_encode_and_writable_on_decode() -> None:
    arr = np.arange(1 << 18, dtype=np.float64)
    enc = encoding.encode(arr)
    views = [p for p in enc.pieces if isinstance(p, memoryview)]
    assert len(views) == 1
    assert np.shares_memory(np.frombuffer(views[0], dtype=np.float64), arr)
    out = decoding.decode(b"".join(enc.pieces))
    assert out.flags.writeable
    out[0] = -1.0  # a loaded result can be modified like one np.load() returned


def test_cloudpickle_only_when_needed() -> None:
    def flag(value: object) -> int:
        return encoding.HEADER.unpack_from(encoding.encode_bytes(value))[2]

    assert not flag({"plain": [1, 2]}) & encoding.FLAG_CLOUDPICKLE
    square = decoding.decode(encoding.encode_bytes(lambda x: x * x))
    assert square(4) == 16
    assert flag(lambda: 0) & encoding.FLAG_CLOUDPICKLE
    # A class of the jugfile run as __main__: plain pickle would store a reference that a
    # worker cannot resolve, so it goes by value.
    Point = type("Point", (), {"__module__": "__main__", "norm": lambda self: self.x + self.y})
    p = Point()
    p.x, p.y = 1, 2
    assert flag(p) & encoding.FLAG_CLOUDPICKLE
    assert decoding.decode(encoding.encode_bytes(p)).norm() == 3


def test_every_flipped_byte_and_truncation_is_detected() -> None:
    blob = encoding.encode_bytes({"k": np.arange(10)}, {"func": "m.f"})
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(ResultDamaged):
            decoding.decode(bytes(bad))
    for n in range(len(blob)):
        with pytest.raises(ResultDamaged):
            decoding.decode(blob[:n])
    with pytest.raises(ResultDamaged):
        decoding.decode(blob + b"\x00")


def test_damaged_compressed_payload_is_detected() -> None:
    blob = bytearray(encoding.encode_bytes(np.zeros(10000), compress=True))
    blob[-5] ^= 0xFF
    with pytest.raises(ResultDamaged):
        decoding.decode(bytes(blob))


def test_lying_lengths_do_not_allocate() -> None:
    """A header claiming a huge buffer is refused from the container size, not by MemoryError."""
    blob = encoding.encode_bytes(np.zeros(4))
    with pytest.raises(ResultDamaged):
        decoding.decode_from(io.BytesIO(blob), len(blob) - 1)


def test_bad_metadata_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        encoding.encode(1, {"f": object()})


def test_unknown_version_is_damage() -> None:
    blob = bytearray(encoding.encode_bytes(1))
    blob[4] = 99
    with pytest.raises(ResultDamaged):
        decoding.decode(bytes(blob))


@settings(max_examples=60, deadline=None)
@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary(),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=20,
    ),
    chunk=st.integers(min_value=1, max_value=300),
    compress=st.booleans(),
)
def test_round_trip_property(value: object, chunk: int, compress: bool) -> None:
    enc = encoding.encode(value, compress=compress)
    chunks = list(encoding.iter_chunks(enc, chunk))
    assert all(len(c) == chunk for c in chunks[:-1])
    assert decoding.decode(chunks) == value


# ------------------------------------------------------------------------------ jug's format


def jug_bytes(value: object, native_numpy: bool) -> bytes:
    from jug.backends.encode import encode_to

    out = io.BytesIO()
    if native_numpy and isinstance(value, np.ndarray):
        np.lib.format.write_array(out, value)
    else:
        encode_to(value, out)
    return out.getvalue()


@pytest.mark.parametrize(
    "value",
    [None, 7, {"a": [1, 2]}, np.arange(6.0).reshape(2, 3)],
    ids=["none", "int", "dict", "array"],
)
@pytest.mark.parametrize("native_numpy", [True, False], ids=["npy", "zlib"])
def test_decode_jug(value: object, native_numpy: bool) -> None:
    data = jug_bytes(value, native_numpy)
    assert same(decoding.decode_jug(io.BytesIO(data), len(data)), value)


def test_decode_jug_damage() -> None:
    data = jug_bytes({"a": list(range(100))}, native_numpy=False)
    with pytest.raises(ResultDamaged):
        decoding.decode_jug(io.BytesIO(data[:-3]), len(data) - 3)
    npy = jug_bytes(np.arange(100), native_numpy=True)
    with pytest.raises(ResultDamaged):
        decoding.decode_jug(io.BytesIO(npy[:-8]), len(npy) - 8)
    weird = zlib.compress(b"Xjunk")
    with pytest.raises(ResultDamaged):
        decoding.decode_jug(io.BytesIO(weird), len(weird))


# ------------------------------------------------ long pickle streams (ajug/stores/streams.py)


@pytest.fixture
def small_spill(monkeypatch: pytest.MonkeyPatch) -> int:
    """Streams over 4 KiB count as long, so small values take the bounded-memory path."""
    from ajug.stores import streams

    monkeypatch.setattr(streams, "SPILL_BYTES", 4096)
    monkeypatch.setattr(streams, "SLICE_BYTES", 1000)
    return 4096


def _main_function(x: int) -> int:
    return x + 1


_main_function.__module__ = "__main__"  # as if defined in a script: cloudpickle, by value


LONG_VALUES = [
    bytes(range(256)) * 100,
    list(range(5000)),
    {"a": b"x" * 10000, "arr": np.arange(3000), "s": "é" * 3000},
    [_main_function, b"y" * 10000],
]


@pytest.mark.parametrize("value", LONG_VALUES, ids=["bytes", "list", "mixed", "main"])
def test_long_stream_round_trip_through_every_store(store: object, small_spill: int,
                                                    value: object) -> None:
    p = encoding.pickle_value(value)
    assert p.spilled is not None and p.data == b""  # not held: measured, then produced again
    key = "e" * 40
    store.save_many([(key, encoding.encode_pickled(p, {"func": "m.f"}), None)])  # type: ignore[attr-defined]
    got = store.load(key)  # type: ignore[attr-defined]
    if isinstance(value, list) and callable(value[0]):
        assert got[0](1) == 2 and got[1] == value[1]
    else:
        assert same(got, value)
    assert store.verify([key]) == [None]  # type: ignore[attr-defined]


def test_long_stream_that_changes_between_passes_is_refused(small_spill: int) -> None:
    from ajug.stores.streams import UnstablePickle

    value = [b"z" * 10000]
    p = encoding.pickle_value(value)
    value.append(1)  # changed after it was measured: the second pass differs
    enc = encoding.encode_pickled(p)
    with pytest.raises(UnstablePickle, match="pickles differently"):
        encoding.write_to(enc, io.BytesIO())


def test_long_stream_damaged_reads_as_damaged(small_spill: int) -> None:
    blob = bytearray(encoding.encode_bytes(bytes(range(256)) * 100))
    for i in (len(blob) // 2, len(blob) - 3):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(ResultDamaged):
            decoding.decode_from(io.BytesIO(bytes(bad)), len(bad))
    assert decoding.decode_from(io.BytesIO(bytes(blob)), len(blob))[0] == bytes(range(256)) * 100


def test_chunks_are_exact_whatever_the_pieces() -> None:
    from ajug.stores.streams import ChunkWriter

    out: list[bytes] = []
    w = ChunkWriter(10, lambda c: out.append(bytes(c)))
    for piece in (b"a" * 3, b"b" * 25, b"", b"c" * 7):
        w.write(piece)
    w.close()
    assert b"".join(out) == b"a" * 3 + b"b" * 25 + b"c" * 7
    assert [len(c) for c in out] == [10, 10, 10, 5]


def test_checksums_are_zlibs_whichever_computes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """With isal installed the checksums come from ISA-L: the same values as zlib's, so a
    result written with one reads with the other (the format does not depend on it)."""
    from ajug.stores import format as fmt
    from ajug.stores import streams

    data = np.random.default_rng(5).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    for n in (0, 1, 7, 4096, 1 << 20, len(data)):
        assert fmt.crc32(data[:n]) == zlib.crc32(data[:n])
        assert fmt.crc32(memoryview(data)[n:], 12345) == zlib.crc32(memoryview(data)[n:], 12345)
    value = {"a": np.frombuffer(data, dtype=np.uint64), "b": "text"}
    fast = encoding.encode_bytes(value, {"func": "m.f", "ts": 1.0})
    for mod in (encoding, decoding, streams):
        monkeypatch.setattr(mod, "crc32", zlib.crc32)
    plain = encoding.encode_bytes(value, {"func": "m.f", "ts": 1.0})
    assert plain == fast  # byte for byte
    assert same(decoding.decode(fast), value)  # read with zlib's
    monkeypatch.undo()
    assert same(decoding.decode(plain), value)  # and with whatever this install has
    bad = bytearray(plain)
    bad[-1] ^= 1
    with pytest.raises(ResultDamaged, match="checksum"):
        decoding.decode(bytes(bad))
