"""Security of a run: tokens, mutual authentication, TLS, read-only access (issue 4).

What the coordinator and workers do together (handshakes, TLS, read-only access) runs in this
process (tests/inproc.py: a real Coordinator and real Workers in threads, real TCP on 127.0.0.1),
as does a fake coordinator that does not hold the token. Real `ajug serve` / `ajug work` /
`ajug status` processes where the process is the subject: what a command prints and its exit
status, the process list (a coordinator may *bind* 0.0.0.0, but nothing here connects anywhere
but 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from inproc import TOKEN, Engine
from procs import Procs, ajug_cmd, children, env, make_certs, read_log, values, wait_for

from ajug.cliparams import tls_context
from ajug.errors import AjugError, AuthError, ConnectError, ProtocolError
from ajug.protocol import messages as m
from ajug.protocol.auth import ServerHandshake
from ajug.protocol.client import query_status
from ajug.protocol.connection import open_connection
from ajug.protocol.framing import HANDSHAKE_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from ajug.worker import Worker, WorkerOptions

HERE = Path(__file__).parent
N_STEPS = 40
EXPECTED_TOTAL = sum(x * x for x in range(N_STEPS))
KEY = "0123456789abcdef0123456789abcdef01234567"


def steady(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of steady.py and its gate file (the run stays in progress until it exists)."""
    jugfile = tmp_path / "steady.py"
    shutil.copy(HERE / "jugfiles" / "steady.py", jugfile)
    return jugfile, tmp_path / "gate"


def run_env(token: str | None, gate: Path | None = None, **extra: str) -> dict[str, str]:
    e = env(AJUG_TEST_STEADY_S="0.01", **extra)
    e.pop("AJUG_TOKEN", None)
    e.pop("AJUG_READ_TOKEN", None)
    if token is not None:
        e["AJUG_TOKEN"] = token
    if gate is not None:
        e["AJUG_TEST_GATE"] = str(gate)
    e.update(extra)
    return e


def start_serve(
    procs: Procs, jugfile: Path, *args: str, env: dict[str, str], verbose: str = "-v"
) -> tuple[subprocess.Popen[str], int]:
    """`ajug serve` on a free port; its whole output goes to its log file."""
    p = procs.start([verbose, "serve", str(jugfile), "--port", "0", *args], "serve", env=env)

    def port() -> int | None:
        found = re.search(r"serving \S+ on \S+:(\d+)", read_log(p))
        assert found or p.poll() is None, read_log(p)
        return int(found.group(1)) if found else None

    return p, wait_for(port, 60, what="ajug serve to listen")


