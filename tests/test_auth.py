"""The handshake state machines, without sockets: messages in, messages or exceptions out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ajug.errors import AuthError, ProtocolError, UsageError, VersionMismatch
from ajug.protocol import messages as m
from ajug.protocol.auth import ClientHandshake, ServerHandshake, client_proof, server_proof
from ajug.protocol.framing import FrameDecoder, encode_frame
from ajug.protocol.mac import FrameMac

TOKEN = b"s3cr3t-T0KEN-do-not-print"
READ = b"r3ad-only-T0KEN-do-not-print"
VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors"


def client(
    token: bytes = TOKEN, role: str = "worker", access: str = "full", **kw: Any
) -> ClientHandshake:
    return ClientHandshake(token, role, access, "node1", 4242, "w1", server="coord:5555", **kw)


def run(c: ClientHandshake, s: ServerHandshake) -> None:
    """Carry messages between the two sides, through the codec, until both are done."""
    (challenge,) = s.receive(roundtrip(c.hello()))
    (auth,) = c.receive(roundtrip(challenge))
    (welcome,) = s.receive(roundtrip(auth))
    assert c.receive(roundtrip(welcome)) == []


def roundtrip(msg: dict[str, Any]) -> dict[str, Any]:
    (out,) = FrameDecoder().feed(encode_frame(msg))
    return out


def test_mutual_auth_success() -> None:
    c = client()
    s = ServerHandshake(TOKEN, None, welcome_info={"store": "memory:", "lease_ttl_ms": 30000})
    run(c, s)
    assert c.done and s.done
    assert (s.role, s.access, s.host, s.pid, s.name, s.version) == (
        "worker",
        "full",
        "node1",
        4242,
        "w1",
        2,
    )
    assert c.session == s.session and c.version == 2 and c.access == "full"
    assert c.info == {"store": "memory:", "lease_ttl_ms": 30000}


def test_sessions_and_nonces_are_fresh() -> None:
    a, b = ServerHandshake(TOKEN), ServerHandshake(TOKEN)
    assert a.session != b.session and a.nonce != b.nonce
    assert client().nonce != client().nonce and len(client().nonce) == 16


def test_empty_token_still_authenticates() -> None:
    run(client(b""), ServerHandshake(b""))
    with pytest.raises(AuthError):
        run(client(b""), ServerHandshake(b"x"))


def test_client_with_wrong_token_refuses_the_server_first() -> None:
    """The worker checks the coordinator's proof before proving anything itself."""
    c, s = client(b"wrong"), ServerHandshake(TOKEN)
    (challenge,) = s.receive(c.hello())
    with pytest.raises(AuthError) as info:
        c.receive(challenge)
    assert str(info.value) == (
        "the coordinator at coord:5555 did not prove it has the token; refusing to run its code "
        "(if it is yours, the tokens differ: check AJUG_TOKEN or --token-file on both sides)"
    )
    assert m.error_for(info.value)["code"] == "auth"


def test_server_refuses_a_client_proof_made_with_another_token() -> None:
    c, s = client(), ServerHandshake(TOKEN)
    (challenge,) = s.receive(c.hello())
    forged = m.auth(proof=client_proof(b"wrong", challenge["nonce"], c.nonce))
    with pytest.raises(AuthError, match="wrong token for full access") as info:
        s.receive(forged)
    assert not s.done
    assert m.error_for(info.value) == m.error(None, "auth", "wrong token for full access")


def test_server_with_a_bad_proof_is_rejected_by_the_client() -> None:
    c = client()
    c.hello()
    bogus = m.challenge(version=2, nonce=bytes(16), proof=bytes(32))
    with pytest.raises(AuthError, match="did not prove it has the token"):
        c.receive(bogus)
    # a proof for *another* client nonce (a replayed challenge) fails too
    c2 = client()
    c2.hello()
    replayed = m.challenge(
        version=2, nonce=bytes(16), proof=server_proof(TOKEN, c.nonce, bytes(16))
    )
    with pytest.raises(AuthError):
        c2.receive(replayed)


def test_replayed_auth_fails_on_a_new_connection() -> None:
    c, s1 = client(), ServerHandshake(TOKEN)
    hello = c.hello()
    (challenge,) = s1.receive(hello)
    (auth,) = c.receive(challenge)
    s1.receive(auth)
    # an eavesdropper replays the recorded hello and auth to the coordinator later
    s2 = ServerHandshake(TOKEN)
    s2.receive(hello)
    with pytest.raises(AuthError):
        s2.receive(auth)


