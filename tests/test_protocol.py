"""Framing, message validation and the golden vectors: bytes in, bytes or exceptions out."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ajug.errors import FrameTooLarge, ProtocolError
from ajug.protocol import messages as m
from ajug.protocol.framing import MAX_FRAME_BYTES, FrameDecoder, decode_body, encode_frame
from ajug.protocol.mac import FrameMac

VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("ajug_vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()
DOC = json.loads((VECTORS / "vectors.json").read_text())
INDEX = DOC["vectors"]
#: (name, sender, message) of every checked-in vector.
SAMPLES = [
    (v["name"], "client" if v["direction"] == "C>S" else "server", gen.from_json(v["message"]))
    for v in INDEX
]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# --- framing -------------------------------------------------------------------------------


def test_encode_frame_is_prefix_plus_packb() -> None:
    msg = {"op": "ok", "re": 3}
    data = encode_frame(msg)
    assert data[:4] == struct.pack(">I", len(data) - 4)
    assert data[4:] == msgpack.packb(msg, use_bin_type=True)
    assert FrameDecoder().feed(data) == [msg]


def test_str_and_bin_stay_apart() -> None:
    msg = {"op": "x", "s": "abc", "b": b"abc"}
    (out,) = FrameDecoder().feed(encode_frame(msg))
    assert type(out["s"]) is str and type(out["b"]) is bytes


def test_feed_byte_by_byte() -> None:
    msgs = [{"op": "ok", "re": i, "pad": "x" * i} for i in range(5)]
    stream = b"".join(encode_frame(x) for x in msgs)
    dec, out = FrameDecoder(), []
    for i in range(len(stream)):
        out += dec.feed(stream[i : i + 1])
    assert out == msgs
    assert dec.buffered == 0


def test_many_frames_in_one_feed_and_a_partial_tail() -> None:
    msgs = [{"op": "ok", "re": i} for i in range(10)]
    stream = b"".join(encode_frame(x) for x in msgs)
    dec = FrameDecoder()
    assert dec.feed(stream + stream[:3]) == msgs
    assert dec.buffered == 3
    assert dec.feed(stream[3:]) == msgs
    assert dec.buffered == 0


def test_oversize_prefix_refused_before_the_body() -> None:
    dec = FrameDecoder(max_frame_bytes=100)
    prefix = struct.pack(">I", 101)
    for b in prefix[:3]:
        assert dec.feed(bytes([b])) == []
    with pytest.raises(FrameTooLarge, match="101 bytes"):
        dec.feed(prefix[3:])  # no body byte was sent, and none is awaited
    assert dec.buffered == 0 and dec.failed
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x00" * 10)  # the stream cannot be resynchronised


def test_frame_at_the_limit_is_accepted() -> None:
    msg = {"op": "x", "pad": "y" * 50}
    data = encode_frame(msg)
    assert FrameDecoder(max_frame_bytes=len(data) - 4).feed(data) == [msg]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_bytes=len(data) - 5).feed(data)


def test_default_limit_is_64_mib() -> None:
    assert MAX_FRAME_BYTES == 64 * 1024 * 1024
    assert FrameDecoder().max_frame_bytes == MAX_FRAME_BYTES
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME_BYTES + 1))


def test_encode_refuses_oversize_and_unencodable() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"op": "x", "b": b"x" * 100}, max_frame_bytes=50)
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode_frame({"op": "x", "v": object()})
    with pytest.raises(ProtocolError):
        encode_frame({"op": "x", "v": 2**64})


@pytest.mark.parametrize(
    "body, match",
    [
        (b"\xc1", "not valid msgpack"),  # the never-used byte
        (b"", "not valid msgpack"),
        (b"\x82\xa1a", "not valid msgpack"),  # truncated inside the body
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb("op"), "must be a msgpack map"),
        (msgpack.packb({"op": "ok"}) + b"\xc0", "trailing bytes"),
        (msgpack.packb({b"op": "ok"}, use_bin_type=True), "keys must be str"),
        (msgpack.packb({1: "ok"}), "not valid msgpack"),
        (msgpack.packb({"a": {b"k": 1}}, use_bin_type=True), "keys must be str"),
        (b"\x82\xa1a\x01\xa1a\x02", "twice"),
        (b"\x81\xa1t\xd6\xff\x00\x00\x00\x00", "not valid msgpack"),  # ext (timestamp)
        (b"\x81\xa1a\xdd\xff\xff\xff\xff", "not valid msgpack"),  # claims 4G items in 10 bytes
        (b"\x81\xa1a\xc6\x7f\xff\xff\xff", "not valid msgpack"),  # claims a 2 GiB bin
        (b"\x81\xa1a" + b"\x91" * 2000 + b"\xc0", "not valid msgpack"),  # too deep
    ],
)
def test_bad_bodies_are_protocol_errors(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        FrameDecoder().feed(frame(body))
    assert type(info.value) is ProtocolError


def test_good_frames_before_a_bad_one_are_kept() -> None:
    dec = FrameDecoder()
    good = encode_frame({"op": "ok", "re": 1})
    assert dec.feed(good + frame(b"\xc1") + good) == [{"op": "ok", "re": 1}]
    with pytest.raises(ProtocolError):
        dec.feed(b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=17))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes, chunk: int) -> None:
    dec = FrameDecoder(max_frame_bytes=1000)
    try:
        for i in range(0, len(data), chunk):
            for msg in dec.feed(data[i : i + chunk]):
                assert type(msg) is dict and all(type(k) is str for k in msg)
    except ProtocolError:
        pass


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _plain, max_size=6))
def test_any_plain_map_round_trips_byte_for_byte(msg: dict[str, Any]) -> None:
    data = encode_frame(msg)
    (out,) = FrameDecoder().feed(data)
    assert out == msg
    assert encode_frame(out) == data


# --- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, sender, msg", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_vector_message_validates(name: str, sender: m.Sender, msg: dict[str, Any]) -> None:
    assert m.validate(msg, sender) is msg
    assert m.validate(msg) is msg  # direction inferred


def test_unknown_and_misdirected_ops() -> None:
    with pytest.raises(m.UnknownOp, match="unknown op 'frobnicate'"):
        m.validate({"op": "frobnicate"})
    with pytest.raises(m.UnknownOp):
        m.validate(m.leases(1, state="run"), "client")  # a reply sent by a worker
    with pytest.raises(m.UnknownOp):
        m.validate(m.bye(), "server")
    with pytest.raises(m.BadField, match="field op must be str"):
        m.validate({"op": 3})
    with pytest.raises(m.BadField, match="field op must be str"):
        m.validate({})
    with pytest.raises(ProtocolError, match="must be a map"):
        m.validate([("op", "bye")])


K = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "msg, match",
    [
        (m.lease(1, want=-1), "lease: field want must be uint"),
        (m.lease(1, want=True), "lease: field want must be uint"),
        (m.lease(2**64, want=1), "lease: field id must be uint"),
        (m.lease(1, want=1, wait_ms=1.5), "lease: field wait_ms must be uint"),
        (m.lease(1, want=1, done=[[K.upper(), 1, {}]]), r"field done\[0\]\[0\] must be a key"),
        (m.lease(1, want=1, done=[[K[:-1], 1, {}]]), r"field done\[0\]\[0\] must be a key"),
        (m.lease(1, want=1, done=[[K, 1]]), r"field done\[0\] must be \[key"),
        (m.lease(1, want=1, done=[[K, 1, []]]), r"field done\[0\]\[2\] must be map"),
        (
            m.lease(1, want=1, failed=[[K, 1, {"type": "E", "msg": "", "tb": ""}]]),
            r"field failed\[0\]\[2\]\.kind must be str \(missing\)",
        ),
        (m.renew(1, [[K, -1]]), r"renew: field leases\[0\]\[1\] must be uint"),
        (
            m.hello(role="admin", access="full", nonce=bytes(16), host="h", pid=1, name="n"),
            "hello: field role must be 'worker' or 'client'",
        ),
        (
            m.hello(role="worker", access="full", nonce=bytes(15), host="h", pid=1, name="n"),
            r"hello: field nonce must be bin \(16 bytes\)",
        ),
        (
            m.hello(role="worker", access="full", nonce="x" * 16, host="h", pid=1, name="n"),
            "hello: field nonce must be bin",
        ),
        (
            m.hello(role="worker", access="full", nonce=bytes(16), host="h", pid=2**63, name="n"),
            "hello: field pid must be int",
        ),
        (m.auth(proof=bytes(31)), "auth: field proof must be bin"),
        (m.leases(1, state="done"), "leases: field state must be 'run' or 'idle' or 'finished'"),
        (
            m.leases(1, state="run", leases=[{"key": K, "tok": 1, "fn": 0, "args": "x"}]),
            r"leases: field leases\[0\]\.args must be bin",
        ),
        (
            m.leases(1, state="run", funcs=[{"fn": 0, "name": "f", "src": "s"}]),
            r"leases: field funcs\[0\]\.code must be bin \(missing\)",
        ),
        (
            m.welcome(session="s", access="full", info={"k": {b"x": 1}}),
            "welcome: field info must be map",
        ),
        (m.status(1, detail=1), "status: field detail must be bool"),
        (m.error("7", "op", "x"), "error: field re must be uint or nil"),
        ({"op": "ok"}, r"ok: field re must be uint \(missing\)"),
    ],
)
def test_wrong_fields_are_named(msg: dict[str, Any], match: str) -> None:
    with pytest.raises(m.BadField, match=match):
        m.validate(msg)


def test_free_form_maps_are_limited_in_depth() -> None:
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(m.MAX_DEPTH + 1):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(m.BadField, match="info must be map"):
        m.validate(m.welcome(session="s", access="full", info=deep))
    assert m.validate(m.welcome(session="s", access="full", info=deep["a"]["a"]))


def test_unknown_fields_are_ignored() -> None:
    msg = {**m.ok(1), "future": [1, 2]}
    assert m.validate(msg) is msg


@pytest.mark.parametrize("name, sender, msg", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_missing_field_is_rejected(name: str, sender: m.Sender, msg: dict[str, Any]) -> None:
    optional = m.SCHEMAS[sender][msg["op"]].optional
    for field in msg:
        if field == "op":
            continue
        broken = {k: v for k, v in msg.items() if k != field}
        if field in optional:  # a later addition to v1: may be absent
            assert m.validate(broken, sender) is broken
            continue
        with pytest.raises(m.BadField, match=f"field {field} must be .* \\(missing\\)"):
            m.validate(broken, sender)


def test_optional_fields_are_checked_when_present() -> None:
    with pytest.raises(m.BadField, match="field follow must be bool"):
        m.validate({**m.lease(1, want=1), "follow": 1}, "client")
    item = {**m.lease_item("a" * 40, 1, 0, b""), "after": ["not a key"]}
    with pytest.raises(m.BadField, match=r"leases\[0\]\.after\[0\] must be a key"):
        m.validate(m.leases(1, state="run", leases=[item]), "server")


_ITEM_PARTS = st.sampled_from([None, True, -1, 0, 2**64, 1.5, "k", "a" * 40, "A" * 40, b"x", [], {},
                                ["b" * 40], {"rt": 1.0}, {"x": {"y": [1]}}, ("c" * 40, 1, {})])


@given(parts=st.lists(_ITEM_PARTS, min_size=0, max_size=4), as_tuple=st.booleans())
def test_quick_item_checks_never_accept_what_the_general_one_refuses(
    parts: list[Any], as_tuple: bool
) -> None:
    done = tuple(parts) if as_tuple else list(parts)
    if m.DONE_ITEM.ok(done):
        assert m.DONE_ITEM.general.ok(done)
    names = ["key", "tok", "fn", "args", "after"]
    item = dict(zip(names, parts))
    for base in ({}, {"key": "d" * 40, "tok": 1, "fn": 0, "args": b""}):
        cand = {**base, **item}
        assert m.LEASE_ITEM.ok(cand) == m.LEASE_ITEM.general.ok(cand)


# Mutations: replace any value with one of another msgpack kind; the result must be rejected.

_KINDS: dict[str, Any] = {
    "nil": st.none(),
    "bool": st.booleans(),
    "int": st.integers(min_value=-(2**63), max_value=2**64 - 1),
    "float": st.floats(allow_nan=False),
    "str": st.text(max_size=50),
    "bin": st.binary(max_size=40),
    "array": st.lists(st.integers() | st.text(max_size=5), max_size=3),
    "map": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
}


def kind(v: Any) -> str:
    return {
        type(None): "nil",
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        bytes: "bin",
        list: "array",
        tuple: "array",
        dict: "map",
    }[type(v)]


def _free_form(op: str, path: tuple[Any, ...]) -> bool:
    """Positions that hold a free-form map: anything goes inside them."""
    return (
        (op == "welcome" and path == ("info",))
        or (op == "status" and path == ("status",))
        or (op == "lease" and len(path) == 3 and path[0] == "done" and path[2] == 2)
    )


def paths(op: str, value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if _free_form(op, path):
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(op, v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(op, v, path + (i,))
    return out


def replaced(msg: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(msg) if isinstance(msg, dict) else list(msg)
    copy[path[0]] = replaced(msg[path[0]], path[1:], new)
    return copy


def get(msg: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        msg = msg[p]
    return msg


def wrong_kinds(op: str, path: tuple[Any, ...], current: Any) -> list[str]:
    allowed = {kind(current)}
    if op == "error" and path == ("re",):
        allowed |= {"nil", "int"}  # re is uint or nil
    return [k for k in _KINDS if k not in allowed]


_EXAMPLE = {
    "nil": None,
    "bool": False,
    "int": -1,
    "float": 0.5,
    "str": "x",
    "bin": b"x",
    "array": [],
    "map": {},
}


@pytest.mark.parametrize("name, sender, msg", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_field_of_a_wrong_kind_is_rejected(
    name: str, sender: m.Sender, msg: dict[str, Any]
) -> None:
    for path in paths(msg["op"], msg):
        for k in wrong_kinds(msg["op"], path, get(msg, path)):
            with pytest.raises(ProtocolError):
                m.validate(replaced(msg, path, _EXAMPLE[k]), sender)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_messages_raise_protocol_error_and_nothing_else(data: st.DataObject) -> None:
    name, sender, msg = data.draw(st.sampled_from(SAMPLES), label="vector")
    ps = paths(msg["op"], msg)
    if not ps:
        return  # bye: nothing to mutate
    path = data.draw(st.sampled_from(ps), label="path")
    k = data.draw(st.sampled_from(wrong_kinds(msg["op"], path, get(msg, path))), label="kind")
    new = data.draw(_KINDS[k], label="value")
    bad = replaced(msg, path, new)
    with pytest.raises(ProtocolError):
        m.validate(bad, sender)
    # and the same through the bytes, as a peer would receive it
    with pytest.raises(ProtocolError):
        for got in FrameDecoder().feed(encode_frame(bad)):
            m.validate(got, sender)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["op", "id", "re", "want", "leases", "x"]),
        _plain | st.sampled_from(sorted(m.SCHEMAS["client"])),
        max_size=6,
    ),
    st.sampled_from(["client", "server", None]),
)
def test_arbitrary_maps_never_raise_anything_but_protocol_error(
    msg: dict[str, Any], sender: m.Sender | None
) -> None:
    try:
        m.validate(msg, sender)
    except ProtocolError:
        pass


def test_check_allowed() -> None:
    m.check_allowed(m.status(1), "client", "read")
    m.check_allowed(m.lease(1, want=1), "worker", "full")
    m.check_allowed(m.shutdown(1), "client", "full")
    m.check_allowed(m.invalidate(1, []), "worker", "full")
    for msg, role, access in [
        (m.shutdown(1), "client", "read"),
        (m.invalidate(1, []), "client", "read"),
        (m.lease(1, want=1), "client", "full"),
        (m.renew(1, []), "client", "read"),
    ]:
        with pytest.raises(m.AccessDenied):
            m.check_allowed(msg, role, access)


def test_error_codes() -> None:
    from ajug.errors import AuthError, BadMac, VersionMismatch

    cases = [
        (FrameTooLarge("x"), "frame"),
        (BadMac("x"), "mac"),
        (VersionMismatch("x"), "version"),
        (m.UnknownOp("x"), "op"),
        (m.BadField("x"), "field"),
        (m.AccessDenied("x"), "access"),
        (AuthError("x"), "auth"),
        (ProtocolError("x"), "decode"),
        (KeyError("secret detail"), "internal"),
    ]
    for exc, code in cases:
        assert m.error_code(exc) == code
        assert m.error_for(exc, 4)["code"] == code
    assert set(code for _, code in cases) | {"timeout"} == set(m.ERROR_CODES)
    assert m.error_for(KeyError("secret detail"))["msg"] == "internal error"
    assert m.request_id({"id": 5}) == 5 and m.request_id({"id": -1}) is None


# --- golden vectors ------------------------------------------------------------------------


def vector_mac(v: dict[str, Any]) -> FrameMac | None:
    """The MAC a vector's frame is sealed with (None for the plain frames of the handshake)."""
    sealed = v["sealed"]
    if sealed is None:
        return None
    keys = DOC["connections"][sealed["connection"]]
    key = keys["key_c2s"] if v["direction"] == "C>S" else keys["key_s2c"]
    return FrameMac(bytes.fromhex(key), sealed["seq"])


