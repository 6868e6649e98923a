"""Authenticated frames after the handshake (issue 12, SPEC 5.3): keys, MACs, sequence numbers.

Three layers: the golden vectors checked by a second implementation written here from the SPEC
with ``hmac``/``hashlib`` only (no import of ajug's MAC code); the codec's decisions, bytes in and
bytes or exceptions out; and real connections on 127.0.0.1 with a relay in the middle that
injects, replays, drops, reorders or rewrites frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import msgpack
import pytest

from ajug.errors import AuthError, BadMac, FrameTooLarge, ProtocolError
from ajug.protocol import messages as m
from ajug.protocol.connection import Connection, ConnectionClosed, accept, open_connection
from ajug.protocol.framing import FrameDecoder, encode_frame, frame_body
from ajug.protocol.mac import FrameMac, session_keys

pytestmark = pytest.mark.timeout(30)

VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
DOC = json.loads((VECTORS / "vectors.json").read_text())
TOKEN = b"mac-T0KEN-never-logged"
T = TypeVar("T")


# --- a second implementation, from protocol/SPEC.md 5.3 alone ------------------------------


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869, written out."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


def ref_keys(token: bytes, cn: bytes, sn: bytes, role: str, access: str) -> tuple[bytes, bytes]:
    """(C>S key, S>C key)."""
    bound = f" {role} {access}".encode()
    return (
        hkdf_sha256(cn + sn, token, b"ajug/2 key client>server" + bound),
        hkdf_sha256(cn + sn, token, b"ajug/2 key server>client" + bound),
    )


def ref_open(frame: bytes, key: bytes, seq: int) -> bytes | None:
    """The body of a sealed frame if its MAC is right for frame number ``seq``, else None."""
    (n,) = struct.unpack(">I", frame[:4])
    assert len(frame) == 4 + n, "one whole frame"
    if n < 32:
        return None
    tag = hmac.new(key, seq.to_bytes(8, "big") + frame[:-32], hashlib.sha256).digest()
    return frame[4:-32] if hmac.compare_digest(tag, frame[-32:]) else None


def test_the_reference_hkdf_is_rfc_5869() -> None:
    """RFC 5869 appendix A.1, so that the reference above is the standard and not a copy."""
    okm = hkdf_sha256(bytes(range(13)), b"\x0b" * 22, bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_vector_keys_by_the_reference() -> None:
    for name, c in DOC["connections"].items():
        c2s, s2c = ref_keys(
            c["token"].encode(),
            bytes.fromhex(c["client_nonce"]),
            bytes.fromhex(c["server_nonce"]),
            c["role"],
            c["access"],
        )
        assert (c2s.hex(), s2c.hex()) == (c["key_c2s"], c["key_s2c"]), name
        assert c2s != s2c


def test_sealed_vectors_by_the_reference() -> None:
    """Every frame after a handshake verifies under its direction's key and number, numbers
    count from 0 without gaps, and the body is the message's canonical encoding."""
    expected_seq: dict[tuple[str, str], int] = {}
    sealed = 0
    for v in DOC["vectors"]:
        frame = (VECTORS / v["file"]).read_bytes()
        body = msgpack.packb(_from_json(v["message"]), use_bin_type=True)
        if v["sealed"] is None:
            assert frame == struct.pack(">I", len(body)) + body, v["name"]
            continue
        sealed += 1
        conn, seq = v["sealed"]["connection"], v["sealed"]["seq"]
        assert seq == expected_seq.get((conn, v["direction"]), 0), v["name"]
        expected_seq[conn, v["direction"]] = seq + 1
        keys = DOC["connections"][conn]
        key = bytes.fromhex(keys["key_c2s"] if v["direction"] == "C>S" else keys["key_s2c"])
        other = bytes.fromhex(keys["key_s2c"] if v["direction"] == "C>S" else keys["key_c2s"])
        assert ref_open(frame, key, seq) == body, v["name"]
        assert ref_open(frame, key, seq + 1) is None  # the number is part of it
        assert ref_open(frame, other, seq) is None  # and so is the direction
    assert sealed >= 20 and {("full", "S>C"), ("full", "C>S"), ("read", "S>C")} <= set(expected_seq)


