"""Connections over real TCP on 127.0.0.1 (ephemeral ports), with and without TLS."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import msgpack
import pytest
from procs import free_port, make_certs

from ajug.errors import AuthError, ConnectError, FrameTooLarge, ProtocolError
from ajug.protocol import messages as m
from ajug.protocol.connection import Connection, ConnectionClosed, accept, open_connection
from ajug.protocol.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.timeout(20)

TOKEN = b"conn-T0KEN-never-logged"
READ = b"conn-READ-T0KEN-never-logged"
T = TypeVar("T")


async def w(aw: Awaitable[T], timeout: float = 5) -> T:
    return await asyncio.wait_for(aw, timeout)


async def echo_serve(conn: Connection) -> None:
    """A tiny coordinator: answers status and lease, stops at bye or a bad frame."""
    try:
        while True:
            msg = await conn.recv()
            if msg["op"] == "status":
                conn.send(m.status_reply(msg["id"], {"peer": conn.peer.name if conn.peer else ""}))
            elif msg["op"] == "lease":
                conn.send(m.leases(msg["id"], state="idle"))
            elif msg["op"] == "bye":
                return
            await conn.drain()
    except ProtocolError:
        pass
    finally:
        await conn.aclose()


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[SimpleNamespace]]]:
    servers: list[asyncio.base_events.Server] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def make(
        serve: Callable[[Connection], Awaitable[None]] = echo_serve,
        ssl_ctx: ssl.SSLContext | None = None,
        **kw: Any,
    ) -> SimpleNamespace:
        accepted: asyncio.Queue[Connection | None] = asyncio.Queue()
        opts = {"full_token": TOKEN, "read_token": None, "welcome_info": {"store": "memory:"}}
        opts.update(kw)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                conn = await accept(reader, writer, **opts)
                accepted.put_nowait(conn)
                if conn is not None:
                    await serve(conn)
            finally:
                writer.close()
                handlers.discard(task)

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_ctx)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return SimpleNamespace(host="127.0.0.1", port=port, accepted=accepted)

    yield make
    for s in servers:
        s.close()
        await w(s.wait_closed())
    for t in list(handlers):
        t.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


async def raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await w(asyncio.open_connection("127.0.0.1", port))


async def frames_until_eof(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    dec, out = FrameDecoder(), []
    while data := await w(reader.read(65536)):
        out += dec.feed(data)
    return out


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await w(writer.wait_closed())
    except OSError:
        pass


async def test_handshake_end_to_end(make_server: Any) -> None:
    srv = await make_server(max_frame_bytes=1 << 20)
    conn = await w(open_connection(srv.host, srv.port, token=TOKEN, role="worker", name="w7"))
    async with conn:
        server_side = await w(srv.accepted.get())
        assert server_side is not None and server_side.peer is not None
        p = server_side.peer
        assert (p.role, p.access, p.name, p.pid, p.host) == (
            "worker",
            "full",
            "w7",
            os.getpid(),
            socket.gethostname(),
        )
        assert p.address.startswith("127.0.0.1:")
        assert conn.peer is not None and conn.peer.session == p.session
        assert conn.peer.role == "coordinator" and conn.peer.access == "full"
        assert conn.welcome_info == {"max_frame": 1 << 20, "store": "memory:"}
        # pipelined requests, answered in order by this server
        for i in (1, 2, 3):
            conn.send(m.status(i))
        conn.send(m.lease(4, want=1, wait_ms=0))
        await w(conn.drain())
        replies = [await w(conn.recv()) for _ in range(4)]
        assert [r["re"] for r in replies] == [1, 2, 3, 4]
        assert replies[0]["status"] == {"peer": "w7"}
        assert replies[3] == m.leases(4, state="idle")
        conn.send(m.bye())
        await w(conn.drain())
        with pytest.raises(ConnectionClosed):
            await w(conn.recv())  # the server closes after bye
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            conn.send(m.status(9))


async def test_read_only_client(make_server: Any) -> None:
    srv = await make_server(read_token=READ)
    conn = await w(open_connection(srv.host, srv.port, token=READ, role="client", access="read"))
    async with conn:
        assert conn.peer is not None and conn.peer.access == "read"
        server_side = await w(srv.accepted.get())
        assert server_side.peer.access == "read" and server_side.peer.role == "client"
        conn.send(m.status(1, detail=True))
        await w(conn.drain())
        assert (await w(conn.recv()))["re"] == 1


async def test_send_validates_and_the_connection_carries_on(make_server: Any) -> None:
    srv = await make_server()
    async with await w(open_connection(srv.host, srv.port, token=TOKEN, role="worker")) as conn:
        with pytest.raises(m.BadField):
            conn.send(m.lease(1, want=-1))
        with pytest.raises(m.UnknownOp):
            conn.send(m.ok(1))  # a server's message
        conn.send(m.status(2))
        await w(conn.drain())
        assert (await w(conn.recv()))["re"] == 2


async def test_wrong_token_is_refused_and_never_logged(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv = await make_server()
    with pytest.raises(AuthError, match="did not prove it has the token") as info:
        await w(open_connection(srv.host, srv.port, token=b"wrong-T0KEN", role="worker"))
    assert f"{srv.host}:{srv.port}" in str(info.value)
    assert await w(srv.accepted.get()) is None
    await asyncio.sleep(0.05)  # let the server log its line
    assert any("refused" in r.getMessage() for r in caplog.records)
    for r in caplog.records:
        for secret in (TOKEN, b"wrong-T0KEN"):
            assert secret.decode() not in r.getMessage() and secret.hex() not in r.getMessage()


async def test_wrong_client_proof_gets_error_then_close(make_server: Any) -> None:
    srv = await make_server()
    reader, writer = await raw(srv.port)
    try:
        hello = m.hello(role="worker", access="full", nonce=bytes(16), host="h", pid=1, name="")
        writer.write(encode_frame(hello))
        dec = FrameDecoder()
        challenge: list[dict[str, Any]] = []
        while not challenge:
            challenge = dec.feed(await w(reader.read(4096)))
        assert challenge[0]["op"] == "challenge"
        writer.write(encode_frame(m.auth(proof=bytes(32))))
        rest = await frames_until_eof(reader)
        assert [(x["op"], x["code"]) for x in rest] == [("error", "auth")]
        assert TOKEN.decode() not in rest[0]["msg"]
        assert await w(srv.accepted.get()) is None
    finally:
        await close_raw(writer)


async def test_an_error_from_the_client_is_not_answered(make_server: Any) -> None:
    srv = await make_server()
    reader, writer = await raw(srv.port)
    try:
        hello = m.hello(role="worker", access="full", nonce=bytes(16), host="h", pid=1, name="")
        writer.write(encode_frame(hello) + encode_frame(m.error(None, "auth", "not you")))
        rest = await frames_until_eof(reader)
        assert [x["op"] for x in rest] == ["challenge"]
        assert await w(srv.accepted.get()) is None
    finally:
        await close_raw(writer)


async def test_silent_client_times_out(make_server: Any) -> None:
    srv = await make_server(handshake_timeout_s=0.2)
    reader, writer = await raw(srv.port)
    try:
        rest = await frames_until_eof(reader)  # we send nothing
        assert [(x["op"], x["code"]) for x in rest] == [("error", "timeout")]
        assert await w(srv.accepted.get()) is None
    finally:
        await close_raw(writer)


async def test_oversize_frame_during_handshake(make_server: Any) -> None:
    srv = await make_server()
    reader, writer = await raw(srv.port)
    try:
        writer.write(struct.pack(">I", 1_000_000))  # over the 64 KiB handshake limit
        rest = await frames_until_eof(reader)
        assert [(x["op"], x["code"]) for x in rest] == [("error", "frame")]
    finally:
        await close_raw(writer)


async def test_oversize_frame_after_handshake_is_refused_unread(make_server: Any) -> None:
    srv = await make_server(max_frame_bytes=1024)
    conn = await w(open_connection(srv.host, srv.port, token=TOKEN, role="worker"))
    async with conn:
        with pytest.raises(FrameTooLarge):
            conn.send(m.invalidate(1, ["0" * 40] * 100))  # the coordinator said max_frame 1024
        conn._writer.write(struct.pack(">I", 50_000))  # only the prefix: no body is ever sent
        await w(conn.drain())
        err = await w(conn.recv())
        assert (err["op"], err["code"], err["re"]) == ("error", "frame", None)
        with pytest.raises(ConnectionClosed):
            await w(conn.recv())


@pytest.mark.parametrize(
    "body, code, re",
    [
        (b"\xc1", "decode", None),
        (msgpack.packb({"op": "frobnicate", "id": 5}), "op", 5),
        (
            msgpack.packb(
                {"op": "lease", "id": 6, "want": "3", "wait_ms": 0, "done": [], "failed": []}
            ),
            "field",
            6,
        ),
        (
            msgpack.packb({"op": "leases", "re": 1, "state": "run", "leases": [], "funcs": []}),
            "op",
            None,
        ),
    ],
)
async def test_bad_frames_after_handshake_get_error_and_close(
    make_server: Any, body: bytes, code: str, re: int | None
) -> None:
    """Well authenticated (sealed with the session key) but bad inside."""
    srv = await make_server()
    conn = await w(open_connection(srv.host, srv.port, token=TOKEN, role="worker"))
    async with conn:
        conn._send_body(body)
        await w(conn.drain())
        err = await w(conn.recv())
        assert (err["op"], err["code"], err["re"]) == ("error", code, re)
        with pytest.raises(ConnectionClosed):
            await w(conn.recv())


async def test_a_bad_connection_does_not_disturb_another(make_server: Any) -> None:
    srv = await make_server()
    good = await w(open_connection(srv.host, srv.port, token=TOKEN, role="worker"))
    bad = await w(open_connection(srv.host, srv.port, token=TOKEN, role="worker"))
    async with good, bad:
        bad._send_body(b"\xc1")
        await w(bad.drain())
        assert (await w(bad.recv()))["op"] == "error"
        good.send(m.status(1))
        await w(good.drain())
        assert (await w(good.recv()))["re"] == 1


async def test_connection_refused() -> None:
    port = free_port()
    with pytest.raises(ConnectError) as info:
        await w(open_connection("127.0.0.1", port, token=TOKEN, role="worker"))
    assert str(info.value) == (
        f"cannot reach the coordinator at 127.0.0.1:{port}: connection refused; "
        "is `ajug serve` running?"
    )


async def test_server_that_closes_during_the_handshake(make_server: Any) -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError, match="closed the connection during the handshake"):
            await w(open_connection("127.0.0.1", port, token=TOKEN, role="worker"))
    finally:
        server.close()
        await w(server.wait_closed())


async def test_server_that_never_answers(make_server: Any) -> None:
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError, match="did not complete the handshake within 0.2 s"):
            await w(
                open_connection(
                    "127.0.0.1", port, token=TOKEN, role="worker", handshake_timeout_s=0.2
                )
            )
    finally:
        for wr in held:
            wr.close()
        server.close()
        await w(server.wait_closed())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(server certificate, its key, the CA that signed it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    c = make_certs(tmp_path_factory.mktemp("tls"))
    return c["server_pem"], c["server_key"], c["ca_pem"]


async def test_tls(make_server: Any, tls_files: tuple[str, str, str]) -> None:
    cert, key, ca = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = await make_server(ssl_ctx=server_ctx)
    client_ctx = ssl.create_default_context(cafile=ca)
    conn = await w(open_connection(srv.host, srv.port, token=TOKEN, role="worker", ssl=client_ctx))
    async with conn:
        conn.send(m.status(1))
        await w(conn.drain())
        assert (await w(conn.recv()))["re"] == 1
    # a client that does not trust the certificate gets a ConnectError, not an ssl exception
    with pytest.raises(ConnectError, match="TLS"):
        await w(
            open_connection(
                srv.host, srv.port, token=TOKEN, role="worker", ssl=ssl.create_default_context()
            )
        )