@pytest.mark.parametrize("v", INDEX, ids=[v["name"] for v in INDEX])
def test_vector_round_trips_byte_for_byte(v: dict[str, Any]) -> None:
    data = (VECTORS / v["file"]).read_bytes()
    assert data.hex() == v["frame_hex"]
    (decoded,) = FrameDecoder(mac=vector_mac(v)).feed(data)
    expected = gen.from_json(v["message"])
    assert decoded == expected
    assert [type(x) for x in decoded.values()] == [type(x) for x in expected.values()]
    m.validate(decoded, "client" if v["direction"] == "C>S" else "server")
    assert encode_frame(decoded, mac=vector_mac(v)) == data
    assert encode_frame(expected, mac=vector_mac(v)) == data
    if v["sealed"] is not None:  # the body alone is the canonical encoding, as for plain frames
        assert data[4:-32] == msgpack.packb(expected, use_bin_type=True)
        assert data[-32:].hex() == v["sealed"]["tag_hex"]


def test_vectors_cover_every_op_in_both_directions() -> None:
    seen = {("client" if v["direction"] == "C>S" else "server", v["message"]["op"]) for v in INDEX}
    wanted = {(side, op) for side, ops in m.SCHEMAS.items() for op in ops}
    assert wanted <= seen


def test_vector_files_are_exactly_what_generate_writes(tmp_path: Path) -> None:
    assert gen.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    checked_in = sorted(p.name for p in VECTORS.iterdir() if p.suffix in (".bin", ".json", ".md"))
    assert written == checked_in
    for name in written:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name