@pytest.mark.parametrize("v", DOC["refuse"], ids=[v["name"] for v in DOC["refuse"]])
def test_refuse_vectors_are_refused_by_both_implementations(v: dict[str, Any]) -> None:
    frame = (VECTORS / v["file"]).read_bytes()
    key = bytes.fromhex(DOC["connections"][v["connection"]]["key_s2c"])
    seq = v["expected_seq"]
    assert ref_open(frame, key, seq) is None
    dec = FrameDecoder(mac=FrameMac(key, seq))
    with pytest.raises(BadMac, match=f"frame {seq} failed authentication"):
        dec.feed(frame)
    assert dec.failed and dec.mac is not None and dec.mac.seq == seq
    # the control: the coordinator's genuine frame at that number passes both
    genuine = encode_frame(m.renewed(9), mac=FrameMac(key, seq))
    assert ref_open(genuine, key, seq) is not None
    assert FrameDecoder(mac=FrameMac(key, seq)).feed(genuine) == [m.renewed(9)]


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: _from_json(x) for k, x in value.items()}
    if isinstance(value, list):
        return [_from_json(x) for x in value]
    return value


# --- the keys ------------------------------------------------------------------------------


def test_session_keys_match_the_reference_and_depend_on_everything() -> None:
    cn, sn = os.urandom(16), os.urandom(16)
    keys = session_keys(TOKEN, cn, sn, "worker", "full")
    assert (keys.c2s, keys.s2c) == ref_keys(TOKEN, cn, sn, "worker", "full")
    others = [
        session_keys(b"other", cn, sn, "worker", "full"),
        session_keys(TOKEN, os.urandom(16), sn, "worker", "full"),
        session_keys(TOKEN, cn, os.urandom(16), "worker", "full"),
        session_keys(TOKEN, sn, cn, "worker", "full"),  # the nonces' order counts
        session_keys(TOKEN, cn, sn, "client", "full"),
        session_keys(TOKEN, cn, sn, "client", "read"),
    ]
    seen = {keys.c2s, keys.s2c}
    for k in others:
        assert k.c2s not in seen and k.s2c not in seen
        seen |= {k.c2s, k.s2c}
    assert session_keys(b"", cn, sn, "worker", "full") == session_keys(b"", cn, sn, "worker", "full")
    with pytest.raises(ValueError):
        session_keys(TOKEN, cn, sn, "coordinator", "full")
    with pytest.raises(ValueError):
        session_keys(TOKEN, cn[:8], sn, "worker", "full")


def test_keys_are_in_no_repr() -> None:
    keys = session_keys(TOKEN, bytes(16), bytes(16), "worker", "full")
    mac = FrameMac(keys.c2s)
    dec = FrameDecoder(mac=FrameMac(keys.s2c))
    for text in (repr(keys), str(keys), repr(mac), repr(dec)):
        for key in (keys.c2s, keys.s2c):
            assert key.hex() not in text and repr(key) not in text and key.hex()[:16] not in text


# --- the codec ------------------------------------------------------------------------------


def pair() -> tuple[FrameMac, FrameMac]:
    """A sender's and a receiver's view of one direction."""
    key = session_keys(TOKEN, bytes(16), bytes(range(16)), "worker", "full").s2c
    return FrameMac(key), FrameMac(key)


def test_frames_in_order_pass_and_the_numbers_advance() -> None:
    send, recv = pair()
    msgs = [m.renewed(i) for i in range(5)]
    stream = b"".join(encode_frame(x, mac=send) for x in msgs)
    dec = FrameDecoder(mac=recv)
    got = []
    for i in range(0, len(stream), 5):  # in pieces
        got += dec.feed(stream[i : i + 5])
    assert got == msgs and send.seq == recv.seq == 5


@pytest.mark.parametrize("attack", ["replay", "reorder", "drop", "reflect", "unsealed", "forge"])
def test_a_frame_out_of_place_is_refused(attack: str) -> None:
    send, recv = pair()
    frames = [encode_frame(m.renewed(i), mac=send) for i in range(3)]
    if attack == "replay":
        stream = [frames[0], frames[0]]
    elif attack == "reorder":
        stream = [frames[0], frames[2], frames[1]]
    elif attack == "drop":
        stream = [frames[0], frames[2]]
    elif attack == "reflect":  # the other direction's frame number 1 (same number, other key)
        keys = session_keys(TOKEN, bytes(16), bytes(range(16)), "worker", "full")
        c2s = FrameMac(keys.c2s, 1)
        stream = [frames[0], encode_frame(m.renewed(1), mac=c2s)]
    elif attack == "unsealed":
        stream = [frames[0], encode_frame(m.renewed(1))]
    else:  # the right number, a key of its own
        stream = [frames[0], encode_frame(m.renewed(1), mac=FrameMac(os.urandom(32), 1))]
    dec = FrameDecoder(mac=recv)
    assert dec.feed(stream[0]) == [m.renewed(0)]
    with pytest.raises(BadMac, match="frame 1 failed authentication"):
        dec.feed(b"".join(stream[1:]))
    with pytest.raises(BadMac):  # and it stays refused: the stream cannot be trusted again
        dec.feed(frames[1])


