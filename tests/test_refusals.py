"""Failed handshakes cannot flood the log (issue 12): a few lines in full, then one a minute.

``RefusalLog``'s decisions with a clock passed in; the asyncio glue on real connections; and a
real coordinator (in this process) that garbage connections hit by the hundred.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
from pathlib import Path

import pytest
from inproc import TOKEN, Engine
from procs import JUGFILES

from ajug.protocol import connection as conn_mod
from ajug.protocol.refusals import FULL_LINES, MAX_PEERS, RefusalLog, peer_host

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_few_in_full_then_one_summary_per_interval() -> None:
    clock = Clock()
    r = RefusalLog(full_lines=3, interval_s=60, clock=clock)
    out = []
    for i in range(200):
        peer = "10.0.0.1" if i % 4 else f"10.0.1.{i % 7}"
        level = logging.INFO if i < 100 else logging.WARNING
        out += r.refused(peer, f"refused {peer}:{i}: garbage", level)
        clock.now += 0.1
    assert [line for _, line in out] == [
        "refused 10.0.1.0:0: garbage",
        "refused 10.0.0.1:1: garbage",
        "refused 10.0.0.1:2: garbage",
    ]
    assert r.pending and r.summary() is None  # 20 s in: not yet
    assert r.due_in() == pytest.approx(40.0)
    clock.now += 40.0
    level, line = r.summary() or (0, "")
    assert level == logging.WARNING  # the highest among those not logged
    assert line == (
        "200 connections refused in the last minute from 10.0.0.1 (150), 10.0.1.0 (8), "
        "10.0.1.4 (7) and 5 more address(es) (the first 3 logged above)"
    )
    assert not r.pending and r.summary(force=True) is None
    # the next interval starts with the next refusal, and logs its first ones in full again
    assert r.refused("10.0.0.9", "again", logging.WARNING) == [(logging.WARNING, "again")]


def test_a_late_refusal_brings_the_pending_summary_first() -> None:
    clock = Clock()
    r = RefusalLog(full_lines=1, interval_s=10, clock=clock)
    r.refused("a", "first")
    r.refused("a", "second")  # counted
    clock.now += 11
    out = r.refused("b", "third")
    assert [line.split(" from ")[0] for _, line in out] == [
        "2 connections refused in the last 11 s",
        "third",
    ]


def test_a_quiet_interval_has_no_summary_and_is_forgotten() -> None:
    clock = Clock()
    r = RefusalLog(full_lines=5, interval_s=10, clock=clock)
    assert [r.refused("a", f"{i}") for i in range(5)] == [[(logging.WARNING, f"{i}")]
                                                          for i in range(5)]
    assert not r.pending and r.summary(force=True) is None
    clock.now += 10
    assert r.refused("a", "new interval") == [(logging.WARNING, "new interval")]


def test_memory_is_bounded_whatever_the_number_of_peers() -> None:
    clock = Clock()
    r = RefusalLog(full_lines=0, interval_s=10, clock=clock)
    for i in range(MAX_PEERS * 3):
        r.refused(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "x")
    assert len(r._peers) == MAX_PEERS
    _, line = r.summary(force=True) or (0, "")
    assert line.startswith(f"{MAX_PEERS * 3} connections refused in the last 0.0 s from ")
    assert f"and {MAX_PEERS - 3 + 1}+ more address(es)" in line


def test_peer_host() -> None:
    assert peer_host("127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("[::1]:40000") == "[::1]"
    assert peer_host("?") == "?"


# --- on real connections -------------------------------------------------------------------


def garbage_connection(port: int, data: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    """Connect, send ``data``, read until the coordinator closes: what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
        return got


async def test_the_summary_comes_when_the_interval_ends(caplog: pytest.LogCaptureFixture) -> None:
    """The glue schedules the summary: it is logged although no connection comes after."""
    refusals = RefusalLog(interval_s=0.5)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            assert await conn_mod.accept(reader, writer, full_token=b"t", refusals=refusals) is None
        finally:
            writer.close()

    caplog.set_level(logging.INFO, logger="ajug.protocol.connection")
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        for _ in range(40):
            await loop.run_in_executor(None, garbage_connection, port)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == FULL_LINES and all(x.startswith("refused 127.0.0.1:") for x in lines)
        deadline = loop.time() + 5
        while len(caplog.records) == FULL_LINES and loop.time() < deadline:
            await asyncio.sleep(0.05)
        summary = caplog.records[-1]
        assert summary.levelno == logging.WARNING
        assert re.fullmatch(
            r"40 connections refused in the last 0\.\d s from 127\.0\.0\.1 \(40\) "
            r"\(the first 5 logged above\)",
            summary.getMessage(),
        ), summary.getMessage()
        assert len(caplog.records) == FULL_LINES + 1
    finally:
        server.close()
        await server.wait_closed()


def test_a_flood_of_garbage_connections_writes_a_few_lines(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real coordinator in this process (tests/inproc.py), as ``ajug serve -v`` logs."""
    caplog.set_level(logging.INFO, logger="ajug")
    jugfile = tmp_path / "steady.py"
    shutil.copy(JUGFILES / "steady.py", jugfile)
    coord = engine.make_coordinator(jugfile)
    n = 400
    for i in range(n):
        answer = garbage_connection(coord.port,
                                    b"GET / HTTP/1.1\r\n\r\n" if i % 2 else os_noise(i))
        assert answer.startswith(b"\x00\x00"), answer  # an error frame, then the close
    coord.stop()  # a stopping coordinator says what it has not said yet
    coord.wait(30)
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == FULL_LINES + 1, "\n".join(r.getMessage() for r in refused)
    last = refused[-1]
    assert re.search(
        rf"^{n} connections refused in the last (minute|[\d.]+ s) from 127\.0\.0\.1 \({n}\) "
        rf"\(the first {FULL_LINES} logged above\)$",
        last.getMessage(),
    ), last.getMessage()
    assert (last.levelname, last.name) == ("WARNING", "ajug.protocol.connection")
    assert TOKEN.decode() not in caplog.text


def os_noise(i: int) -> bytes:
    """Bytes that are no frame: a prefix over the handshake limit, or a body that is not msgpack."""
    return b"\xff\xff\xff\xff" if i % 4 == 0 else b"\x00\x00\x00\x02\xc1\xc1"