def test_vector_proofs_are_the_documented_hmacs() -> None:
    msgs = {name: msg for name, _, msg in SAMPLES}
    for suffix, token in (("", b"ajug-test-token"), ("-read", b"ajug-read-token")):
        cn = msgs["hello" + suffix]["nonce"]
        sn = msgs["challenge" + suffix]["nonce"]
        server = hmac.new(token, b"ajug/1 server" + cn + sn, hashlib.sha256).digest()
        client = hmac.new(token, b"ajug/1 client" + sn + cn, hashlib.sha256).digest()
        assert msgs["challenge" + suffix]["proof"] == server
        assert msgs["auth" + suffix]["proof"] == client


@pytest.mark.parametrize("conn", ["full", "read"])
@pytest.mark.parametrize("direction", ["C>S", "S>C"])
def test_each_connection_as_one_stream_in_odd_chunks(conn: str, direction: str) -> None:
    """What one side of a vector connection receives, in 7-byte pieces, decoded as a
    connection does: plain until the handshake's end, sealed from the next frame on."""
    mine = [v for v in INDEX if v["direction"] == direction and _connection(v) == conn]
    stream = b"".join((VECTORS / v["file"]).read_bytes() for v in mine)
    keys = DOC["connections"][conn]
    key = bytes.fromhex(keys["key_c2s"] if direction == "C>S" else keys["key_s2c"])
    dec, out = FrameDecoder(), []
    for i in range(0, len(stream), 7):
        dec.push(stream[i : i + 7])
        while (msg := dec.next()) is not None:
            out.append(msg)
            if msg["op"] in ("challenge", "auth"):  # the last plain frame of its direction
                dec.mac = FrameMac(key)
    assert out == [gen.from_json(v["message"]) for v in mine]
    assert dec.mac is not None and dec.mac.seq == sum(1 for v in mine if v["sealed"])


