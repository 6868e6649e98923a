"""asyncio glue: a stream pair + ``FrameDecoder`` + the handshake state machines.

The only module of the protocol that does I/O. It is also the boundary where ``OSError``,
``asyncio.IncompleteReadError``, ``ssl.SSLError`` and timeouts become ajug errors:

- ``open_connection`` raises ``ConnectError`` (cannot reach, timed out, TLS failed, closed during
  the handshake), ``AuthError`` (either side's proof wrong; never retry that) or
  ``VersionMismatch``.
- ``Connection.recv`` raises ``ConnectionClosed`` when the peer goes away and ``ProtocolError``
  for a bad frame or message; in the second case the peer has already been sent an ``error``
  and the connection is closed, as protocol/SPEC.md requires. Either way the caller only has to
  forget the connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import ssl as _ssl
from dataclasses import dataclass
from typing import Any

from ajug.errors import AjugError, ConnectError, ProtocolError, TLSError
from ajug.protocol import messages as m
from ajug.protocol.auth import ClientHandshake, ServerHandshake
from ajug.protocol.framing import (
    HANDSHAKE_MAX_FRAME_BYTES,
    MAX_FRAME_BYTES,
    FrameDecoder,
    encode_frame,
)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
READ_CHUNK_BYTES = 256 * 1024


class ConnectionClosed(ProtocolError):
    """The peer closed the connection, or it broke (reset, TLS failure)."""


@dataclass(frozen=True)
class Peer:
    """Who is at the other end, as established by the handshake."""

    role: str  # "worker" or "client"; "coordinator" seen from a client
    access: str  # "full" or "read": what this connection may do
    session: str
    host: str
    pid: int | None
    name: str
    address: str  # "ip:port" of the socket, for log lines
    version: int


class Connection:
    """One authenticated connection. ``recv`` from one task at a time; ``send`` from any."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        side: m.Sender,
        address: str,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._side: m.Sender = side
        self._peer_side: m.Sender = "server" if side == "client" else "client"
        self._max_frame_bytes = max_frame_bytes
        # Until the handshake is done both directions are held to the small handshake limit.
        self._send_limit = min(max_frame_bytes, HANDSHAKE_MAX_FRAME_BYTES)
        self._decoder = FrameDecoder(min(max_frame_bytes, HANDSHAKE_MAX_FRAME_BYTES))
        self._inbox: collections.deque[dict[str, Any]] = collections.deque()
        self._closed = False
        self.address = address
        self.peer: Peer | None = None
        self.info: dict[str, Any] = {}  # the welcome info (client side) / sent (server side)

    def __repr__(self) -> str:
        who = f"{self.peer.role} {self.peer.session}" if self.peer else "handshaking"
        state = " closed" if self._closed else ""
        return f"<Connection {self._side} side, {who} at {self.address}{state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def welcome_info(self) -> dict[str, Any]:
        """The coordinator's ``welcome`` info (store URL, lease_ttl_ms, max_frame, ...)."""
        return self.info

    def _established(self, peer: Peer, send_limit: int) -> None:
        self.peer = peer
        self._decoder.max_frame_bytes = self._max_frame_bytes
        self._send_limit = send_limit

    async def recv(self) -> dict[str, Any]:
        """The next valid message from the peer.

        On a bad frame or message the peer is told (``error``) and the connection is closed
        before the ``ProtocolError`` is raised.
        """
        msg = await self._recv_raw()
        try:
            return m.validate(msg, self._peer_side)
        except ProtocolError as exc:
            self.fail(exc, m.request_id(msg))
            raise

    async def _recv_raw(self) -> dict[str, Any]:
        """The next decoded frame, unvalidated; a decoding error closes (and tells the peer)."""
        try:
            while not self._inbox:
                if self._closed:
                    raise ConnectionClosed(f"the connection to {self.address} is closed")
                if self._decoder.failed:
                    self._decoder.feed(b"")  # raises the error held back after good frames
                try:
                    data = await self._reader.read(READ_CHUNK_BYTES)
                except OSError as exc:  # resets, TLS errors (ssl.SSLError is an OSError)
                    raise ConnectionClosed(
                        f"the connection to {self.address} broke: {exc}"
                    ) from None
                if not data:
                    mid = " in the middle of a frame" if self._decoder.buffered else ""
                    raise ConnectionClosed(f"{self.address} closed the connection{mid}")
                self._inbox.extend(self._decoder.feed(data))
        except ConnectionClosed:
            self.close()
            raise
        except ProtocolError as exc:
            self.fail(exc)
            raise
        return self._inbox.popleft()

    def send(self, msg: dict[str, Any]) -> None:
        """Validate, encode and buffer ``msg``; ``drain`` to wait for the socket.

        A message this side may not send raises ``ProtocolError`` and the connection carries on.
        """
        if self._closed or self._writer.is_closing():
            raise ConnectionClosed(f"the connection to {self.address} is closed")
        m.validate(msg, self._side)
        self._writer.write(encode_frame(msg, max_frame_bytes=self._send_limit))

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark (flow control)."""
        try:
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:  # RuntimeError: transport already closed
            self.close()
            raise ConnectionClosed(f"the connection to {self.address} broke: {exc}") from None

    def fail(self, exc: BaseException, re: int | None = None) -> None:
        """Tell the peer why (``error`` frame, best effort), then close."""
        self._abort(m.error_for(exc, re))

    def _abort(self, error: dict[str, Any] | None) -> None:
        if not self._closed and error is not None and not self._writer.is_closing():
            try:
                self._writer.write(encode_frame(error))
            except (AjugError, OSError, RuntimeError):
                pass
        self.close()

    def close(self) -> None:
        """Close (idempotent); buffered frames are still flushed by the transport."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    async def wait_closed(self) -> None:
        try:
            await self._writer.wait_closed()
        except (OSError, RuntimeError):
            pass

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def open_connection(
    host: str,
    port: int,
    *,
    token: bytes,
    role: str,
    access: str = "full",
    ssl: _ssl.SSLContext | None = None,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    name: str = "",
) -> Connection:
    """Connect to a coordinator and authenticate both ways; the result is ready to use."""
    where = f"{host}:{port}"
    hs = ClientHandshake(
        token, role, access, host=socket.gethostname(), pid=os.getpid(), name=name, server=where
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + handshake_timeout_s
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl), handshake_timeout_s
        )
    except ConnectionRefusedError:
        raise ConnectError(
            f"cannot reach the coordinator at {where}: connection refused; is `ajug serve` running?"
        ) from None
    except asyncio.TimeoutError:
        raise ConnectError(
            f"cannot reach the coordinator at {where}: no answer within {handshake_timeout_s:g} s"
        ) from None
    except _ssl.SSLError as exc:
        raise TLSError(
            f"TLS with the coordinator at {where} failed: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectError(f"cannot reach the coordinator at {where}: {reason}") from None

    conn = Connection(reader, writer, side="client", address=where, max_frame_bytes=max_frame_bytes)
    try:
        await asyncio.wait_for(_client_handshake(conn, hs), max(0.0, deadline - loop.time()))
    except asyncio.TimeoutError:
        conn.close()
        raise ConnectError(
            f"the coordinator at {where} did not complete the handshake "
            f"within {handshake_timeout_s:g} s"
        ) from None
    except ConnectionClosed:
        # A TLS coordinator closes a plain-TCP client, and one that requires client
        # certificates closes a client without an accepted one, with no reason on the wire.
        hint = (
            "if it serves TLS, connect with TLS (--tls-ca)"
            if ssl is None
            else "if it requires a client certificate, pass one it accepts (--tls-cert, --tls-key)"
        )
        raise ConnectError(
            f"the coordinator at {where} closed the connection during the handshake; {hint}"
        ) from None
    finally:
        if not hs.done:
            conn.close()
    assert hs.session is not None and hs.version is not None
    limit = hs.info.get("max_frame")
    send_limit = limit if type(limit) is int and 0 < limit <= max_frame_bytes else max_frame_bytes
    peer = Peer("coordinator", hs.access, hs.session, host, None, "coordinator", where, hs.version)
    conn.info = hs.info
    conn._established(peer, send_limit)
    return conn


async def _client_handshake(conn: Connection, hs: ClientHandshake) -> None:
    conn.send(hs.hello())
    await conn.drain()
    while not hs.done:
        msg = await conn._recv_raw()
        try:
            out = hs.receive(msg)
        except AjugError as exc:
            # The coordinator's own error needs no answer; anything else gets one.
            conn._abort(None if msg.get("op") == "error" else m.error_for(exc))
            raise
        for reply in out:
            conn.send(reply)
        await conn.drain()


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    full_token: bytes,
    read_token: bytes | None = None,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    welcome_info: dict[str, Any] | None = None,
    session: str | None = None,
) -> Connection | None:
    """Run the coordinator's side of the handshake on a new stream pair.

    Returns the authenticated connection, or ``None`` after telling the peer why (``error``),
    closing, and logging one line: a bad client never raises into the accept loop.
    """
    address = _peername(writer)
    info = {"max_frame": max_frame_bytes, **(welcome_info or {})}
    hs = ServerHandshake(full_token, read_token, welcome_info=info, session=session)
    conn = Connection(
        reader, writer, side="server", address=address, max_frame_bytes=max_frame_bytes
    )
    try:
        await asyncio.wait_for(_server_handshake(conn, hs), handshake_timeout_s)
    except asyncio.TimeoutError:
        conn._abort(
            m.error(None, "timeout", f"handshake not completed within {handshake_timeout_s:g} s")
        )
        log.info("refused %s: handshake not completed within %g s", address, handshake_timeout_s)
        return None
    except ConnectionClosed as exc:
        conn.close()
        log.info("connection from %s ended during the handshake: %s", address, exc)
        return None
    except AjugError as exc:
        conn.close()
        log.warning("refused %s: %s", address, exc)
        return None
    except BaseException:
        conn.close()
        raise
    assert hs.role and hs.access and hs.host is not None and hs.name is not None
    assert hs.version is not None and hs.pid is not None
    peer = Peer(hs.role, hs.access, hs.session, hs.host, hs.pid, hs.name, address, hs.version)
    conn.info = info
    conn._established(peer, max_frame_bytes)
    log.debug(
        "%s %s (%s pid %s) connected from %s", peer.role, peer.name, peer.host, peer.pid, address
    )
    return conn


async def _server_handshake(conn: Connection, hs: ServerHandshake) -> None:
    while not hs.done:
        msg = await conn._recv_raw()
        try:
            out = hs.receive(msg)
        except AjugError as exc:
            # Nobody answers an error with an error; a bad request's id goes back (SPEC 9).
            conn._abort(None if msg.get("op") == "error" else m.error_for(exc, m.request_id(msg)))
            raise
        for reply in out:
            conn.send(reply)
        await conn.drain()


def _peername(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
        return f"{host}:{name[1]}"
    return str(name or "?")
