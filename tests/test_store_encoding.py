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
from ajug.stores import encoding

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: object, compress: bool) -> None:
    enc = encoding.encode(value, {"func": "m.f", "rt": 0.5}, compress=compress)
    blob = encoding.encode_bytes(value, {"func": "m.f"}, compress=compress)
    assert len(b"".join(enc.pieces)) == enc.size == enc.meta["size"]
    assert same(encoding.decode(blob), value)
    for chunk in (1, 7, 64, 1 << 20):
        assert same(encoding.decode(list(encoding.iter_chunks(enc, chunk))), value)
    out, meta = encoding.decode_from(io.BytesIO(blob), len(blob))
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
    meta = encoding.read_metadata(src)
    assert meta["func"] == "m.f"
    assert Counting.read_bytes < 200  # header + metadata, not the 8 MiB payload


def test_large_array_is_not_copied_on_encode_and_writable_on_decode() -> None:
    arr = np.arange(1 << 18, dtype=np.float64)
    enc = encoding.encode(arr)
    views = [p for p in enc.pieces if isinstance(p, memoryview)]
    assert len(views) == 1
    assert np.shares_memory(np.frombuffer(views[0], dtype=np.float64), arr)
    out = encoding.decode(b"".join(enc.pieces))
    assert out.flags.writeable
    out[0] = -1.0  # a loaded result can be modified like one np.load() returned


def test_cloudpickle_only_when_needed() -> None:
    def flag(value: object) -> int:
        return encoding.HEADER.unpack_from(encoding.encode_bytes(value))[2]

    assert not flag({"plain": [1, 2]}) & encoding.FLAG_CLOUDPICKLE
    square = encoding.decode(encoding.encode_bytes(lambda x: x * x))
    assert square(4) == 16
    assert flag(lambda: 0) & encoding.FLAG_CLOUDPICKLE
    # A class of the jugfile run as __main__: plain pickle would store a reference that a
    # worker cannot resolve, so it goes by value.
    Point = type("Point", (), {"__module__": "__main__", "norm": lambda self: self.x + self.y})
    p = Point()
    p.x, p.y = 1, 2
    assert flag(p) & encoding.FLAG_CLOUDPICKLE
    assert encoding.decode(encoding.encode_bytes(p)).norm() == 3


def test_every_flipped_byte_and_truncation_is_detected() -> None:
    blob = encoding.encode_bytes({"k": np.arange(10)}, {"func": "m.f"})
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(ResultDamaged):
            encoding.decode(bytes(bad))
    for n in range(len(blob)):
        with pytest.raises(ResultDamaged):
            encoding.decode(blob[:n])
    with pytest.raises(ResultDamaged):
        encoding.decode(blob + b"\x00")


def test_damaged_compressed_payload_is_detected() -> None:
    blob = bytearray(encoding.encode_bytes(np.zeros(10000), compress=True))
    blob[-5] ^= 0xFF
    with pytest.raises(ResultDamaged):
        encoding.decode(bytes(blob))


def test_lying_lengths_do_not_allocate() -> None:
    """A header claiming a huge buffer is refused from the container size, not by MemoryError."""
    blob = encoding.encode_bytes(np.zeros(4))
    with pytest.raises(ResultDamaged):
        encoding.decode_from(io.BytesIO(blob), len(blob) - 1)


def test_bad_metadata_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        encoding.encode(1, {"f": object()})


def test_unknown_version_is_damage() -> None:
    blob = bytearray(encoding.encode_bytes(1))
    blob[4] = 99
    with pytest.raises(ResultDamaged):
        encoding.decode(bytes(blob))


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
    assert encoding.decode(chunks) == value


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
    assert same(encoding.decode_jug(io.BytesIO(data), len(data)), value)


def test_decode_jug_damage() -> None:
    data = jug_bytes({"a": list(range(100))}, native_numpy=False)
    with pytest.raises(ResultDamaged):
        encoding.decode_jug(io.BytesIO(data[:-3]), len(data) - 3)
    npy = jug_bytes(np.arange(100), native_numpy=True)
    with pytest.raises(ResultDamaged):
        encoding.decode_jug(io.BytesIO(npy[:-8]), len(npy) - 8)
    weird = zlib.compress(b"Xjunk")
    with pytest.raises(ResultDamaged):
        encoding.decode_jug(io.BytesIO(weird), len(weird))