def _connection(v: dict[str, Any]) -> str | None:
    if v["sealed"] is not None:
        return v["sealed"]["connection"]
    return {"hello": "full", "challenge": "full", "auth": "full", "hello-read": "read",
            "challenge-read": "read", "auth-read": "read"}.get(v["name"])


def test_decode_body_matches_vectors() -> None:
    data = (VECTORS / "auth.bin").read_bytes()
    assert decode_body(data[4:])["op"] == "auth"
    data = (VECTORS / "bye.bin").read_bytes()  # sealed: the body, then 32 bytes of MAC
    assert decode_body(data[4:-32]) == {"op": "bye"}


def test_lease_offer_and_lease_timeout_are_checked() -> None:
    """SPEC 11.6: a lease request's ``offer`` and a lease item's ``timeout`` (both optional)."""
    key = "a" * 40
    ok = m.lease(1, want=1, offer={"group": "node1:42", "resources": {"gpus": 1, "memory": 6.4e10}})
    assert m.validate(ok, "client") is ok
    item = m.lease_item(key, 1, 0, b"", timeout=2.5)
    assert m.validate(m.leases(1, state="run", leases=[item]), "server")["leases"][0]["timeout"] == 2.5
    assert "timeout" not in m.lease_item(key, 1, 0, b"")  # absent: no limit
    for bad in ({"group": 1, "resources": {}}, {"group": "g", "resources": {"gpus": -1}},
                {"group": "g", "resources": {"gpus": "1"}}, {"group": "g"},
                {"group": "g", "resources": {f"r{i}": 1 for i in range(65)}}):
        with pytest.raises(m.BadField):
            m.validate({**m.lease(1, want=1), "offer": bad}, "client")
    for bad_timeout in (0, -1, "2", True):
        with pytest.raises(m.BadField):
            m.validate(m.leases(1, state="run", leases=[{**item, "timeout": bad_timeout}]), "server")
