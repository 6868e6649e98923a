"""asyncio glue: a stream pair + ``FrameDecoder`` + the handshake state machines + frame MACs.

The only module of the protocol that does I/O. It is also the boundary where ``OSError``,
``asyncio.IncompleteReadError``, ``ssl.SSLError`` and timeouts become ajug errors:

- ``open_connection`` raises ``ConnectError`` (cannot reach, timed out, TLS failed, closed during
  the handshake), ``AuthError`` (either side's proof wrong; never retry that) or
  ``VersionMismatch``.
- ``Connection.recv`` raises ``ConnectionClosed`` when the peer goes away and ``ProtocolError``
  for a bad frame or message; in the second case the peer has already been sent an ``error``
  and the connection is closed, as protocol/SPEC.md requires. Either way the caller only has to
  forget the connection. ``BadMac`` (a ``ProtocolError``) is a frame that failed authentication.

Every frame after the handshake is sealed and checked with the session keys (``mac.py``): the
coordinator switches both directions over right after it has checked ``auth`` (its ``welcome`` is
the first sealed frame), the client right after it has sent ``auth``. Also under TLS: the MAC is
cheap, and it still holds when TLS is not verified or a relay terminates it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as _ssl
from dataclasses import dataclass
from typing import Any

from ajug.errors import (  # noqa: F401 - ConnectionClosed is re-exported
    AjugError,
    BadMac,
    ConnectError,
    ConnectionClosed,
    ProtocolError,
    TLSError,
)
from ajug.protocol import messages as m
from ajug.protocol.auth import ClientHandshake, ServerHandshake
from ajug.protocol.framing import (
    FORMAT_MAX_FRAME_BYTES,
    HANDSHAKE_MAX_FRAME_BYTES,
    MAX_FRAME_BYTES,
    FrameDecoder,
    encode_frame,
    frame_body,
)
from ajug.protocol.mac import FrameMac, SessionKeys
from ajug.protocol.refusals import RefusalLog, peer_host

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
READ_CHUNK_BYTES = 256 * 1024


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
        self._send_mac: FrameMac | None = None
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

    @property
    def authenticated(self) -> bool:
        """Whether frames are sealed and checked (from the end of the handshake on)."""
        return self._send_mac is not None

    def _authenticate(self, keys: SessionKeys) -> None:
        """Seal every frame sent from now on, and check every frame received, with ``keys``."""
        mine, theirs = (keys.c2s, keys.s2c) if self._side == "client" else (keys.s2c, keys.c2s)
        self._send_mac = FrameMac(mine)
        self._decoder.mac = FrameMac(theirs)
        # the coordinator answers our auth with a sealed welcome, or with a plain error when it
        # refused our proof (it has no keys in common with us then)
        self._decoder.plain_error_once = self._side == "client"

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
            while True:
                if self._closed:
                    raise ConnectionClosed(f"the connection to {self.address} is closed")
                msg = self._decoder.next()
                if msg is not None:
                    return msg
                try:
                    data = await self._reader.read(READ_CHUNK_BYTES)
                except OSError as exc:  # resets, TLS errors (ssl.SSLError is an OSError)
                    raise ConnectionClosed(
                        f"the connection to {self.address} broke: {exc}"
                    ) from None
                if not data:
                    mid = " in the middle of a frame" if self._decoder.buffered else ""
                    raise ConnectionClosed(f"{self.address} closed the connection{mid}")
                self._decoder.push(data)
        except ConnectionClosed:
            self.close()
            raise
        except BadMac as exc:
            who = "the coordinator at " if self._side == "client" else ""
            exc = BadMac(f"refused a frame from {who}{self.address}: {exc}; closed the connection")
            self.fail(exc)
            raise exc from None
        except ProtocolError as exc:
            self.fail(exc)
            raise

    def send(self, msg: dict[str, Any]) -> None:
        """Validate, encode and buffer ``msg``; ``drain`` to wait for the socket.

        A message this side may not send raises ``ProtocolError`` and the connection carries on.
        """
        if self._closed or self._writer.is_closing():
            raise ConnectionClosed(f"the connection to {self.address} is closed")
        m.validate(msg, self._side)
        self._writer.write(
            encode_frame(msg, max_frame_bytes=self._send_limit, mac=self._send_mac)
        )

    def _send_body(self, body: bytes) -> None:
        """Send any bytes as one frame's body, sealed as usual: for tests of what a peer does
        with a well-authenticated frame that holds nonsense."""
        self._writer.write(
            frame_body(body, max_frame_bytes=FORMAT_MAX_FRAME_BYTES, mac=self._send_mac)
        )

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
                self._writer.write(encode_frame(error, mac=self._send_mac))
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
        if hs.keys is not None and not conn.authenticated:  # auth is sent: all else is sealed
            conn._authenticate(hs.keys)
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
    refusals: RefusalLog | None = None,
) -> Connection | None:
    """Run the coordinator's side of the handshake on a new stream pair.

    Returns the authenticated connection, or ``None`` after telling the peer why (``error``),
    closing, and logging one line (through ``refusals``, which keeps a flood of them to a few
    lines a minute): a bad client never raises into the accept loop.
    """
    address = peer_address(writer)
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
        note_refusal(
            refusals,
            address,
            f"refused {address}: handshake not completed within {handshake_timeout_s:g} s",
            logging.INFO,
        )
        return None
    except ConnectionClosed as exc:
        conn.close()
        note_refusal(
            refusals, address, f"connection from {address} ended during the handshake: {exc}",
            logging.INFO,
        )
        return None
    except AjugError as exc:
        conn.close()
        note_refusal(refusals, address, f"refused {address}: {exc}")
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
        if hs.keys is not None and not conn.authenticated:  # welcome is the first sealed frame
            conn._authenticate(hs.keys)
        for reply in out:
            conn.send(reply)
        await conn.drain()


def note_refusal(
    refusals: RefusalLog | None, address: str, line: str, level: int = logging.WARNING
) -> None:
    """Log ``line`` about a connection from ``address`` that failed its handshake, through
    ``refusals`` if given (the first few per interval in full, then one summary line when the
    interval is over)."""
    if refusals is None:
        log.log(level, "%s", line)
        return
    for lvl, text in refusals.refused(peer_host(address), line, level):
        log.log(lvl, "%s", text)
    if refusals.pending and not refusals.scheduled:
        refusals.scheduled = True
        asyncio.get_running_loop().call_later(refusals.due_in(), flush_refusals, refusals)


def flush_refusals(refusals: RefusalLog, force: bool = False) -> None:
    """Log the summary of refusals not logged yet, if their interval is over (or ``force``:
    the coordinator is closing)."""
    refusals.scheduled = False
    pending = refusals.summary(force=force)
    if pending is not None:
        log.log(pending[0], "%s", pending[1])
    elif refusals.pending:  # woken a little early: the interval is not quite over
        refusals.scheduled = True
        asyncio.get_running_loop().call_later(
            max(refusals.due_in(), 0.01), flush_refusals, refusals
        )


def peer_address(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
        return f"{host}:{name[1]}"
    return str(name or "?")
