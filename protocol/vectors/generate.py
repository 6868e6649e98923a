#!/usr/bin/env python3
"""Regenerate the golden frames of protocol version 1 (deterministic: same bytes every run).

    python protocol/vectors/generate.py            # rewrite the files next to this script
    python protocol/vectors/generate.py --check    # exit 1 if a checked-in file differs
    python protocol/vectors/generate.py --out DIR  # write elsewhere

Writes one ``<name>.bin`` per vector (the whole frame: 4-byte length + msgpack), plus
``vectors.json`` (machine-readable index; a ``bin`` value is written as ``{"$bin": "<hex>"}``)
and ``vectors.md`` (the same for people). Messages are built with ``ajug.protocol.messages``
and proofs with ``ajug.protocol.auth``; the ``args`` and ``code`` blobs are fixed literals.
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
from ajug.protocol.auth import client_proof, server_proof  # noqa: E402
from ajug.protocol.framing import encode_frame  # noqa: E402

#: The test tokens: ASCII text, used as HMAC keys as they are (its UTF-8 bytes).
FULL_TOKEN = b"ajug-test-token"
READ_TOKEN = b"ajug-read-token"
CLIENT_NONCE = bytes(range(0x00, 0x10))  # 000102...0f
SERVER_NONCE = bytes(range(0xF0, 0x100))  # f0f1...ff
CLIENT_NONCE_2 = bytes(range(0x20, 0x30))  # the read-only client's hello
SERVER_NONCE_2 = bytes(range(0xA0, 0xB0))


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


def vectors() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, direction, what it shows, message) in the order of SPEC.md."""
    return [
        (
            "hello",
            "C>S",
            "a worker opens the connection (full token)",
            m.hello(
                role="worker", access="full", nonce=CLIENT_NONCE, host="node1", pid=4242, name="w1"
            ),
        ),
        (
            "challenge",
            "S>C",
            "version 1; proof = HMAC(full token, 'ajug/1 server' + cn + sn)",
            m.challenge(
                version=1,
                nonce=SERVER_NONCE,
                proof=server_proof(FULL_TOKEN, CLIENT_NONCE, SERVER_NONCE),
            ),
        ),
        (
            "auth",
            "C>S",
            "proof = HMAC(full token, 'ajug/1 client' + sn + cn)",
            m.auth(proof=client_proof(FULL_TOKEN, SERVER_NONCE, CLIENT_NONCE)),
        ),
        (
            "welcome",
            "S>C",
            "handshake complete",
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
        ),
        (
            "hello-read",
            "C>S",
            "a status client asks for read-only access",
            m.hello(
                role="client", access="read", nonce=CLIENT_NONCE_2, host="laptop", pid=77, name=""
            ),
        ),
        (
            "challenge-read",
            "S>C",
            "proof with the read token (one is configured)",
            m.challenge(
                version=1,
                nonce=SERVER_NONCE_2,
                proof=server_proof(READ_TOKEN, CLIENT_NONCE_2, SERVER_NONCE_2),
            ),
        ),
        (
            "auth-read",
            "C>S",
            "the client's proof with the read token",
            m.auth(proof=client_proof(READ_TOKEN, SERVER_NONCE_2, CLIENT_NONCE_2)),
        ),
        (
            "welcome-read",
            "S>C",
            "read-only access granted",
            m.welcome(session="0000000000000002", access="read", info={}),
        ),
        (
            "lease-first",
            "C>S",
            "first request: nothing to report, up to 2 tasks, wait 1 s",
            m.lease(1, want=2, wait_ms=1000),
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
        ),
        (
            "lease-follow",
            "C>S",
            "a worker that honours after: may get follow-on leases",
            m.lease(2, want=2, wait_ms=1000, follow=True),
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
        ),
        ("leases-idle", "S>C", "nothing ready before wait_ms ran out", m.leases(200, state="idle")),
        (
            "leases-finished",
            "S>C",
            "no task will become ready: the worker may leave",
            m.leases(300, state="finished"),
        ),
        (
            "renew",
            "C>S",
            "renew every lease held, in one message",
            m.renew(2, [[K3, 70000], [K4, 2**32]]),
        ),
        ("renewed", "S>C", "one lease was reclaimed", m.renewed(2, lost=[K4])),
        ("resume", "C>S", "after reconnecting to a restarted coordinator", m.resume(1, [K3, K4])),
        (
            "resumed",
            "S>C",
            "K3 kept under a new token, K4 lost",
            m.resumed(1, kept=[[K3, 1]], lost=[K4]),
        ),
        ("code", "C>S", "where the jugfile's code lives, with the coordinator's copy",
         m.code(3, bundle=True)),
        (
            "code-reply",
            "S>C",
            "roots, and one module of the bundle",
            m.code_reply(3, jugfile="/home/u/project/analysis.py",
                         roots=["/home/u/project", "/home/u/project/src"],
                         modules=[m.module_item("helper", "/home/u/project/helper.py", False,
                                                b"def f(x):\n    return x + 1\n")]),
        ),
        ("bye", "C>S", "the worker leaves cleanly (no reply)", m.bye()),
        ("status", "C>S", "status request", m.status(65535, detail=True)),
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
        ),
        ("shutdown", "C>S", "ask the coordinator to stop", m.shutdown(3)),
        (
            "invalidate",
            "C>S",
            "forget results so that they are computed again",
            m.invalidate(4, [K1, K2]),
        ),
        (
            "exited",
            "C>S",
            "a supervisor says how one of its worker processes ended",
            m.exited(5, "node1", 4243, -9, "outside", "SIGKILL from outside"),
        ),
        ("ok", "S>C", "reply to shutdown, invalidate or exited", m.ok(4)),
        (
            "error",
            "S>C",
            "error reply to a request whose id could be read",
            m.error(7, "field", "lease: field want must be uint"),
        ),
        (
            "error-connection",
            "S>C",
            "error not tied to a request, then close",
            m.error(None, "auth", "wrong token for full access"),
        ),
        (
            "error-client",
            "C>S",
            "a worker refusing a coordinator that failed to prove itself",
            m.error(None, "auth", "the coordinator did not prove it has the token"),
        ),
    ]


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
    for name, direction, what, msg in vectors():
        m.validate(msg, "client" if direction == "C>S" else "server")
        frame = encode_frame(msg)
        files[f"{name}.bin"] = frame
        index.append(
            {
                "name": name,
                "file": f"{name}.bin",
                "direction": direction,
                "what": what,
                "message": to_json(msg),
                "frame_hex": frame.hex(),
            }
        )
    doc = {
        "protocol_version": 1,
        "full_token": FULL_TOKEN.decode(),
        "read_token": READ_TOKEN.decode(),
        "note": 'tokens are HMAC keys as their UTF-8 bytes; bin values are {"$bin": hex}',
        "vectors": index,
    }
    files["vectors.json"] = (json.dumps(doc, indent=1) + "\n").encode()
    files["vectors.md"] = _markdown(index).encode()
    return files