def test_read_only_token_grants_read_access() -> None:
    c = client(READ, role="client", access="read")
    s = ServerHandshake(TOKEN, READ)
    run(c, s)
    assert s.access == "read" and c.access == "read" and s.role == "client"


def test_read_token_does_not_grant_full_access() -> None:
    c, s = client(READ, role="client", access="full"), ServerHandshake(TOKEN, READ)
    (challenge,) = s.receive(c.hello())
    with pytest.raises(AuthError):
        c.receive(challenge)
    # nor does a client that skips the check get past the coordinator
    with pytest.raises(AuthError):
        s.receive(m.auth(proof=client_proof(READ, challenge["nonce"], c.nonce)))


def test_read_access_uses_the_full_token_when_no_read_token_is_set() -> None:
    c, s = client(TOKEN, role="client", access="read"), ServerHandshake(TOKEN, None)
    run(c, s)
    assert s.access == "read"


def test_a_worker_needs_full_access() -> None:
    with pytest.raises(UsageError):
        ClientHandshake(TOKEN, "worker", "read")
    s = ServerHandshake(TOKEN, READ)
    hello = m.hello(role="worker", access="read", nonce=bytes(16), host="h", pid=1, name="")
    with pytest.raises(m.AccessDenied) as info:
        s.receive(hello)
    assert m.error_code(info.value) == "access"


@pytest.mark.parametrize(
    "client_versions, server_versions, chosen",
    [((1,), (1,), 1), ((1, 2), (1, 2, 3), 2), ((3, 1), (1, 3), 3), ((5, 1), (1,), 1)],
)
def test_version_negotiation_picks_the_highest_common(
    client_versions: tuple[int, ...], server_versions: tuple[int, ...], chosen: int
) -> None:
    c = client(versions=client_versions)
    s = ServerHandshake(TOKEN, versions=server_versions)
    run(c, s)
    assert c.version == s.version == chosen


@pytest.mark.parametrize("client_versions", [(1,), (), (0, 7)])
def test_no_common_version(client_versions: tuple[int, ...]) -> None:
    c, s = client(versions=client_versions), ServerHandshake(TOKEN)
    with pytest.raises(VersionMismatch, match="no protocol version in common") as info:
        s.receive(c.hello())
    reply = m.error_for(info.value)
    assert reply["code"] == "version"
    with pytest.raises(VersionMismatch, match="speaks no protocol version we speak"):
        c.receive(reply)


def test_client_refuses_a_version_it_did_not_offer() -> None:
    c = client()
    c.hello()
    with pytest.raises(VersionMismatch, match="chose protocol version 1"):
        c.receive(m.challenge(version=1, nonce=bytes(16), proof=bytes(32)))


def test_error_replies_become_the_matching_exceptions() -> None:
    for code, exc in [
        ("auth", AuthError),
        ("version", VersionMismatch),
        ("access", m.AccessDenied),
        ("timeout", ProtocolError),
    ]:
        c = client()
        c.hello()
        with pytest.raises(exc, match="coord:5555"):
            c.receive(m.error(None, code, "no"))


def test_out_of_order_messages() -> None:
    s = ServerHandshake(TOKEN)
    with pytest.raises(m.UnknownOp, match="expected hello, got auth"):
        s.receive(m.auth(proof=bytes(32)))
    with pytest.raises(m.UnknownOp):
        ServerHandshake(TOKEN).receive(m.status(1))
    c = client()
    c.hello()
    with pytest.raises(m.UnknownOp, match="expected challenge, got welcome"):
        c.receive(m.welcome(session="s", access="full", info={}))
    with pytest.raises(ProtocolError):
        c.hello()  # only once
    with pytest.raises(m.BadField):
        ServerHandshake(TOKEN).receive({"op": "hello"})


def test_granted_access_must_be_the_one_asked_for() -> None:
    c, s = client(), ServerHandshake(TOKEN)
    (challenge,) = s.receive(c.hello())
    c.receive(challenge)
    with pytest.raises(ProtocolError, match="granted read access"):
        c.receive(m.welcome(session="s", access="read", info={}))


def test_tokens_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        ClientHandshake("text", "worker")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ServerHandshake(TOKEN, "text")  # type: ignore[arg-type]


