#!/usr/bin/env python3
"""Regenerate the golden frames of protocol version 2 (deterministic: same bytes every run).

    python protocol/vectors/generate.py            # rewrite the files next to this script
    python protocol/vectors/generate.py --check    # exit 1 if a checked-in file differs
    python protocol/vectors/generate.py --out DIR  # write elsewhere

Writes one ``<name>.bin`` per vector (the whole frame as it is on the wire: 4-byte length,
msgpack, and after the handshake the frame's MAC), plus ``vectors.json`` (machine-readable index;
a ``bin`` value is written as ``{"$bin": "<hex>"}``) and ``vectors.md`` (the same for people).
The vectors form two connections in order, a worker's (full token) and a status client's (read
token), so that each sealed frame has its sequence number; ``refuse-*.bin`` are frames that a
receiver at a given point of the worker's connection MUST refuse. Messages are built with
``ajug.protocol.messages``, proofs with ``ajug.protocol.auth``, keys and MACs with
``ajug.protocol.mac``; the ``args`` and ``code`` blobs are fixed literals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ajug.protocol import messages as m  # noqa: E402
from ajug.protocol.auth import PROTOCOL_VERSIONS, client_proof, server_proof  # noqa: E402
from ajug.protocol.framing import encode_frame  # noqa: E402
from ajug.protocol.mac import TAG_BYTES, FrameMac, SessionKeys, session_keys  # noqa: E402

VERSION = PROTOCOL_VERSIONS[-1]

#: The test tokens: ASCII text, used as HMAC keys as they are (its UTF-8 bytes).
FULL_TOKEN = b"ajug-test-token"
READ_TOKEN = b"ajug-read-token"
CLIENT_NONCE = bytes(range(0x00, 0x10))  # 000102...0f
SERVER_NONCE = bytes(range(0xF0, 0x100))  # f0f1...ff
CLIENT_NONCE_2 = bytes(range(0x20, 0x30))  # the read-only client's hello
SERVER_NONCE_2 = bytes(range(0xA0, 0xB0))
#: The two connections of the vectors: token, nonces, role and access (what the keys hang on).
CONNECTIONS = {
    "full": (FULL_TOKEN, CLIENT_NONCE, SERVER_NONCE, "worker", "full"),
    "read": (READ_TOKEN, CLIENT_NONCE_2, SERVER_NONCE_2, "client", "read"),
}
#: A token that is not the coordinator's: what a relay that forwarded the handshake would use.
RELAY_TOKEN = b"not-the-token"


def keys_of(conn: str) -> SessionKeys:
    token, cn, sn, role, access = CONNECTIONS[conn]
    return session_keys(token, cn, sn, role, access)


def _key(n: int) -> str:
    return hashlib.sha1(f"ajug vector task {n}".encode()).hexdigest()


K1, K2, K3, K4 = _key(1), _key(2), _key(3), _key(4)
#: pickle protocol 5 of the tuple (<result of task K1>, 2): the result is a persistent id = K1.
ARGS = bytes.fromhex("80059531000000000000008c28" + K1.encode().hex() + "94514b0286942e")
#: pickle protocol 5 of (21,): a task with one literal argument.
ARGS_LITERAL = bytes.fromhex("80054b1585942e")
#: Stand-in for a cloudpickled function (real ones are a few hundred bytes): pickle of None.
CODE = bytes.fromhex("80054e2e")
SRC_HASH = hashlib.sha1(b"def double(x):\n    return 2 * x\n").hexdigest()

ERR = m.task_error(
    "ZeroDivisionError",
    "division by zero",
    'Traceback (most recent call last):\n  File "jugfile.py", line 5, in ratio\n'
    "ZeroDivisionError: division by zero\n",
    "exception",
)


def vectors() -> list[tuple[str, str, str, dict[str, Any], str | None]]:
    """(name, direction, what it shows, message, connection) in the order they are sent.

    ``connection`` is None for the frames of the handshake (sent plain) and names the
    connection whose keys seal the frame otherwise; the order gives each sealed frame its
    sequence number (per connection and direction, from 0).
    """
    return [
        (
            "hello",
            "C>S",
            "a worker opens the connection (full token)",
            m.hello(
                role="worker", access="full", nonce=CLIENT_NONCE, host="node1", pid=4242, name="w1"
            ),
            None,
        ),
        (
            "challenge",
            "S>C",
            f"version {VERSION}; proof = HMAC(full token, 'ajug/1 server' + cn + sn)",
            m.challenge(
                version=VERSION,
                nonce=SERVER_NONCE,
                proof=server_proof(FULL_TOKEN, CLIENT_NONCE, SERVER_NONCE),
            ),
            None,
        ),
        (
            "auth",
            "C>S",
            "proof = HMAC(full token, 'ajug/1 client' + sn + cn); the last plain frame",
            m.auth(proof=client_proof(FULL_TOKEN, SERVER_NONCE, CLIENT_NONCE)),
            None,
        ),
        (
            "welcome",
            "S>C",
            "handshake complete: the coordinator's first sealed frame",
            m.welcome(
                session="3f9a1c0e5b7d2468",
                access="full",
                info={
                    "store": "redis://db:6379/0",
                    "lease_ttl_ms": 30000,
                    "max_frame": 64 * 1024 * 1024,
                    "jugfile": "jugfile.py",
                },
            ),
            "full",
        ),
        (
            "hello-read",
            "C>S",
            "a status client asks for read-only access",
            m.hello(
                role="client", access="read", nonce=CLIENT_NONCE_2, host="laptop", pid=77, name=""
            ),
            None,
        ),
        (
            "challenge-read",
            "S>C",
            "proof with the read token (one is configured)",
            m.challenge(
                version=VERSION,
                nonce=SERVER_NONCE_2,
                proof=server_proof(READ_TOKEN, CLIENT_NONCE_2, SERVER_NONCE_2),
            ),
            None,
        ),
        (
            "auth-read",
            "C>S",
            "the client's proof with the read token",
            m.auth(proof=client_proof(READ_TOKEN, SERVER_NONCE_2, CLIENT_NONCE_2)),
            None,
        ),
        (
            "welcome-read",
            "S>C",
            "read-only access granted (sealed with the read connection's keys)",
            m.welcome(session="0000000000000002", access="read", info={}),
            "read",
        ),
        ("status", "C>S", "status request", m.status(65535, detail=True), "read"),
        (
            "status-reply",
            "S>C",
            "status reply (free-form map; example fields)",
            m.status_reply(
                65535,
                {
                    "state": "run",
                    "tasks": 3,
                    "totals": {
                        "waiting": 1,
                        "ready": 0,
                        "running": 1,
                        "done": 1,
                        "failed": 0,
                        "blocked": 0,
                    },
                    "rate": 0.25,
                },
            ),
            "read",
        ),
        (
            "lease-first",
            "C>S",
            "first request: nothing to report, up to 2 tasks, wait 1 s",
            m.lease(1, want=2, wait_ms=1000),
            "full",
        ),
        (
            "leases",
            "S>C",
            "two leases and the one function they need",
            m.leases(
                1,
                state="run",
                leases=[m.lease_item(K3, 70000, 0, ARGS), m.lease_item(K4, 5, 0, ARGS_LITERAL)],
                funcs=[m.func_item(0, "jugfile.double", SRC_HASH, CODE)],
            ),
            "full",
        ),
        (
            "lease",
            "C>S",
            "report one done, one failed, ask for 1 more",
            m.lease(
                200,
                want=1,
                wait_ms=1000,
                done=[[K3, 70000, {"rt": 1.5, "size": 1234}]],
                failed=[[K4, 2**64 - 1, ERR]],
            ),
            "full",
        ),
        (
            "lease-input-missing",
            "C>S",
            "a task handed back: the result of its input K1 is not in the store",
            m.lease(
                201,
                want=1,
                wait_ms=1000,
                failed=[[K4, 9, m.task_error(
                    "ResultMissing", f"no result for {K1} in /data/jugfile.ajugdata", "",
                    "input-missing", K1)]],
            ),
            "full",
        ),
        (
            "lease-follow",
            "C>S",
            "a worker that honours after: may get follow-on leases",
            m.lease(2, want=2, wait_ms=1000, follow=True),
            "full",
        ),
        (
            "leases-follow",
            "S>C",
            "a ready task and a follow-on lease that waits for it on the same worker",
            m.leases(
                2,
                state="run",
                leases=[m.lease_item(K3, 7, 0, ARGS), m.lease_item(K4, 8, 0, ARGS, after=[K3])],
            ),
            "full",
        ),
        (
            "leases-idle",
            "S>C",
            "nothing ready before wait_ms ran out",
            m.leases(200, state="idle"),
            "full",
        ),
        (
            "leases-finished",
            "S>C",
            "no task will become ready: the worker may leave",
            m.leases(300, state="finished"),
            "full",
        ),
        (
            "renew",
            "C>S",
            "renew every lease held, in one message",
            m.renew(2, [[K3, 70000], [K4, 2**32]]),
            "full",
        ),
        ("renewed", "S>C", "one lease was reclaimed", m.renewed(2, lost=[K4]), "full"),
        (
            "resume",
            "C>S",
            "after reconnecting to a restarted coordinator",
            m.resume(1, [K3, K4]),
            "full",
        ),
        (
            "resumed",
            "S>C",
            "K3 kept under a new token, K4 lost",
            m.resumed(1, kept=[[K3, 1]], lost=[K4]),
            "full",
        ),
        (
            "code",
            "C>S",
            "where the jugfile's code lives, with the coordinator's copy",
            m.code(3, bundle=True),
            "full",
        ),
        (
            "code-reply",
            "S>C",
            "roots, and one module of the bundle",
            m.code_reply(3, jugfile="/home/u/project/analysis.py",
                         roots=["/home/u/project", "/home/u/project/src"],
                         modules=[m.module_item("helper", "/home/u/project/helper.py", False,
                                                b"def f(x):\n    return x + 1\n")]),
            "full",
        ),
        ("shutdown", "C>S", "ask the coordinator to stop", m.shutdown(3), "full"),
        (
            "invalidate",
            "C>S",
            "forget results so that they are computed again",
            m.invalidate(4, [K1, K2]),
            "full",
        ),
        (
            "exited",
            "C>S",
            "a supervisor says how one of its worker processes ended",
            m.exited(5, "node1", 4243, -9, "outside", "SIGKILL from outside"),
            "full",
        ),
        ("ok", "S>C", "reply to shutdown, invalidate or exited", m.ok(4), "full"),
        (
            "error",
            "S>C",
            "error reply to a request whose id could be read",
            m.error(7, "field", "lease: field want must be uint"),
            "full",
        ),
        ("bye", "C>S", "the worker leaves cleanly (no reply)", m.bye(), "full"),
        (
            "error-connection",
            "S>C",
            "during the handshake (plain): the coordinator refused the client's proof",
            m.error(None, "auth", "wrong token for full access"),
            None,
        ),
        (
            "error-client",
            "C>S",
            "during the handshake (plain): a worker refusing a coordinator that failed to prove "
            "itself",
            m.error(None, "auth", "the coordinator did not prove it has the token"),
            None,
        ),
    ]


#: What a relay would like a worker to run.
INJECT_LEASES = m.leases(
    2,
    state="run",
    leases=[m.lease_item(K3, 9, 0, ARGS_LITERAL)],
    funcs=[m.func_item(0, "relay.evil", SRC_HASH, CODE)],
)


def refusals() -> list[tuple[str, str, int, bytes]]:
    """(name, why, expected, frame): frames that the worker MUST refuse (error code "mac", then
    close) if they arrive on its connection when the coordinator's frame number ``expected`` is
    due: after all the vectors above (``nxt``), or right after the handshake (0)."""
    keys = keys_of("full")
    relay = session_keys(RELAY_TOKEN, CLIENT_NONCE, SERVER_NONCE, "worker", "full")
    order = _sealed_order("full")
    frames = {
        name: encode_frame(msg, mac=FrameMac(keys.s2c if d == "S>C" else keys.c2s, seq))
        for name, d, _what, msg, seq in order
    }
    nxt = sum(1 for _name, d, *_rest in order if d == "S>C")
    altered = bytearray(frames["welcome"])
    altered[altered.index(b"redis://db") + len("redis://")] ^= ord("d") ^ ord("e")  # db -> eb
    return [
        (
            "refuse-forged",
            "a relay's own leases: sealed under keys from another token",
            nxt,
            encode_frame(INJECT_LEASES, mac=FrameMac(relay.s2c, nxt)),
        ),
        ("refuse-unsealed", "the same leases without a MAC", nxt, encode_frame(INJECT_LEASES)),
        ("refuse-replayed", "the coordinator's leases frame (1) sent again", nxt, frames["leases"]),
        (
            "refuse-reordered",
            "the coordinator's next frame but one (one was dropped, or two were swapped)",
            nxt,
            encode_frame(m.renewed(9), mac=FrameMac(keys.s2c, nxt + 1)),
        ),
        (
            "refuse-reflected",
            "the worker's own lease-first frame (client key, 0) sent back to it as frame 0",
            0,
            frames["lease-first"],
        ),
        ("refuse-altered", "the welcome with one byte of its store URL changed", 0, bytes(altered)),
    ]


def _sealed_order(conn: str) -> list[tuple[str, str, str, dict[str, Any], int]]:
    """The sealed vectors of ``conn`` with their sequence numbers."""
    seqs = {"C>S": 0, "S>C": 0}
    out = []
    for name, direction, what, msg, c in vectors():
        if c == conn:
            out.append((name, direction, what, msg, seqs[direction]))
            seqs[direction] += 1
    return out


def to_json(value: Any) -> Any:
    """JSON form of a message: bytes become {"$bin": hex}."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """Inverse of ``to_json``."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def render() -> dict[str, bytes]:
    """Every output file, by name."""
    files: dict[str, bytes] = {}
    index: list[dict[str, Any]] = []
    seq = {(c, d): 0 for c in CONNECTIONS for d in ("C>S", "S>C")}
    for name, direction, what, msg, conn in vectors():
        m.validate(msg, "client" if direction == "C>S" else "server")
        entry: dict[str, Any] = {"name": name, "file": f"{name}.bin", "direction": direction}
        if conn is None:
            frame = encode_frame(msg)
            entry["sealed"] = None
        else:
            keys = keys_of(conn)
            n = seq[conn, direction]
            seq[conn, direction] += 1
            frame = encode_frame(msg, mac=FrameMac(keys.c2s if direction == "C>S" else keys.s2c, n))
            entry["sealed"] = {"connection": conn, "seq": n, "tag_hex": frame[-TAG_BYTES:].hex()}
        files[f"{name}.bin"] = frame
        entry.update({"what": what, "message": to_json(msg), "frame_hex": frame.hex()})
        index.append(entry)
    refuse = []
    for name, why, expected, frame in refusals():
        files[f"{name}.bin"] = frame
        refuse.append(
            {
                "name": name,
                "file": f"{name}.bin",
                "direction": "S>C",
                "connection": "full",
                "expected_seq": expected,
                "why": why,
                "frame_hex": frame.hex(),
            }
        )
    connections = {}
    for conn, (token, cn, sn, role, access) in CONNECTIONS.items():
        keys = keys_of(conn)
        connections[conn] = {
            "token": token.decode(),
            "client_nonce": cn.hex(),
            "server_nonce": sn.hex(),
            "role": role,
            "access": access,
            "key_c2s": keys.c2s.hex(),
            "key_s2c": keys.s2c.hex(),
        }
    doc = {
        "protocol_version": VERSION,
        "full_token": FULL_TOKEN.decode(),
        "read_token": READ_TOKEN.decode(),
        "note": 'tokens are HMAC keys as their UTF-8 bytes; bin values are {"$bin": hex}',
        "connections": connections,
        "vectors": index,
        "refuse": refuse,
    }
    files["vectors.json"] = (json.dumps(doc, indent=1) + "\n").encode()
    files["vectors.md"] = _markdown(doc).encode()
    return files