def test_every_altered_byte_is_refused() -> None:
    send, _ = pair()
    frame = encode_frame(m.leases(3, state="run", leases=[m.lease_item("a" * 40, 1, 0, b"x")]),
                         mac=send)
    for i in range(4, len(frame)):  # body and MAC; the prefix below
        for bit in (0x01, 0x80):
            bad = bytearray(frame)
            bad[i] ^= bit
            _, recv = pair()
            with pytest.raises(BadMac):
                FrameDecoder(mac=recv).feed(bytes(bad))
    # a shorter length prefix: the frame ends earlier, the MAC is taken from the wrong bytes
    for cut in (1, 31, 32, 33, len(frame) - 5):
        (n,) = struct.unpack(">I", frame[:4])
        _, recv = pair()
        with pytest.raises(BadMac):
            FrameDecoder(mac=recv).feed(struct.pack(">I", n - cut) + frame[4:])


def test_nothing_unauthenticated_is_decoded() -> None:
    """A bad MAC is reported as such, whatever the body holds; a good MAC over a bad body is a
    decoding error (the sender holds the key: it is a bug, not an attack)."""
    send, recv = pair()
    garbage = b"\xc1" * 40 + os.urandom(32)
    with pytest.raises(BadMac):
        FrameDecoder(mac=recv).feed(struct.pack(">I", len(garbage)) + garbage)
    send, recv = pair()
    with pytest.raises(ProtocolError, match="not valid msgpack") as info:
        FrameDecoder(mac=recv).feed(frame_body(b"\xc1", mac=send))
    assert not isinstance(info.value, BadMac)


def test_a_plain_error_may_stand_in_for_the_first_sealed_frame_only() -> None:
    """The coordinator refuses a client's proof with a plain error: it has no keys in common
    with that client. Nothing else may be plain, and only there."""
    refusal = encode_frame(m.error(None, "auth", "wrong token for full access"))
    _, recv = pair()
    dec = FrameDecoder(mac=recv)
    dec.plain_error_once = True
    assert dec.feed(refusal) == [m.error(None, "auth", "wrong token for full access")]
    # a plain frame that is not an error
    _, recv = pair()
    dec = FrameDecoder(mac=recv)
    dec.plain_error_once = True
    with pytest.raises(BadMac):
        dec.feed(encode_frame(m.welcome(session="s", access="full", info={})))
    # a plain error after the first sealed frame
    send, recv = pair()
    dec = FrameDecoder(mac=recv)
    dec.plain_error_once = True
    assert dec.feed(encode_frame(m.renewed(0), mac=send) + refusal) == [m.renewed(0)]
    with pytest.raises(BadMac, match="frame 1 failed"):
        dec.feed(b"")


def test_a_refused_message_uses_up_no_number() -> None:
    send, recv = pair()
    with pytest.raises(FrameTooLarge):
        encode_frame(m.invalidate(1, ["0" * 40] * 100), max_frame_bytes=1000, mac=send)
    assert send.seq == 0
    assert FrameDecoder(mac=recv).feed(encode_frame(m.ok(1), mac=send)) == [m.ok(1)]


# --- real connections with a relay in the middle -------------------------------------------


async def w(aw: Awaitable[T], timeout: float = 10) -> T:
    return await asyncio.wait_for(aw, timeout)


