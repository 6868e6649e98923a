"""Bad input on the wire, against a real `ajug serve` while its workers run (protocol/SPEC.md).

One coordinator (tests/jugfiles/steady.py, whose reduce waits for a gate file) and two real
`ajug work` processes run for the whole module. Every test attacks the coordinator's port from
this process: random bytes, truncated frames, oversized length prefixes, wrong field types,
unknown ops, foreign protocol versions, wrong tokens, replayed handshakes, silent and slow
clients, clients that never read, a thousand connections at once. Each attack must get the
`error` frame that the spec names (where one can be sent) and have its connection closed, and
the coordinator must still answer afterwards. The last test opens the gate: the run completes
with the right result and without a single lease lost to the attacks.
"""

from __future__ import annotations

import asyncio
import resource
import secrets
import select
import shutil
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from procs import Procs, env, offline_status, read_log, values, wait_for

from ajug.errors import AjugError, AuthError, ProtocolError
from ajug.protocol import messages as m
from ajug.protocol.auth import ClientHandshake, ServerHandshake, client_proof, server_proof
from ajug.protocol.framing import (
    HANDSHAKE_MAX_FRAME_BYTES,
    MAX_FRAME_BYTES,
    FrameDecoder,
    frame_body,
)
from ajug.protocol.mac import FrameMac

HERE = Path(__file__).parent
TOKEN_TEXT = "fuzz-" + secrets.token_hex(12)
TOKEN = TOKEN_TEXT.encode()
WRONG = b"not-" + TOKEN
HANDSHAKE_TIMEOUT_S = 2.0
LEASE_TTL_S = 6.0  # renewed every 2 s: a coordinator stalled by an attack would lose leases
N_STEPS = 40
EXPECTED_TOTAL = sum(x * x for x in range(N_STEPS))
#: How much the coordinator's resident memory may grow during one attack (it grows by a few
#: MiB; a coordinator that keeps reading from a client that never reads grows by 100+ MiB).
RSS_GROWTH_LIMIT_KIB = 32 * 1024
KEY = "0123456789abcdef0123456789abcdef01234567"
PREFIX = struct.Struct(">I")


# --- the run under attack ------------------------------------------------------------------