def _markdown(doc: dict[str, Any]) -> str:
    out = [
        f"# Golden frames, protocol version {VERSION}",
        "",
        "Generated by `python protocol/vectors/generate.py`; do not edit by hand.",
        "Each `<name>.bin` holds one whole frame as it is on the wire: the 4-byte big-endian",
        "length, the canonical msgpack body (see ../SPEC.md), and for a sealed frame its",
        "32-byte MAC. `C>S` = worker/client to coordinator. The vectors are two connections,",
        "in the order their frames are sent: a worker's (`full`) and a status client's (`read`);",
        "a sealed frame's sequence number counts that connection's sealed frames in its direction.",
        "",
        f"- full token: `{FULL_TOKEN.decode()}` (its UTF-8 bytes are the HMAC key)",
        f"- read token: `{READ_TOKEN.decode()}`",
        "- `args` blobs are real pickles (protocol 5); `code` is a stand-in (pickle of None)",
        '- in the messages below a bin value is written `{"$bin": "<hex>"}`',
        "",
        "## Connections and their keys",
        "",
        "| connection | role, access | client nonce | server nonce |",
        "| --- | --- | --- | --- |",
    ]
    for name, c in doc["connections"].items():
        out.append(
            f"| {name} | {c['role']}, {c['access']} | `{c['client_nonce']}` "
            f"| `{c['server_nonce']}` |"
        )
    out.append("")
    for name, c in doc["connections"].items():
        out += [f"- {name}: key C>S `{c['key_c2s']}`", f"  key S>C `{c['key_s2c']}`"]
    out.append("")
    for v in doc["vectors"]:
        sealed = v["sealed"]
        how = (
            f"sealed, connection `{sealed['connection']}`, frame {sealed['seq']}"
            if sealed
            else "plain: handshake"
        )
        out += [
            f"## {v['name']} ({v['direction']}, {how})",
            "",
            v["what"][:1].upper() + v["what"][1:] + ".",
            "",
            "```json",
            _compact(v["message"]),
            "```",
            "",
            f"Frame ({len(v['frame_hex']) // 2} bytes):",
            "",
            "```",
            *_hexlines(v["frame_hex"]),
            "```",
            "",
        ]
    out += [
        "## Frames to refuse",
        "",
        "Each must be refused (`error` code `mac`, then close) by the worker of connection",
        "`full` when the coordinator's frame number *expected* is due next.",
        "",
    ]
    for v in doc["refuse"]:
        out += [
            f"### {v['name']} (expected {v['expected_seq']})",
            "",
            v["why"][:1].upper() + v["why"][1:] + ".",
            "",
            "```",
            *_hexlines(v["frame_hex"]),
            "```",
            "",
        ]
    return "\n".join(out)


def _hexlines(hexstr: str) -> list[str]:
    return [hexstr[i : i + 64] for i in range(0, len(hexstr), 64)]


def _compact(msg: dict[str, Any]) -> str:
    """One top-level field per line: readable, and still valid JSON."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in msg.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="directory to write (default: here)")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    files = render()
    if args.check:
        bad = [
            n
            for n, b in files.items()
            if not (args.out / n).is_file() or (args.out / n).read_bytes() != b
        ]
        for n in bad:
            print(f"differs: {n}", file=sys.stderr)
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, b in files.items():
        (args.out / n).write_bytes(b)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