def _markdown(index: list[dict[str, Any]]) -> str:
    out = [
        "# Golden frames, protocol version 1",
        "",
        "Generated by `python protocol/vectors/generate.py`; do not edit by hand.",
        "Each `<name>.bin` holds one whole frame: the 4-byte big-endian length, then the",
        "canonical msgpack body (see ../SPEC.md). `C>S` = worker/client to coordinator.",
        "",
        f"- full token: `{FULL_TOKEN.decode()}` (its UTF-8 bytes are the HMAC key)",
        f"- read token: `{READ_TOKEN.decode()}`",
        f"- first handshake: client nonce `{CLIENT_NONCE.hex()}`, "
        f"server nonce `{SERVER_NONCE.hex()}`",
        f"- read-only handshake: client nonce `{CLIENT_NONCE_2.hex()}`, "
        f"server nonce `{SERVER_NONCE_2.hex()}`",
        "- `args` blobs are real pickles (protocol 5); `code` is a stand-in (pickle of None)",
        '- in the messages below a bin value is written `{"$bin": "<hex>"}`',
        "",
    ]
    for v in index:
        hexlines = [v["frame_hex"][i : i + 64] for i in range(0, len(v["frame_hex"]), 64)]
        out += [
            f"## {v['name']} ({v['direction']})",
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
            *hexlines,
            "```",
            "",
        ]
    return "\n".join(out)


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
