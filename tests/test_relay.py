"""The relay attack of issue 12: a proxy on 127.0.0.1 that does not hold the token forwards the
handshake between real Workers and a real Coordinator (in this process, tests/inproc.py, over
real TCP: every proof the workers check is genuine), then answers each worker's first ``lease``
itself with code of its own. The workers must refuse that frame without running anything, close
the connection, say why in their log, reconnect, and finish the run with the real coordinator.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import struct
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from inproc import TOKEN, Engine
from procs import values, wait_for

from ajug.protocol import messages as m
from ajug.protocol.framing import encode_frame
from ajug.protocol.mac import FrameMac

pytestmark = pytest.mark.timeout(120)

N = 12
JUGFILE = '''\
"""Tasks that leave a file per execution, so that a test can count them; the last one waits
for the file AJUG_TEST_GATE (so the run lasts until every worker is back)."""
import os
import time
import uuid
from pathlib import Path

from ajug import TaskGenerator

MARKS = Path(os.environ["AJUG_TEST_MARKS"])


@TaskGenerator
def square(i):
    (MARKS / f"{i}.{os.getpid()}.{uuid.uuid4().hex}").touch()
    return i * i


@TaskGenerator
def total(xs):
    deadline = time.monotonic() + 60
    while not Path(os.environ["AJUG_TEST_GATE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return sum(xs)


squares = [square(i) for i in range(N)]
result = total(squares)
'''.replace("range(N)", f"range({N})")
KEY = "0123456789abcdef0123456789abcdef01234567"


class Evil:
    """Unpickling this creates ``path``: proof that a worker ran what the relay sent."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class Relay:
    """Blocking-socket relay in threads. The first ``attack`` connections get their first sealed
    ``lease`` answered by the relay (the lease never reaches the coordinator, nothing the worker
    sends afterwards does either); every other connection is forwarded as it is."""

    def __init__(self, upstream_port: int, attack: int, payload: bytes) -> None:
        self.upstream_port = upstream_port
        self.attack = attack
        self.payload = payload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[SimpleNamespace] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.listener.close()
            for c in self.connections:
                for s in (c.client, c.upstream):
                    s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the coordinator is gone: as a closed port would be
                client.close()
                continue
            with self.lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                attacked = len(self.connections) < self.attack
                c = SimpleNamespace(client=client, upstream=upstream, attacked=attacked,
                                    injected_re=None, after=[], worker_closed=threading.Event())
                self.connections.append(c)
            threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._from_worker, args=(c,), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _from_worker(self, c: SimpleNamespace) -> None:
        index = 0
        try:
            while True:
                prefix = recv_exact(c.client, 4)
                frame = prefix + recv_exact(c.client, struct.unpack(">I", prefix)[0])
                if c.injected_re is not None:
                    c.after.append(msgpack.unpackb(frame[4:-32], raw=False))
                elif c.attacked and index >= 2 and (body := msgpack.unpackb(
                        frame[4:-32], raw=False))["op"] == "lease":
                    c.injected_re = body["id"]
                    c.client.sendall(self._forged(body["id"]))
                else:
                    c.upstream.sendall(frame)
                index += 1
        except (EOFError, OSError):
            pass
        finally:
            c.worker_closed.set()
            for s in (c.client, c.upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _forged(self, re_: int) -> bytes:
        """The relay's answer: a lease and the function to run it, sealed as well as it can
        (with a key of its own: it never had the session's)."""
        leases = m.leases(re_, state="run", leases=[m.lease_item(KEY, 1, 0, self.payload)],
                          funcs=[m.func_item(0, "relay.evil", "0" * 40, self.payload)])
        return encode_frame(leases, mac=FrameMac(os.urandom(32), 1))


def test_a_relay_cannot_get_its_code_run(engine: Engine, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ajug")
    jugfile = tmp_path / "squares.py"
    jugfile.write_text(JUGFILE)
    marks = tmp_path / "marks"
    marks.mkdir()
    pwned = tmp_path / "pwned"
    gate = tmp_path / "gate"
    monkeypatch.setenv("AJUG_TEST_MARKS", str(marks))
    monkeypatch.setenv("AJUG_TEST_GATE", str(gate))
    coord = engine.make_coordinator(jugfile)
    relay = Relay(coord.port, attack=2, payload=pickle.dumps(Evil(pwned)))
    try:
        workers = [engine.run_worker(relay.port) for _ in range(2)]
        # both workers attacked, and both back through the relay (which now only forwards)
        wait_for(lambda: len(relay.connections) >= 4 and len(list(marks.iterdir())) == N, 60,
                 what="both workers to reconnect and the squares to be done")
        gate.touch()
        for w in workers:
            assert w.wait(90) == 0
        assert coord.wait(30) == 0
    finally:
        relay.close()
    # nothing the relay sent was run, or even unpickled
    assert not pwned.exists(), "a worker ran the relay's code"
    # both workers refused the injected frame, told the relay why, closed, and said so in one line
    attacked = [c for c in relay.connections if c.attacked]
    assert len(attacked) == 2 and all(c.injected_re is not None for c in attacked)
    for c in attacked:
        assert c.worker_closed.wait(10)
        assert [(x["op"], x.get("code")) for x in c.after] == [("error", "mac")], c.after
        # (the number is that of the worker's first reply from the coordinator that the relay
        # made: 1, or 2 if the worker asked for the jugfile's code first)
        assert re.search(r"frame [12] failed authentication", c.after[0]["msg"]), c.after
    lines = [r for r in caplog.records if "refused a frame" in r.getMessage()]
    assert len(lines) == 2, caplog.text
    for r in lines:
        # one warning per worker, from where a worker says it is connecting, connected or lost
        assert (r.name, r.levelname) == ("ajug.workconnect", "WARNING"), r
        assert re.fullmatch(
            r"lost the coordinator \(refused a frame from the coordinator at "
            rf"127\.0\.0\.1:{relay.port}: frame [12] failed authentication \(its MAC does not match"
            r": injected, replayed, reordered, altered on the way, or one before it was "
            r"dropped\); closed the connection\); reconnecting for \d+ s",
            r.getMessage(),
        ), r.getMessage()
    # and reconnected through the relay, which now only forwards: the run is complete, every
    # task ran exactly once, and the values are right
    assert len(relay.connections) >= 4
    runs = sorted(int(p.name.split(".")[0]) for p in marks.iterdir())
    assert runs == list(range(N)), runs
    assert values(jugfile, ["result"], AJUG_TEST_MARKS=str(marks),
                  AJUG_TEST_GATE=str(gate))["result"] == sum(
        i * i for i in range(N)
    )
    assert TOKEN.decode() not in caplog.text
    wait_for(lambda: all(c.worker_closed.is_set() for c in relay.connections), 10,
             what="the relay's connections to end")