def test_vectors_are_what_the_state_machines_send() -> None:
    """The handshake of the golden vectors, replayed byte for byte through both sides, and the
    session keys both sides derive from it are the vectors' keys."""
    doc = json.loads((VECTORS / "vectors.json").read_text())
    frames = {v["name"]: (VECTORS / v["file"]).read_bytes() for v in doc["vectors"]}
    token = doc["full_token"].encode()

    def decode(name: str, key: str | None = None) -> dict[str, Any]:
        mac = None if key is None else FrameMac(bytes.fromhex(key))
        (msg,) = FrameDecoder(mac=mac).feed(frames[name])
        return msg

    full, read_conn = doc["connections"]["full"], doc["connections"]["read"]
    hello, challenge = decode("hello"), decode("challenge")
    welcome = decode("welcome", full["key_s2c"])
    c = ClientHandshake(token, "worker", "full", "node1", 4242, "w1", nonce=hello["nonce"])
    s = ServerHandshake(
        token,
        None,
        session=welcome["session"],
        welcome_info=welcome["info"],
        nonce=challenge["nonce"],
    )
    assert encode_frame(c.hello()) == frames["hello"]
    (out,) = s.receive(decode("hello"))
    assert encode_frame(out) == frames["challenge"]
    (out,) = c.receive(decode("challenge"))
    assert encode_frame(out) == frames["auth"]
    assert c.keys is not None and s.keys is None  # the coordinator has not checked auth yet
    (out,) = s.receive(decode("auth"))
    assert s.keys == c.keys
    assert (c.keys.c2s.hex(), c.keys.s2c.hex()) == (full["key_c2s"], full["key_s2c"])
    assert encode_frame(out, mac=FrameMac(s.keys.s2c)) == frames["welcome"]
    assert c.receive(welcome) == []

    read = doc["read_token"].encode()
    hello, challenge = decode("hello-read"), decode("challenge-read")
    c = ClientHandshake(read, "client", "read", "laptop", 77, "", nonce=hello["nonce"])
    s = ServerHandshake(token, read, session="0000000000000002", nonce=challenge["nonce"])
    assert encode_frame(c.hello()) == frames["hello-read"]
    assert encode_frame(s.receive(decode("hello-read"))[0]) == frames["challenge-read"]
    assert encode_frame(c.receive(decode("challenge-read"))[0]) == frames["auth-read"]
    (out,) = s.receive(decode("auth-read"))
    assert s.keys == c.keys and s.keys is not None
    assert s.keys.s2c.hex() == read_conn["key_s2c"]
    assert encode_frame(out, mac=FrameMac(s.keys.s2c)) == frames["welcome-read"]


def _forms(token: bytes) -> list[str]:
    return [token.decode(), token.hex(), repr(token), token.decode()[:12]]


def test_tokens_appear_in_no_exception_or_repr() -> None:
    failures: list[BaseException] = []

    def collect(fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - collecting every failure on purpose
            failures.append(exc)

    def wrong_client() -> None:
        run(client(b"wrong"), ServerHandshake(TOKEN, READ))

    def forged_auth() -> None:
        c, s = client(), ServerHandshake(TOKEN, READ)
        (ch,) = s.receive(c.hello())
        s.receive(m.auth(proof=client_proof(READ, ch["nonce"], c.nonce)))

    def wrong_read() -> None:
        run(client(TOKEN, role="client", access="read"), ServerHandshake(TOKEN, READ))

    def bad_version() -> None:
        run(client(versions=(9,)), ServerHandshake(TOKEN, READ))

    def worker_read() -> None:
        ServerHandshake(TOKEN, READ).receive(
            m.hello(role="worker", access="read", nonce=bytes(16), host="", pid=0, name="")
        )

    for fn in (wrong_client, forged_auth, wrong_read, bad_version, worker_read):
        collect(fn)
    assert len(failures) == 5
    texts = [str(e) for e in failures] + [repr(e) for e in failures]
    texts += [json.dumps(m.error_for(e)) for e in failures]
    c, s = client(), ServerHandshake(TOKEN, READ)
    run(c, s)
    texts += [repr(c), repr(s), str(vars(c).get("info")), repr(vars(s).get("welcome_info"))]
    for text in texts:
        for form in _forms(TOKEN) + _forms(READ):
            assert form not in text, text