@dataclass
class Run:
    coord: Any
    port: int
    workers: list[Any]
    gate: Path
    jugfile: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.coord.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def assert_serving(self) -> dict[str, Any]:
        """The coordinator is alive and answers a fresh authenticated status request."""
        assert self.coord.poll() is None, read_log(self.coord)
        with Wire(self.port) as w:
            w.handshake(role="client")
            w.send(m.status(1))
            reply = w.recv()
        assert reply is not None and reply["op"] == "status" and reply["re"] == 1, reply
        return reply["status"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < want:  # inherited by the coordinator
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    tmp = tmp_path_factory.mktemp("fuzz")
    jugfile = tmp / "steady.py"
    shutil.copy(HERE / "jugfiles" / "steady.py", jugfile)
    gate = tmp / "gate"
    e = env(AJUG_TOKEN=TOKEN_TEXT, AJUG_TEST_GATE=str(gate), AJUG_TEST_STEADY_S="0.2")
    procs = Procs(tmp)
    try:
        coord, port = procs.serve(
            jugfile,
            "--handshake-timeout",
            str(HANDSHAKE_TIMEOUT_S),
            "--lease-ttl",
            str(LEASE_TTL_S),
            env=e,
        )
        workers = [procs.work(port, "--name", f"w{i}", env=e) for i in range(2)]
        yield Run(coord, port, workers, gate, jugfile)
    finally:
        gate.touch()
        procs.stop_all()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- a raw client --------------------------------------------------------------------------


def frame(msg: Any) -> bytes:
    """A frame for any msgpack value, valid message or not."""
    body = msgpack.packb(msg, use_bin_type=True)
    return PREFIX.pack(len(body)) + body


class Wire:
    """A raw TCP client of the coordinator: sends anything, decodes what comes back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.dec = FrameDecoder(MAX_FRAME_BYTES)
        self.frames: deque[dict[str, Any]] = deque()
        self.eof = False
        self.mac: FrameMac | None = None  # after the handshake: seals what we send

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes | dict[str, Any]) -> None:
        """Bytes as they are; a message as a frame, sealed once the handshake is done."""
        self.sock.sendall(data if isinstance(data, bytes) else self.frame(data))

    def frame(self, msg: Any) -> bytes:
        return self.sealed(msgpack.packb(msg, use_bin_type=True))

    def sealed(self, body: bytes) -> bytes:
        """A frame holding ``body``, with the next MAC once the handshake is done."""
        return frame_body(body, max_frame_bytes=2**32 - 1, mac=self.mac)

    def end(self) -> None:
        """Half-close: the coordinator sees EOF, and can still answer."""
        self.sock.shutdown(socket.SHUT_WR)

    def recv(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The next frame, or None once the coordinator has closed the connection."""
        deadline = time.monotonic() + timeout_s
        while not self.frames:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame and no close within {timeout_s} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            else:
                self.frames.extend(self.dec.feed(data))
        return self.frames.popleft()

    def until_closed(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Every frame up to the coordinator's close (fails if it does not close in time)."""
        out = []
        while (f := self.recv(timeout_s)) is not None:
            out.append(f)
        return out

    def handshake(
        self, role: str = "worker", access: str = "full", token: bytes = TOKEN
    ) -> dict[str, Any]:
        hs = ClientHandshake(token, role, access, host="fuzz", pid=1, name="fuzz")
        self.send(hs.hello())
        while not hs.done:
            msg = self.recv()
            assert msg is not None, "closed during the handshake"
            for reply in hs.receive(msg):
                self.send(reply)
            if hs.keys is not None and self.mac is None:  # auth is sent: the rest is sealed
                self.mac = FrameMac(hs.keys.c2s)
                self.dec.mac = FrameMac(hs.keys.s2c)
        return hs.info


def check_error(msg: dict[str, Any] | None, code: str, re: int | None = None) -> None:
    assert msg is not None, f"expected error {code!r}, the connection closed without one"
    assert msg["op"] == "error", msg
    assert (msg["code"], msg["re"]) == (code, re), msg
    assert type(msg["msg"]) is str and 0 < len(msg["msg"]) <= 1000, msg
    assert TOKEN_TEXT not in msg["msg"]


def expect_closing_error(w: Wire, code: str, re: int | None = None) -> None:
    """The spec's answer to a bad frame: exactly one error frame, then the close."""
    frames = w.until_closed()
    assert len(frames) == 1, frames
    check_error(frames[0], code, re)


def hello_msg(**over: Any) -> dict[str, Any]:
    hello = m.hello(role="worker", access="full", nonce=bytes(16), host="h", pid=1, name="n")
    hello.update(over)
    return hello


# --- random bytes --------------------------------------------------------------------------


def expected_answer(data: bytes) -> list[tuple[Any, ...]]:
    """What the coordinator must send for ``data`` followed by EOF, by the reference codec."""
    dec = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
    hs = ServerHandshake(TOKEN)
    try:
        frames = dec.feed(data)
    except ProtocolError as exc:
        return [("error", m.error_code(exc), None)]
    out: list[tuple[Any, ...]] = []
    for f in frames:
        try:
            replies = hs.receive(f)
        except AjugError as exc:
            if f.get("op") == "error":
                return out  # nobody answers an error with an error
            return [*out, ("error", m.error_code(exc), m.request_id(f))]
        out += [(r["op"],) for r in replies]
    if dec.failed:
        try:
            dec.feed(b"")
        except ProtocolError as exc:
            out.append(("error", m.error_code(exc), None))
    return out


def as_answer(msg: dict[str, Any]) -> tuple[Any, ...]:
    if msg["op"] == "error":
        check_error(msg, msg["code"], msg["re"])
        return ("error", msg["code"], msg["re"])
    return (msg["op"],)


ALL_OPS = sorted({*m.SCHEMAS["client"], *m.SCHEMAS["server"], "", "frob", "HELLO"})
plain = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40)
)
anything = st.recursive(
    plain,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
# Any op (known, a server's, unknown), with fields of about the right type or anything.
messages = st.fixed_dictionaries(
    {"op": st.sampled_from(ALL_OPS)},
    optional={
        "id": st.integers(0, 2**64 - 1) | anything,
        "versions": st.lists(st.integers(0, 3), max_size=3) | anything,
        "role": st.sampled_from(["worker", "client", "admin"]) | anything,
        "access": st.sampled_from(["full", "read", "root"]) | anything,
        "nonce": st.binary(min_size=16, max_size=16) | anything,
        "host": st.text(max_size=8) | anything,
        "pid": st.integers(-(2**63), 2**63 - 1) | anything,
        "name": st.text(max_size=8) | anything,
        "proof": st.binary(min_size=32, max_size=32) | anything,
        "extra": anything,
    },
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten, else anything at all."""
    return st.integers(0, 9).flatmap(lambda i: anything if i == 9 else valid)


# Handshake messages that are valid more often than not, to reach version, access and auth.
hellos = st.fixed_dictionaries(
    {
        "op": st.just("hello"),
        "versions": mostly(st.just([1]) | st.lists(st.integers(0, 3), max_size=3)),
        "role": mostly(st.sampled_from(["worker", "client"])),
        "access": mostly(st.sampled_from(["full", "read"])),
        "nonce": mostly(st.binary(min_size=16, max_size=16)),
        "host": mostly(st.text(max_size=8)),
        "pid": mostly(st.integers(-(2**63), 2**63 - 1)),
        "name": mostly(st.text(max_size=8)),
    }
)
auths = st.fixed_dictionaries(
    {"op": st.just("auth"), "proof": mostly(st.binary(min_size=32, max_size=32))}
)


@st.composite
def chunks(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["raw", "framed-bytes", "framed-msgpack", "lying-prefix", *["hello"] * 3, "auth"]
        )
    )
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "framed-bytes":
        body = draw(st.binary(max_size=200))
        return PREFIX.pack(len(body)) + body
    if kind in ("hello", "auth"):
        return frame(draw(hellos if kind == "hello" else auths))
    body = msgpack.packb(draw(messages | anything), use_bin_type=True)
    if kind == "lying-prefix":
        n = max(0, len(body) + draw(st.integers(-8, 8)))
        return PREFIX.pack(n) + body
    return PREFIX.pack(len(body)) + body


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.lists(chunks(), min_size=1, max_size=3).map(b"".join))
def test_random_bytes_get_the_spec_answer_and_a_close(run: Run, data: bytes) -> None:
    with Wire(run.port) as w:
        try:
            w.send(data)
            w.end()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the coordinator had already refused an earlier part of it
        got = [as_answer(f) for f in w.until_closed()]
    expected = expected_answer(data)
    event(" then ".join(a[0] if a[0] != "error" else f"error {a[1]}" for a in expected) or "close")
    assert got == expected


# --- malformed frames ----------------------------------------------------------------------


def test_truncated_frames_are_dropped_at_eof(run: Run) -> None:
    hello = m.hello(role="client", access="full", nonce=bytes(16), host="h", pid=1, name="")
    whole = frame(hello)
    for cut in range(1, len(whole)):
        with Wire(run.port) as w:
            w.send(whole[:cut])
            w.end()
            assert w.until_closed() == [], cut
    status = frame(m.status(5, True))
    for cut in (1, 3, 4, 5, len(status) - 1):
        with Wire(run.port) as w:
            w.handshake()
            w.send(status[:cut])
            w.end()
            assert w.until_closed() == [], cut
    # a prefix shorter than the value inside: the body is not one msgpack value
    with Wire(run.port) as w:
        body = msgpack.packb(hello)
        w.send(PREFIX.pack(10) + body)
        expect_closing_error(w, "decode")
    run.assert_serving()


UNDECODABLE = {
    "empty body": b"",
    "reserved byte": b"\xc1",
    "array at the top": msgpack.packb([1, 2]),
    "str at the top": msgpack.packb("hello"),
    "trailing bytes": msgpack.packb({"op": "status"}) + b"\x00",
    "int map key": msgpack.packb({1: 2}),
    "duplicate key": b"\x82\xa2op\xa1a\xa2op\xa1b",
    "bad utf-8": b"\x81\xa2op\xa2\xff\xfe",
    "ext value": b"\x81\xa2op\xd4\x01\x00",
    "timestamp": b"\x81\xa2op\xd6\xff\x00\x00\x00\x00",
    "4G-item array": b"\x81\xa2op\xdd\xff\xff\xff\xff",
    "4G-byte bin": b"\x81\xa2op\xc6\xff\xff\xff\xff",
    "2000 levels": b"\x81\xa2op" + b"\x91" * 2000 + b"\xc0",
}


@pytest.mark.parametrize("after_handshake", [False, True], ids=["handshake", "session"])
def test_undecodable_bodies_get_decode_errors(run: Run, after_handshake: bool) -> None:
    for name, body in UNDECODABLE.items():
        with Wire(run.port) as w:
            if after_handshake:
                w.handshake()
            w.send(w.sealed(body))
            try:
                expect_closing_error(w, "decode")
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None
    run.assert_serving()


def test_length_prefix_over_the_limit_is_refused_without_allocating(run: Run) -> None:
    rss0 = run.rss_kib()
    cases = [
        (False, 2**31),
        (False, 2**32 - 1),
        (False, HANDSHAKE_MAX_FRAME_BYTES + 1),
        (True, 2**31),
        (True, MAX_FRAME_BYTES + 1),
    ]
    for _ in range(10):
        for after_handshake, n in cases:
            with Wire(run.port) as w:
                if after_handshake:
                    w.handshake()
                t0 = time.monotonic()
                w.send(PREFIX.pack(n))
                expect_closing_error(w, "frame")
                assert time.monotonic() - t0 < 2.0, "the oversize frame was not refused at once"
    # a prefix over the limit followed by its (first) bytes: still refused, nothing buffered
    with Wire(run.port) as w:
        w.handshake()
        w.send(PREFIX.pack(2**31) + b"\x00" * (1 << 16))
        frames = w.until_closed()  # a reset may eat the error frame: the close is what counts
        assert all(f["code"] == "frame" for f in frames), frames
    assert run.rss_kib() - rss0 < RSS_GROWTH_LIMIT_KIB
    run.assert_serving()


# --- wrong field types ---------------------------------------------------------------------

U64 = 2**64 - 1
NOT_UINT = [-1, 1.0, True, "1", b"1", None, [1], {"a": 1}]
NOT_BOOL = [0, 1, "true", None, b"", [], {}]
NOT_LIST = [None, 0, "x", b"x", {"a": 1}, True]
BAD_KEYS = [[KEY.upper()], [KEY[:-1]], [KEY + "0"], ["g" * 40], [1], [None], [b"0" * 40], [KEY, 2]]


def deep(levels: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _ in range(levels):
        d = {"d": d}
    return d


ERR = m.task_error("ValueError", "boom", "tb", "exception")
VALID: dict[str, dict[str, Any]] = {
    "lease": m.lease(11, want=1, wait_ms=0, done=[[KEY, 1, {"rt": 0.1}]], failed=[[KEY, 2, ERR]]),
    "renew": m.renew(12, [[KEY, 1]]),
    "resume": m.resume(13, [KEY]),
    "status": m.status(14, False),
    "invalidate": m.invalidate(15, [KEY]),
    "shutdown": m.shutdown(16),
    "hello": hello_msg(),
    "auth": m.auth(proof=bytes(32)),
}
LIST_ITEMS: dict[tuple[str, str], list[Any]] = {
    ("lease", "done"): [
        [KEY, 1],
        [KEY, 1, {}, 4],
        ["x", 1, {}],
        [KEY, -1, {}],
        [KEY, 1.5, {}],
        [KEY, 1, "meta"],
        [KEY, 1, None],
        [KEY, 1, deep(40)],
        {"key": KEY, "tok": 1, "meta": {}},
        KEY,
    ],
    ("lease", "failed"): [
        [KEY, 1, {"type": "E", "msg": "m", "tb": "t"}],
        [KEY, 1, {**ERR, "type": 1}],
        [KEY, 1, {**ERR, "tb": None}],
        [KEY, 1, None],
        [KEY, 1, []],
        [KEY, None, ERR],
        [KEY],
    ],
    ("renew", "leases"): [[KEY], [KEY, "1"], ["x", 1], KEY, [KEY, 1, 2], [KEY, -1], [None, 1]],
}


def mutations(op: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every way to break one field of a valid ``op`` message (each result is invalid)."""
    base = VALID[op]
    for field_name in base:
        if field_name == "op":
            continue
        value = base[field_name]
        missing = dict(base)
        del missing[field_name]
        yield f"{field_name} missing", missing
        if type(value) is int:
            bad: list[Any] = list(NOT_UINT)
            if field_name == "pid":
                bad = [2**63, 1.0, "1", None, True]
        elif type(value) is bool:
            bad = NOT_BOOL
        elif type(value) is bytes:
            bad = [value[:-1], value + b"\x00", value.hex(), None, 0, list(value)]
        elif type(value) is str:
            bad = [None, 1, value.encode(), [value], {"v": value}]
            if field_name in ("role", "access"):
                bad += ["admin", value.upper(), ""]
        else:  # a list
            bad = list(NOT_LIST)
            if op in ("resume", "invalidate"):
                bad += BAD_KEYS
            if field_name == "versions":
                bad += [["1"], [-1], [None], [1.0], [True]]
            bad += [[item] for item in LIST_ITEMS.get((op, field_name), [])]
        for v in bad:
            yield f"{field_name}={v!r:.60}", {**base, field_name: v}


@pytest.mark.parametrize("op", list(VALID))
def test_wrong_types_in_every_field_get_field_errors(run: Run, op: str) -> None:
    failures = []
    for what, msg in mutations(op):
        with Wire(run.port) as w:
            if op == "auth":
                w.send(hello_msg(nonce=secrets.token_bytes(16)))
                assert (w.recv() or {}).get("op") == "challenge"
            elif op != "hello":
                w.handshake()
            w.send(msg)
            try:
                expect_closing_error(w, "field", m.request_id(msg))
            except AssertionError as exc:
                failures.append(f"{op} {what}: {exc}")
    assert not failures, "\n".join(failures)
    run.assert_serving()


# --- ops that do not belong ----------------------------------------------------------------


def test_unknown_and_misplaced_ops_get_op_errors(run: Run) -> None:
    after_handshake: list[tuple[dict[str, Any], str, int | None]] = [
        ({"op": "frobnicate", "id": 7}, "op", 7),
        ({"op": "STATUS", "id": 8, "detail": False}, "op", 8),
        ({"op": "x" * 5000, "id": 9}, "op", 9),
        (m.leases(1, state="idle"), "op", None),
        ({**m.welcome(session="s", access="full", info={}), "id": 3}, "op", 3),
        (m.challenge(version=1, nonce=bytes(16), proof=bytes(32)), "op", None),
        (m.ok(4), "op", None),
        (hello_msg(), "op", None),
        (m.auth(proof=bytes(32)), "op", None),
        ({"op": 5, "id": 10}, "field", 10),
        ({"op": None}, "field", None),
        ({"id": 11}, "field", 11),
    ]
    for msg, code, re in after_handshake:
        with Wire(run.port) as w:
            w.handshake()
            w.send(msg)
            expect_closing_error(w, code, re)
    # during the handshake: anything but hello first, or hello instead of auth
    for msg, re in [
        (m.status(1), 1),
        (m.auth(proof=bytes(32)), None),
        (m.bye(), None),
        (m.lease(2, want=1), 2),
        ({"op": "frob", "id": 3}, 3),
    ]:
        with Wire(run.port) as w:
            w.send(msg)
            expect_closing_error(w, "op", re)
    with Wire(run.port) as w:
        w.send(hello_msg())
        assert (w.recv() or {}).get("op") == "challenge"
        w.send(hello_msg())
        expect_closing_error(w, "op")
    # an error from the peer is never answered: closed after a closing code...
    with Wire(run.port) as w:
        w.send(m.error(None, "decode", "bad"))
        assert w.until_closed() == []
    with Wire(run.port) as w:
        w.handshake()
        w.send(m.error(None, "field", "bad"))
        assert w.until_closed() == []
    # ...and logged otherwise, with the connection still usable
    with Wire(run.port) as w:
        w.handshake()
        w.send(m.error(None, "access", "what"))
        w.send(m.status(5))
        reply = w.recv()
        assert reply is not None and (reply["op"], reply["re"]) == ("status", 5)
    run.assert_serving()


# --- handshake attacks ---------------------------------------------------------------------


def test_protocol_versions_without_a_common_one_are_refused(run: Run) -> None:
    # version 1 (no frame MACs) too: a relay must not be able to talk both sides down to it
    for versions in ([0], [99], [], [0, 1, 99], [1], [U64]):
        with Wire(run.port) as w:
            w.send(hello_msg(versions=versions))
            expect_closing_error(w, "version")
    # a future client that also speaks 2 gets 2
    with Wire(run.port) as w:
        hs = ClientHandshake(TOKEN, "client", versions=(1, 2, 99))
        w.send(hs.hello())
        challenge = w.recv()
        assert challenge is not None and challenge["version"] == 2
        for reply in hs.receive(challenge):
            w.send(reply)
        assert hs.keys is not None
        w.dec.mac = FrameMac(hs.keys.s2c)
        welcome = w.recv()
        assert welcome is not None and welcome["op"] == "welcome"
    run.assert_serving()


def test_wrong_token_is_refused_both_ways(run: Run) -> None:
    for proof_of in (WRONG, b"", None):
        with Wire(run.port) as w:
            hs = ClientHandshake(WRONG, "worker")
            w.send(hs.hello())
            challenge = w.recv()
            assert challenge is not None and challenge["op"] == "challenge"
            # the coordinator proved the real token, which a wrong-token client cannot confirm
            with pytest.raises(AuthError, match="did not prove"):
                hs.receive(challenge)
            assert challenge["proof"] == server_proof(TOKEN, hs.nonce, challenge["nonce"])
            proof = (
                bytes(32)
                if proof_of is None
                else client_proof(proof_of, challenge["nonce"], hs.nonce)
            )
            w.send(m.auth(proof=proof))
            frames = w.until_closed()
        assert len(frames) == 1
        check_error(frames[0], "auth")
        assert WRONG.decode() not in frames[0]["msg"]
    run.assert_serving()


def test_replayed_handshake_is_refused(run: Run) -> None:
    hs = ClientHandshake(TOKEN, "client")
    hello = frame(hs.hello())
    with Wire(run.port) as w:
        w.send(hello)
        first = w.recv()
        assert first is not None
        auth = frame(hs.receive(first)[0])
        w.send(auth)
        assert hs.keys is not None
        w.dec.mac = FrameMac(hs.keys.s2c)
        assert (w.recv() or {}).get("op") == "welcome"
    # the same bytes again, step by step and all at once: a fresh server nonce each time
    with Wire(run.port) as w:
        w.send(hello)
        again = w.recv()
        assert again is not None and again["op"] == "challenge"
        assert again["nonce"] != first["nonce"]
        w.send(auth)
        expect_closing_error(w, "auth")
    with Wire(run.port) as w:
        w.send(hello + auth)
        frames = w.until_closed()
        assert [f["op"] for f in frames] == ["challenge", "error"]
        check_error(frames[1], "auth")
    run.assert_serving()


def _slow_hello(port: int) -> list[dict[str, Any]]:
    """Send a hello one byte at a time, slower than the handshake timeout allows."""
    data = frame(hello_msg())
    with Wire(port) as w:
        for i in range(len(data)):
            r, _, _ = select.select([w.sock], [], [], 0.25)
            if r:
                break
            try:
                w.send(data[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
        return w.until_closed()


def _silent(port: int, first: bytes) -> tuple[list[dict[str, Any]], float]:
    with Wire(port) as w:
        t0 = time.monotonic()
        if first:
            w.send(first)
        frames = w.until_closed(HANDSHAKE_TIMEOUT_S + 10)
        return frames, time.monotonic() - t0


def test_silent_and_slow_clients_time_out(run: Run) -> None:
    hello = frame(hello_msg())
    starts = {
        "nothing": b"",
        "two prefix bytes": hello[:2],
        "half a hello": hello[:20],
        "hello, no auth": hello,
    }
    with ThreadPoolExecutor(len(starts) + 1) as pool:
        slow = pool.submit(_slow_hello, run.port)
        futures = {k: pool.submit(_silent, run.port, v) for k, v in starts.items()}
        for name, fut in futures.items():
            frames, elapsed = fut.result(timeout=30)
            assert HANDSHAKE_TIMEOUT_S - 0.3 < elapsed < HANDSHAKE_TIMEOUT_S + 5, (name, elapsed)
            if name == "hello, no auth":
                assert frames[0]["op"] == "challenge", frames
                frames = frames[1:]
            assert len(frames) == 1, (name, frames)
            check_error(frames[0], "timeout")
        frames = slow.result(timeout=30)
        assert len(frames) == 1
        check_error(frames[0], "timeout")
    run.assert_serving()


# --- clients that never read ---------------------------------------------------------------


def _flood(port: int, role: str, access: str, make: Any, seconds: float = 6.0) -> tuple[Wire, bool]:
    """Pipeline requests without reading a reply; True if the coordinator stopped reading."""
    w = Wire(port)
    w.handshake(role=role, access=access)
    w.sock.settimeout(1.0)
    deadline = time.monotonic() + seconds
    first = 1
    while time.monotonic() < deadline:
        # fresh frames each time: the same bytes again would be replays (and refused as such)
        batch = b"".join(w.frame(make(i)) for i in range(first, first + 200))
        first += 200
        try:
            w.sock.sendall(batch)
        except TimeoutError:
            return w, True  # blocked for a second: the coordinator no longer reads us
    return w, False


@pytest.mark.parametrize(
    "who",
    ["status-client", "lease-worker"],
)
def test_a_client_that_never_reads_is_held_back(run: Run, who: str) -> None:
    rss0 = run.rss_kib()
    if who == "status-client":
        w, blocked = _flood(run.port, "client", "read", lambda i: m.status(i, True))
    else:
        w, blocked = _flood(run.port, "worker", "full", lambda i: m.lease(i, want=0))
    try:
        assert blocked, "the coordinator kept reading requests whose replies nobody reads"
        grown = run.rss_kib() - rss0
        assert grown < RSS_GROWTH_LIMIT_KIB, f"coordinator RSS grew by {grown} KiB"
        # everybody else is still served while the flooder sits there
        t0 = time.monotonic()
        run.assert_serving()
        assert time.monotonic() - t0 < 2.0
    finally:
        w.sock.close()
    time.sleep(0.5)
    assert run.rss_kib() - rss0 < RSS_GROWTH_LIMIT_KIB
    run.assert_serving()


# --- many connections ----------------------------------------------------------------------

N_CONNECTIONS = 1000


async def _storm(port: int) -> list[str]:
    hello = frame(hello_msg(role="client", nonce=bytes(16)))

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    opened = await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(N_CONNECTIONS)), return_exceptions=True), 60
    )
    streams = [s for s in opened if not isinstance(s, BaseException)]
    failed = [repr(s) for s in opened if isinstance(s, BaseException)]

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(hello)
        dec = FrameDecoder(HANDSHAKE_MAX_FRAME_BYTES)
        while True:
            data = await reader.read(1 << 16)
            if not data:
                return "closed"
            for f in dec.feed(data):
                return f["op"] if f["op"] != "error" else f"error {f['code']}"

    try:
        answers = await asyncio.wait_for(
            asyncio.gather(*(greet(r, w) for r, w in streams), return_exceptions=True), 60
        )
    finally:
        for _, w in streams:
            w.close()
        await asyncio.gather(*(w.wait_closed() for _, w in streams), return_exceptions=True)
    return failed + [a if isinstance(a, str) else repr(a) for a in answers]


def test_a_thousand_connections_at_once(run: Run) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < N_CONNECTIONS + 200:
        pytest.skip(f"RLIMIT_NOFILE is {soft}: too low for {N_CONNECTIONS} connections")
    rss0 = run.rss_kib()
    answers = asyncio.run(_storm(run.port))
    assert len(answers) == N_CONNECTIONS
    # each got its challenge, or (on a slow machine) the handshake timeout
    odd = [a for a in answers if a not in ("challenge", "error timeout")]
    assert not odd, odd[:10]
    assert answers.count("challenge") >= N_CONNECTIONS // 2
    assert run.rss_kib() - rss0 < RSS_GROWTH_LIMIT_KIB
    run.assert_serving()


# --- and the run goes on -------------------------------------------------------------------


def test_the_run_completes_after_the_attacks(run: Run) -> None:
    wait_for(
        lambda: run.assert_serving()["totals"]["done"] == N_STEPS, 60, what="the steps to be done"
    )
    st = run.assert_serving()
    assert st["reclaimed"] == 0, "a worker lost a lease while the coordinator was attacked"
    pids = {w["pid"] for w in st["workers"]}
    assert {p.pid for p in run.workers} <= pids, st["workers"]
    run.gate.touch()
    assert run.coord.wait(60) == 0, read_log(run.coord)
    for w in run.workers:
        assert w.wait(30) == 0, read_log(w)
    assert values(run.jugfile, ["total"])["total"] == EXPECTED_TOTAL
    assert offline_status(run.jugfile)["totals"]["done"] == N_STEPS + 1
    log = read_log(run.coord)
    for bad in ("Traceback", "never retrieved", "Unhandled", TOKEN_TEXT):
        assert bad not in log, bad