class Relay:
    """Forwards whole frames between a client and a server on 127.0.0.1; ``hook(direction,
    index, frame)`` returns the frames to send on instead (the index counts that direction's
    frames on that connection from 0). A frame's body is ``frame[4:]`` while plain and
    ``frame[4:-32]`` once sealed: the relay reads everything, it just cannot seal."""

    def __init__(self, upstream_port: int,
                 hook: Callable[[str, int, bytes], list[bytes]]) -> None:
        self.upstream_port = upstream_port
        self.hook = hook
        self.seen: list[tuple[str, int, bytes]] = []
        self.closed_by: list[str] = []  # which side hung up first, per connection
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        writers = {"C>S": s_writer, "S>C": c_writer}
        try:
            done, pending = await asyncio.wait(
                [
                    asyncio.ensure_future(self._pump("C>S", c_reader, writers)),
                    asyncio.ensure_future(self._pump("S>C", s_reader, writers)),
                ],
                return_when=asyncio.FIRST_COMPLETED,
            )
            self.closed_by.append(next(iter(done)).result())
            for t in pending:
                t.cancel()
        finally:
            for wr in writers.values():
                wr.close()
            self._tasks.discard(task)

    async def _pump(self, direction: str, reader: asyncio.StreamReader,
                    writers: dict[str, asyncio.StreamWriter]) -> str:
        index = 0
        try:
            while True:
                prefix = await reader.readexactly(4)
                frame = prefix + await reader.readexactly(struct.unpack(">I", prefix)[0])
                self.seen.append((direction, index, frame))
                for out in self.hook(direction, index, frame):
                    # an injected frame may go either way: it names its direction first
                    to, data = (out[:3].decode(), out[3:]) if out[:3] in (b"C>S", b"S>C") else (
                        direction, out)
                    writers[to].write(data)
                index += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            return "client" if direction == "C>S" else "server"


def body_of(frame: bytes) -> dict[str, Any]:
    """What a relay can read of a sealed frame."""
    return msgpack.unpackb(frame[4:-32], raw=False)


def forged_leases(re: int) -> bytes:
    """A relay's own reply to a worker's lease: sealed under a key it made up."""
    leases = m.leases(re, state="run", leases=[m.lease_item("b" * 40, 1, 0, b"\x80\x05N.")],
                      funcs=[m.func_item(0, "relay.evil", "0" * 40, b"\x80\x05N.")])
    return encode_frame(leases, mac=FrameMac(os.urandom(32), 1))


async def tiny_coordinator(conn: Connection, served: list[Any]) -> None:
    """Answers status and lease; records what ended the connection."""
    try:
        while True:
            msg = await conn.recv()
            if msg["op"] == "status":
                conn.send(m.status_reply(msg["id"], {"n": msg["id"]}))
            elif msg["op"] == "lease":
                conn.send(m.leases(msg["id"], state="idle"))
            await conn.drain()
    except ProtocolError as exc:
        served.append(exc)
    finally:
        await conn.aclose()


@pytest.fixture
async def server() -> AsyncIterator[SimpleNamespace]:
    served: list[Any] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            conn = await accept(reader, writer, full_token=TOKEN, welcome_info={"store": "memory:"})
            if conn is not None:
                await tiny_coordinator(conn, served)
        finally:
            writer.close()
            handlers.discard(task)

    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield SimpleNamespace(port=srv.sockets[0].getsockname()[1], served=served)
    finally:
        srv.close()
        for t in list(handlers):
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await w(srv.wait_closed())


async def through(server: SimpleNamespace, hook: Callable[[str, int, bytes], list[bytes]],
                  role: str = "worker") -> tuple[Relay, Connection]:
    relay = await Relay(server.port, hook).start()
    conn = await w(open_connection("127.0.0.1", relay.port, token=TOKEN, role=role))
    return relay, conn


async def test_a_relay_that_only_forwards_changes_nothing(server: SimpleNamespace) -> None:
    relay, conn = await through(server, lambda d, i, f: [f])
    try:
        for i in range(1, 4):
            conn.send(m.status(i))
            await w(conn.drain())
            assert (await w(conn.recv()))["status"] == {"n": i}
        ops = [(d, body_of(f)["op"]) for d, i, f in relay.seen if i >= 2 or (d == "S>C" and i)]
        assert ops[:2] == [("S>C", "welcome"), ("C>S", "status")]
    finally:
        await conn.aclose()
        await relay.close()


async def test_a_worker_refuses_what_a_relay_injects(server: SimpleNamespace) -> None:
    """The issue's attack on the wire: the relay answers the worker's first lease itself."""

    def hook(direction: str, index: int, frame: bytes) -> list[bytes]:
        if direction == "C>S" and index >= 2 and body_of(frame)["op"] == "lease":
            return [b"S>C" + forged_leases(body_of(frame)["id"])]  # and not forwarded
        return [frame]

    relay, conn = await through(server, hook)
    try:
        conn.send(m.lease(1, want=1, wait_ms=0))
        await w(conn.drain())
        with pytest.raises(BadMac) as info:
            await w(conn.recv())
        assert str(info.value).startswith(
            f"refused a frame from the coordinator at 127.0.0.1:{relay.port}: frame 1 failed "
            "authentication"
        ), info.value
        assert "\n" not in str(info.value) and conn.closed
        with pytest.raises(ConnectionClosed):
            await w(conn.recv())
        await w(_until(lambda: relay.closed_by))
        # the worker told the relay why (sealed with its own key), and hung up first
        last = [f for d, _, f in relay.seen if d == "C>S"][-1]
        assert (body_of(last)["op"], body_of(last)["code"]) == ("error", "mac")
        assert relay.closed_by == ["client"]
    finally:
        await conn.aclose()
        await relay.close()


