"""In-process coordinators for tests: ``make_coordinator(...)`` builds one in the test's own
event loop on a memory store (or any store URL), listening on 127.0.0.1 port 0, and closes it
when the test ends. Drive it over real TCP with ``connect(coord)`` or through
``Coordinator.serve_connection`` with any stream pair."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ajug.coordinator import Coordinator, Settings
from ajug.protocol.connection import Connection, open_connection

TOKEN = b"inproc-token-0123456789abcdef"

MakeCoordinator = Callable[..., Awaitable[Coordinator]]


@pytest.fixture
async def make_coordinator(tmp_path: Path) -> AsyncIterator[MakeCoordinator]:
    """``await make_coordinator(source, **settings)``: a coordinator serving the jugfile
    ``source`` (its text), loaded and listening; closed at the end of the test."""
    made: list[Coordinator] = []

    async def make(source: str, *, name: str = "jugfile.py", store_url: str = "memory:",
                   clock: Callable[[], float] | None = None, **settings: Any) -> Coordinator:
        jugfile = tmp_path / name
        jugfile.write_text(source)
        s = Settings(jugfile=str(jugfile), store_url=store_url, host="127.0.0.1", port=0,
                     token=TOKEN, **settings)
        coord = Coordinator(s) if clock is None else Coordinator(s, clock=clock)
        made.append(coord)
        await coord.open()
        return coord

    yield make
    for coord in made:
        await coord.close()


async def connect(coord: Coordinator, role: str = "worker", access: str = "full",
                  token: bytes = TOKEN) -> Connection:
    """A client or worker connection to ``coord`` over TCP on 127.0.0.1."""
    assert coord.port is not None
    return await open_connection("127.0.0.1", coord.port, token=token, role=role, access=access,
                                 handshake_timeout_s=5)