def ajug(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ajug_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """A failed command printed exactly one line, `ajug: error: ...`, and no traceback."""
    assert out.returncode != 0, out
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ajug: error: "), text
    return lines[0]


def live_status(port: int, env: dict[str, str], *extra: str) -> dict[str, Any]:
    out = ajug("status", f"127.0.0.1:{port}", "--json", *extra, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def steady_inproc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """steady.py for the engine in this process: short steps, and the gate."""
    jugfile, gate = steady(tmp_path)
    monkeypatch.setenv("AJUG_TEST_STEADY_S", "0.01")
    monkeypatch.setenv("AJUG_TEST_GATE", str(gate))
    return jugfile, gate


def status_of(port: int, token: bytes = TOKEN, ctx: Any = None, access: str = "full") -> Any:
    """What ``ajug status 127.0.0.1:PORT --json`` prints, asked over the protocol."""
    return asyncio.run(query_status("127.0.0.1", port, token, ctx, access=access))


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


# --- binding ---------------------------------------------------------------------------------


def test_non_loopback_bind_needs_a_token(procs: Procs, tmp_path: Path) -> None:
    jugfile, _ = steady(tmp_path)
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    for extra in ([], ["--token-file", str(empty)]):
        out = ajug(
            "serve", str(jugfile), "--host", "0.0.0.0", "--port", "0", *extra, env=run_env(None)
        )
        line = one_line_error(out)
        assert "token" in line and "0.0.0.0" in line
        assert "AJUG_TOKEN" in line
    assert not (tmp_path / "steady.ajugdata").exists()  # refused before touching anything
    # with a token it listens on every address; we only ever connect to 127.0.0.1
    token = "bind-" + secrets.token_hex(8)
    coord, port = start_serve(procs, jugfile, "--host", "0.0.0.0", env=run_env(token))
    assert f"on 0.0.0.0:{port}" in read_log(coord)
    assert live_status(port, run_env(token))["tasks"] == N_STEPS + 1


@pytest.mark.parametrize("how", ["flag", "AJUG_SERVE_HOST", "AJUG_HOST", "ajug.toml"])
def test_an_empty_host_is_every_interface_and_needs_a_token(
    procs: Procs, tmp_path: Path, how: str
) -> None:
    """`--host ''` (or an empty AJUG_SERVE_HOST / AJUG_HOST, or `host = ""` in ajug.toml) binds
    every interface: it is decided from the addresses bound, not from the string."""
    jugfile, _ = steady(tmp_path)
    flags = ["--host", ""] if how == "flag" else []
    extra = {how: ""} if how.startswith("AJUG_") else {}
    if how == "ajug.toml":
        (tmp_path / "ajug.toml").write_text('host = ""\n')
    out = ajug("serve", str(jugfile), "--port", "0", *flags, env=run_env(None, **extra))
    line = one_line_error(out)
    assert out.returncode == 2
    assert "refusing to listen on '' (every interface: 0.0.0.0" in line, line
    assert "AJUG_TOKEN" in line
    assert not (tmp_path / "steady.ajugdata").exists()  # refused before touching anything
    # with a token it serves, and on every interface indeed (we connect to 127.0.0.1 only)
    token = "any-" + secrets.token_hex(8)
    coord, port = start_serve(procs, jugfile, *flags, env=run_env(token, **extra))
    assert listening_on_any(port), "an empty host did not bind every interface"
    assert f"on *:{port} (every interface (0.0.0.0" in read_log(coord)
    assert live_status(port, run_env(token))["tasks"] == N_STEPS + 1
    coord.terminate()
    coord.wait(30)


def listening_on_any(port: int) -> bool:
    """Whether something listens on 0.0.0.0:port or [::]:port (from /proc/net)."""
    for table, anywhere in (("tcp", "00000000"), ("tcp6", "0" * 32)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and local == f"{anywhere}:{port:04X}":
                return True
    return False


async def test_the_bound_sockets_decide(tmp_path: Path) -> None:
    """The check after binding looks at the sockets themselves."""
    from ajug.access import check_bound
    from ajug.errors import UsageError

    async def nothing(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    for host, loopback in (("127.0.0.1", True), ("localhost", True), ("", False)):
        server = await asyncio.start_server(nothing, host, 0)
        try:
            if loopback:
                check_bound(host, server.sockets, b"")
            else:
                with pytest.raises(UsageError, match="without a token"):
                    check_bound(host, server.sockets, b"")
            check_bound(host, server.sockets, b"a token")  # with a token anything goes
        finally:
            server.close()
            await server.wait_closed()


# --- mutual authentication -------------------------------------------------------------------


class Evil:
    """Unpickling this creates ``path``: proof that a worker ran what a fake coordinator sent."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


async def fake_coordinator(scenario: str, tmp_path: Path) -> SimpleNamespace:
    """A coordinator that does not have the worker's token (and cheats as told)."""
    seen = SimpleNamespace(connections=0, received=[], server=None, port=0)
    evil = pickle.dumps(Evil(tmp_path / "pwned"))
    info = {"store": str(tmp_path / "fake.ajugdata"), "lease_ttl_ms": 30000, "max_frame": 1 << 20}
    payload = [
        m.welcome(session="fake", access="full", info=info),
        m.leases(
            1,
            state="run",
            leases=[m.lease_item(KEY, 1, 0, evil)],
            funcs=[m.func_item(0, "evil.run", "0" * 40, evil)],
        ),
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        dec = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
        hs = ServerHandshake(b"the fake coordinator's token", welcome_info=info)
        try:
            while data := await reader.read(1 << 16):
                for msg in dec.feed(data):
                    seen.received.append(msg)
                    if msg["op"] != "hello":
                        continue
                    out = [] if scenario == "welcome-first" else hs.receive(msg)
                    if scenario != "challenge":
                        out += payload  # never asked for: a worker must not touch it
                    writer.write(b"".join(encode_frame(o) for o in out))
        except (ProtocolError, OSError):
            pass
        finally:
            writer.close()

    seen.server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen.port = seen.server.sockets[0].getsockname()[1]
    return seen


@pytest.mark.parametrize("scenario", ["challenge", "challenge-then-code", "welcome-first"])
async def test_worker_refuses_a_coordinator_without_the_token(
    engine: Engine, tmp_path: Path, scenario: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ajug")
    monkeypatch.chdir(tmp_path)
    fake = await fake_coordinator(scenario, tmp_path)
    try:
        w = engine.run_worker(fake.port, connect_timeout_s=3)
        with pytest.raises(ConnectError if scenario == "welcome-first" else AuthError) as e:
            await asyncio.to_thread(w.wait, 60)
    finally:
        fake.server.close()
        await fake.server.wait_closed()
    text = str(e.value)
    fake_ops = [msg["op"] for msg in fake.received]
    assert "Traceback" not in caplog.text
    assert TOKEN.decode() not in text + caplog.text
    assert "auth" not in fake_ops, "the worker proved its token to a coordinator that did not"
    assert not (tmp_path / "pwned").exists(), "the worker unpickled what the fake sent"
    assert not (tmp_path / "fake.ajugdata").exists()
    if scenario == "welcome-first":
        assert "challenge" in text  # "expected challenge, got welcome"
        return
    assert "did not prove it has the token" in text
    assert fake.connections == 1, "a worker must not retry after an auth failure"
    assert fake_ops == ["hello", "error"], fake.received
    assert fake.received[1]["code"] == "auth"


# --- the token stays secret ------------------------------------------------------------------


def test_token_is_never_in_process_list_or_logs(procs: Procs, tmp_path: Path) -> None:
    jugfile, gate = steady(tmp_path)
    token = "secret-" + secrets.token_hex(12)
    e = run_env(token, gate)
    coord, port = start_serve(procs, jugfile, env=e, verbose="-vv")
    sup = procs.start(["-vv", "work", f"127.0.0.1:{port}", "-j", "2"], "work", env=e)
    st = wait_for(
        lambda: (
            (s := live_status(port, e))["totals"]["done"] == N_STEPS
            and len(s["workers"]) == 2
            and s
        ),
        60,
        what="both workers, the steps done",
    )
    kids = children(sup.pid)
    assert len(kids) == 2 and {w["pid"] for w in st["workers"]} == set(kids), st["workers"]
    for pid in (coord.pid, sup.pid, *kids):
        assert token not in cmdline(pid)
    # wrong tokens are refused; neither token shows in what anyone sees
    wrong = "wrong-" + secrets.token_hex(12)
    for args, says in (
        (["status", f"127.0.0.1:{port}"], "our token does not match the one of the coordinator"),
        (["work", f"127.0.0.1:{port}", "--connect-timeout", "5"], "did not prove it has the token"),
    ):
        line = one_line_error(ajug(*args, env=run_env(wrong)))
        assert says in line and "AJUG_TOKEN" in line, line
        assert token not in line and wrong not in line
    gate.touch()
    assert coord.wait(60) == 0, read_log(coord)
    assert sup.wait(30) == 0, read_log(sup)
    logs = read_log(coord) + read_log(sup)
    assert " D ajug" in logs  # -vv: debug lines are there, and still no token
    assert token not in logs and wrong not in logs
    assert values(jugfile, ["total"])["total"] == EXPECTED_TOTAL


# (the token's absence from the workers' and tasks' environments: tests/test_token_env.py)


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    return SimpleNamespace(**make_certs(tmp_path_factory.mktemp("certs")))


def tls_worker_error(port: int, ctx: Any) -> str:
    """What a worker with TLS context ``ctx`` (None: plain TCP) says when it cannot work
    (``ajug work`` prints this line after ``ajug: error:``)."""
    w = Worker(WorkerOptions(host="127.0.0.1", port=port, token=TOKEN, connect_timeout_s=2,
                             ssl=ctx))
    with pytest.raises(AjugError) as e:
        w.run()
    line = str(e.value)
    assert "\n" not in line and "Traceback" not in line, line
    return line


def test_tls_run_to_completion(engine: Engine, tmp_path: Path, certs: SimpleNamespace,
                               monkeypatch: pytest.MonkeyPatch,
                               caplog: pytest.LogCaptureFixture) -> None:
    """A TLS coordinator and worker in this process (tests/inproc.py), with the contexts
    ``--tls-cert/--tls-key`` and ``--tls-ca`` make; plain TCP and an unknown CA refused."""
    caplog.set_level(logging.DEBUG, logger="ajug")
    jugfile, gate = steady_inproc(tmp_path, monkeypatch)
    coord = engine.make_coordinator(
        jugfile, ssl=tls_context(True, certs.server_pem, certs.server_key, None))
    port = coord.port
    mine = tls_context(False, None, None, certs.ca_pem)
    w = engine.run_worker(port, ssl=mine, name="tls-worker")
    st = wait_for(lambda: (s := status_of(port, ctx=mine))["totals"]["done"] == N_STEPS and s,
                  60, what="the steps to be done")
    assert [x["name"] for x in st["workers"]] == ["tls-worker"]
    # plain TCP against the TLS coordinator: refused, and the message says what to do
    plain = tls_worker_error(port, None)
    assert "TLS" in plain and "--tls-ca" in plain, plain
    with pytest.raises(AjugError):
        status_of(port)
    # a coordinator whose certificate the worker's CA did not sign is not trusted
    other = tls_worker_error(port, tls_context(False, None, None, certs.other_ca_pem))
    assert "CERTIFICATE_VERIFY_FAILED" in other, other
    assert coord.rc is None and w.alive  # the refused ones changed nothing
    gate.touch()
    assert coord.wait(60) == 0
    assert w.wait(30) == 0
    assert values(jugfile, ["total"])["total"] == EXPECTED_TOTAL
    assert TOKEN.decode() not in caplog.text


def test_tls_client_certificates(engine: Engine, tmp_path: Path, certs: SimpleNamespace,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that requires client certificates signed by its CA (in this process)."""
    jugfile, gate = steady_inproc(tmp_path, monkeypatch)
    coord = engine.make_coordinator(
        jugfile, ssl=tls_context(True, certs.server_pem, certs.server_key, certs.ca_pem))
    port = coord.port
    mine = tls_context(False, certs.client_pem, certs.client_key, certs.ca_pem)
    w = engine.run_worker(port, ssl=mine)
    wait_for(lambda: status_of(port, ctx=mine)["totals"]["done"] == N_STEPS, 60,
             what="the steps to be done")
    # without a client certificate the coordinator will not talk
    line = tls_worker_error(port, tls_context(False, None, None, certs.ca_pem))
    assert "certificate" in line, line
    assert coord.rc is None and w.alive
    gate.touch()
    assert coord.wait(60) == 0
    assert w.wait(30) == 0
    assert values(jugfile, ["total"])["total"] == EXPECTED_TOTAL


def sockets_to(port: int) -> list[str]:
    """This process's open sockets whose far end is 127.0.0.1:``port`` (the client ends of
    connections to a coordinator served here), from /proc."""
    mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}
    found = []
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = row.split()
        if cols[2] == f"0100007F:{port:04X}" and f"socket:[{cols[9]}]" in mine:
            found.append(cols[1])
    return found


async def test_status_over_tls_closes_its_connection_before_it_returns(
        engine: Engine, tmp_path: Path, certs: SimpleNamespace,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A question over TLS (status here; invalidate, the watch and ``ajug.connect`` alike) waits
    for the TLS shutdown: it left the socket open, one a question, in a long Python session."""
    jugfile, _ = steady_inproc(tmp_path, monkeypatch)
    coord = engine.make_coordinator(
        jugfile, ssl=tls_context(True, certs.server_pem, certs.server_key, None))
    ctx = tls_context(False, None, None, certs.ca_pem)
    for _ in range(3):
        st = await query_status("127.0.0.1", coord.port, TOKEN, ctx)
        assert st["tasks"] == N_STEPS + 1
        assert sockets_to(coord.port) == []  # this loop still runs: nothing left in it


# --- read-only access ------------------------------------------------------------------------


async def read_only_checks(port: int, full: bytes, ro: bytes) -> dict[str, Any]:
    conn = await open_connection(
        "127.0.0.1", port, token=ro, role="client", access="read", name="ro-test"
    )
    try:
        assert conn.peer is not None and conn.peer.access == "read"
        refused = [
            m.lease(1, want=1),
            m.renew(2, [[KEY, 1]]),
            m.resume(3, [KEY]),
            m.shutdown(4),
            m.invalidate(5, [KEY]),
        ]
        for msg in refused:  # each is refused on its own; the connection stays open
            conn.send(msg)
            await conn.drain()
            reply = await asyncio.wait_for(conn.recv(), 10)
            assert (reply["op"], reply["code"], reply["re"]) == ("error", "access", msg["id"])
            assert ro.decode() not in reply["msg"] and full.decode() not in reply["msg"]
            # what is wrong, in words: a worker's request, or one that needs the full token
            says = "is for workers" if msg["op"] in ("lease", "renew", "resume") else (
                f"{msg['op']} needs the full token; this connection has read-only access")
            assert says in reply["msg"], reply
        conn.send(m.status(6, True))
        await conn.drain()
        reply = await asyncio.wait_for(conn.recv(), 10)
        assert (reply["op"], reply["re"]) == ("status", 6)
    finally:
        await conn.aclose()
    # the read token cannot pass for the full one, and the full token is not the read one
    for token, access in ((ro, "full"), (full, "read")):
        with pytest.raises(AuthError):
            await open_connection("127.0.0.1", port, token=token, role="client", access=access)
    # a worker must hold the full token: asking to work with read access fails at hello
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            encode_frame(
                m.hello(
                    role="worker",
                    access="read",
                    nonce=os.urandom(16),
                    host="h",
                    pid=1,
                    name="ro-worker",
                )
            )
        )
        dec = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
        frames: list[dict[str, Any]] = []
        while data := await asyncio.wait_for(reader.read(1 << 16), 10):
            frames += dec.feed(data)
        assert [(f["op"], f["code"]) for f in frames] == [("error", "access")], frames
    finally:
        writer.close()
        await writer.wait_closed()
    return reply["status"]


def test_read_only_token(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ajug")
    jugfile, gate = steady_inproc(tmp_path, monkeypatch)
    ro = "read-" + secrets.token_hex(8)
    coord = engine.make_coordinator(jugfile, read_token=ro.encode())
    port = coord.port
    w = engine.run_worker(port)
    wait_for(
        lambda: status_of(port)["totals"]["done"] == N_STEPS, 60, what="the steps to be done"
    )
    # status with only the read-only token, and with the full token
    assert status_of(port, ro.encode(), access="read")["totals"]["done"] == N_STEPS
    assert status_of(port)["totals"]["done"] == N_STEPS
    st = asyncio.run(read_only_checks(port, TOKEN, ro.encode()))
    assert st["totals"]["done"] == N_STEPS and st["totals"]["running"] == 1  # nothing changed
    assert coord.rc is None and w.alive
    # nor can a worker run on the read-only token
    with pytest.raises(AuthError) as e:
        Worker(WorkerOptions(host="127.0.0.1", port=port, token=ro.encode(),
                             connect_timeout_s=3)).run()
    line = str(e.value)
    assert "did not prove it has the token" in line and ro not in line, line
    gate.touch()
    assert coord.wait(60) == 0
    assert w.wait(30) == 0
    assert values(jugfile, ["total"])["total"] == EXPECTED_TOTAL
    assert TOKEN.decode() not in caplog.text and ro not in caplog.text


def test_serve_read_token_file_and_status_on_ajug_read_token(procs: Procs, tmp_path: Path) -> None:
    """The commands' side of read-only access (the access itself: test_read_only_token):
    `ajug serve --read-token-file` takes it, `ajug status` uses AJUG_READ_TOKEN alone."""
    jugfile, _ = steady(tmp_path)
    full = "full-" + secrets.token_hex(8)
    ro = "read-" + secrets.token_hex(8)
    ro_file = tmp_path / "read.token"
    ro_file.write_text(ro + "\n")
    coord, port = start_serve(procs, jugfile, "--read-token-file", str(ro_file), env=run_env(full))
    assert live_status(port, run_env(None, AJUG_READ_TOKEN=ro))["tasks"] == N_STEPS + 1
    wrong = "read-" + secrets.token_hex(8)
    line = one_line_error(ajug("status", f"127.0.0.1:{port}",
                               env=run_env(None, AJUG_READ_TOKEN=wrong)))
    assert "our read-only token does not match" in line and "AJUG_READ_TOKEN" in line, line
    assert wrong not in line and ro not in line
    coord.terminate()
    coord.wait(30)
    log = read_log(coord)
    assert full not in log and ro not in log and wrong not in log