@pytest.mark.parametrize("attack", ["replay", "drop", "reorder"])
async def test_replayed_dropped_or_reordered_replies_are_refused(
    server: SimpleNamespace, attack: str
) -> None:
    held: list[bytes] = []

    def hook(direction: str, index: int, frame: bytes) -> list[bytes]:
        if direction != "S>C" or index < 2:  # the handshake and welcome pass
            return [frame]
        if index == 2:  # the first reply
            if attack == "replay":
                held.append(frame)
                return [frame]
            return [] if attack == "drop" else (held.append(frame) or [])
        if index == 3:
            return [held[0]] if attack == "replay" else [frame, *held]
        return [frame]

    relay, conn = await through(server, hook)
    try:
        for i in (1, 2):
            conn.send(m.status(i))
        await w(conn.drain())
        if attack == "replay":
            assert (await w(conn.recv()))["re"] == 1
        with pytest.raises(BadMac, match="frame 2 failed" if attack == "replay" else "frame 1 f"):
            await w(conn.recv())
        assert conn.closed
    finally:
        await conn.aclose()
        await relay.close()


async def test_the_coordinator_refuses_an_injected_request_and_serves_the_others(
    server: SimpleNamespace,
) -> None:
    def hook(direction: str, index: int, frame: bytes) -> list[bytes]:
        if direction == "C>S" and index == 2:  # before the client's first request
            return [encode_frame(m.shutdown(99), mac=FrameMac(os.urandom(32), 0)), frame]
        return [frame]

    relay, conn = await through(server, hook)
    other = await w(open_connection("127.0.0.1", server.port, token=TOKEN, role="client"))
    try:
        conn.send(m.status(1))
        await w(conn.drain())
        err = await w(conn.recv())  # the coordinator's answer is still sealed, and says why
        assert (err["op"], err["code"], err["re"]) == ("error", "mac", None)
        assert "frame 0 failed authentication" in err["msg"]
        with pytest.raises(ConnectionClosed):
            await w(conn.recv())
        await w(_until(lambda: server.served))
        assert isinstance(server.served[0], BadMac)
        assert str(server.served[0]).startswith("refused a frame from 127.0.0.1:")
        other.send(m.status(5))
        await w(other.drain())
        assert (await w(other.recv()))["status"] == {"n": 5}
    finally:
        await conn.aclose()
        await other.aclose()
        await relay.close()


@pytest.mark.parametrize("field, value", [("role", "client"), ("name", "relayed")])
async def test_hello_rewritten_by_a_relay(server: SimpleNamespace, field: str, value: str) -> None:
    """The proofs do not cover role and access, but the keys do: a relay that turns a worker
    into a client leaves the two sides with different keys, and the welcome fails. Free-form
    labels (host, pid, name) are only for display and may pass."""

    def hook(direction: str, index: int, frame: bytes) -> list[bytes]:
        if direction == "C>S" and index == 0:
            hello = msgpack.unpackb(frame[4:], raw=False)
            hello[field] = value
            return [encode_frame(hello)]
        return [frame]

    relay = await Relay(server.port, hook).start()
    try:
        if field == "role":
            with pytest.raises(BadMac, match="frame 0 failed authentication"):
                await w(open_connection("127.0.0.1", relay.port, token=TOKEN, role="worker"))
        else:
            conn = await w(open_connection("127.0.0.1", relay.port, token=TOKEN, role="worker"))
            await conn.aclose()
    finally:
        await relay.close()


async def test_a_refused_proof_still_reads_as_a_refused_token(server: SimpleNamespace) -> None:
    """A relay that spoils the client's proof: the coordinator refuses it in a plain error,
    which the client reads in place of the sealed welcome."""

    def hook(direction: str, index: int, frame: bytes) -> list[bytes]:
        if direction == "C>S" and index == 1:
            return [frame[:-1] + bytes([frame[-1] ^ 1])]
        return [frame]

    relay = await Relay(server.port, hook).start()
    try:
        with pytest.raises(AuthError, match="refused our token for full access"):
            await w(open_connection("127.0.0.1", relay.port, token=TOKEN, role="worker"))
    finally:
        await relay.close()


async def _until(pred: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (v := pred()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)
    return v
