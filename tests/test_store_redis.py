"""The redis store against a real redis-server: namespaces, chunks, crashes, restarts, limits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import RedisServer
from store_helpers import GiB, MiB, dead_pid, hexkey, run_1gib_round_trip, subprocess_env

from ajug.errors import ResultMissing, StoreFull, StoreLocked, StoreUnreachable
from ajug.stores.redis import RedisStore

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]


def ns_keys(store: RedisStore, kind: str) -> list[bytes]:
    return sorted(store.r.scan_iter(match=store.keys.pattern(kind), count=1000))


def test_namespaces_are_isolated(make_store: Callable[..., Any]) -> None:
    a = make_store("redis", namespace="projA")
    b = make_store("redis", namespace="projB:")
    assert a.keys.ns == "projA:"
    a.save(hexkey(1), "from a")
    b.save(hexkey(2), "from b")
    assert a.exists([hexkey(1), hexkey(2)]) == [True, False]
    assert b.exists([hexkey(1), hexkey(2)]) == [False, True]
    assert list(a.list()) == [hexkey(1)]
    assert list(b.list()) == [hexkey(2)]
    assert b.remove([hexkey(1)]) == 0
    assert a.load(hexkey(1)) == "from a"
    lock_a = a.owner_lock()
    lock_a.acquire()
    b.owner_lock().acquire()  # another namespace, another lock
    a.remove([hexkey(1)])
    b.remove([hexkey(2)])


def test_glob_characters_in_namespace_do_not_leak(make_store: Callable[..., Any]) -> None:
    star = make_store("redis", namespace="p*")
    other = make_store("redis", namespace="pX")
    other.save(hexkey(1), 1)
    assert list(star.list()) == []
    other.remove([hexkey(1)])


def test_chunked_value_layout_and_old_chunks_removed(make_store: Callable[..., Any]) -> None:
    store = make_store("redis", chunk_bytes=MiB)
    key = hexkey(1)
    store.save(key, np.ones(5 * MiB // 8))  # 5 MiB + header: 6 chunks
    assert len(ns_keys(store, "c")) == 6
    assert ns_keys(store, "u") == []  # upload marker gone after commit
    assert all(store.r.ttl(k) == -1 for k in ns_keys(store, "c"))  # committed chunks persist
    store.save(key, np.zeros(3 * MiB // 8))
    assert len(ns_keys(store, "c")) == 4  # the previous value's chunks are gone
    assert np.array_equal(store.load(key), np.zeros(3 * MiB // 8))
    store.save(key, "small")
    assert ns_keys(store, "c") == []
    store.save(key, np.ones(2 * MiB // 8))
    assert store.remove([key]) == 1
    assert ns_keys(store, "c") == [] and ns_keys(store, "r") == [] and ns_keys(store, "m") == []


def test_metadata_does_not_transfer_results(make_store: Callable[..., Any]) -> None:
    store = make_store("redis", chunk_bytes=MiB)
    store.save(hexkey(1), np.ones(4 * MiB // 8), {"func": "f"})
    before = store.r.info("stats")["total_net_output_bytes"]
    assert store.metadata([hexkey(1)])[0]["func"] == "f"
    assert store.exists([hexkey(1)]) == [True]
    assert store.r.info("stats")["total_net_output_bytes"] - before < 64 << 10


def test_chunked_value_is_all_or_nothing_under_concurrent_overwrites(
    make_store: Callable[..., Any],
) -> None:
    writer = make_store("redis", chunk_bytes=256 << 10)
    reader = make_store("redis", namespace=writer.keys.ns, chunk_bytes=256 << 10)
    key = hexkey("hot")
    n = 3 * MiB // 8
    writer.save(key, np.full(n, 1.0))
    stop = threading.Event()

    def overwrite() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            writer.save(key, np.full(n, float(1 + i % 2)))

    thread = threading.Thread(target=overwrite)
    thread.start()
    seen: set[float] = set()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                got = reader.load(key)
            except ResultMissing:
                continue  # changed under us three times in a row: fine, never wrong
            assert got.shape == (n,)
            assert got[0] == got[-1] and np.all(got == got[0])
            seen.add(float(got[0]))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert seen <= {1.0, 2.0} and seen
    assert len(ns_keys(writer, "c")) == 13  # only the current value's chunks are left


SAVE_CHUNKED = """
import sys
import numpy as np
from ajug.stores.redis import RedisStore
store = RedisStore(sys.argv[1], namespace=sys.argv[2], chunk_bytes=8 << 20)
value = np.full(200 << 20, 7, dtype=np.uint8)
print("ready", flush=True)
store.save(sys.argv[3], value)
print("saved", flush=True)
"""


def test_sigkill_mid_upload_then_cleanup(make_store: Callable[..., Any], redis_server: str) -> None:
    store = make_store("redis")
    key = hexkey("killed")
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_CHUNKED, redis_server, store.keys.ns, key],
        stdout=subprocess.PIPE,
        env=subprocess_env(),
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 20
        while len(ns_keys(store, "c")) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.stdout.close()
    chunks = ns_keys(store, "c")
    assert store.exists([key]) == [False], "the writer finished before it could be killed"
    assert 3 <= len(chunks) < 26
    with pytest.raises(ResultMissing):
        store.load(key)
    assert all(0 < store.r.ttl(k) for k in chunks)  # would expire by themselves anyway
    freed = store.cleanup(dry_run=True)
    assert freed == 8 * MiB * len(chunks) or freed > 8 * MiB * (len(chunks) - 1)
    assert store.cleanup() == freed
    assert ns_keys(store, "c") == [] and ns_keys(store, "u") == []


def test_cleanup_spares_live_uploads(make_store: Callable[..., Any]) -> None:
    store = make_store("redis")
    k = store.keys
    host = socket.gethostname()
    uploads = {"live": os.getpid(), "dead": dead_pid()}
    for name, pid in uploads.items():
        store.r.set(k.chunk(hexkey(1), name, 0), b"x" * 10, px=60_000)
        store.r.set(k.upload(hexkey(1), name), json.dumps({"host": host, "pid": pid}))
    store.r.set(k.chunk(hexkey(2), "nomarker", 0), b"y" * 7)
    store.r.set(k.chunk(hexkey(3), "remote", 0), b"z" * 5)
    store.r.set(k.upload(hexkey(3), "remote"), json.dumps({"host": "node9", "pid": 1}))
    assert store.cleanup() == 17
    assert ns_keys(store, "c") == sorted(
        [k.chunk(hexkey(1), "live", 0).encode(), k.chunk(hexkey(3), "remote", 0).encode()]
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_1gib_array_memory_redis(redis_server: str, namespace: str) -> None:
    peak = run_1gib_round_trip(f"{redis_server}?namespace={namespace}big&chunk_mib=64")
    assert peak < 2.5 * GiB, f"peak RSS {peak / GiB:.2f} GiB"


def test_unreachable_has_a_clear_message(free_tcp_port: int) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_tcp_port}/0", retry_s=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnreachable) as err:
            store.exists([hexkey(1)])
        assert time.monotonic() - t0 < 5
        msg = str(err.value)
        assert f"cannot reach redis at 127.0.0.1:{free_tcp_port}" in msg
        assert "is redis-server running?" in msg
        with pytest.raises(StoreUnreachable):
            store.save(hexkey(1), 1)
    finally:
        store.close()


def test_survives_a_redis_restart(
    make_store: Callable[..., Any], restart_redis: Callable[..., None],
    redis_process: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store("redis", retry_s=20, chunk_bytes=MiB)
    store.save(hexkey(1), 1)
    restart_redis()  # the data is gone (no persistence), the store reconnects
    assert store.exists([hexkey(1)]) == [False]
    store.save(hexkey(1), 2)
    assert store.load(hexkey(1)) == 2

    # Down for a while in the middle of a run: the operation waits and succeeds. redis is
    # stopped before the save starts, so the save must go through the retries
    redis_process.stop()
    thread = threading.Thread(target=lambda: (time.sleep(1.0), redis_process.start()))
    thread.start()
    try:
        with caplog.at_level("WARNING", logger="ajug.stores.redis"):
            store.save(hexkey(2), np.arange(300_000))
    finally:
        thread.join(timeout=30)
    assert np.array_equal(store.load(hexkey(2)), np.arange(300_000))
    assert "lost redis" in caplog.text and "answers again" in caplog.text


def test_restart_with_persistence_keeps_results(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server("--appendonly", "yes", "--appendfsync", "always")
    store = RedisStore(server.url, chunk_bytes=MiB, retry_s=10)
    try:
        store.save(hexkey(1), np.arange(500_000))
        server.restart(down_s=0.3)
        assert np.array_equal(store.load(hexkey(1)), np.arange(500_000))
    finally:
        store.close()


def test_out_of_memory_is_store_full(make_redis_server: Callable[..., RedisServer]) -> None:
    server = make_redis_server("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    store = RedisStore(server.url, chunk_bytes=MiB, retry_s=2)
    try:
        with pytest.raises(StoreFull, match="is full"):
            for i in range(20):
                store.save(
                    hexkey(i), np.random.default_rng(i).integers(0, 255, 3 * MiB, dtype=np.uint8)
                )
        assert store.cleanup() == 0  # the failed upload removed its own chunks
        assert store.r.keys(store.keys.pattern("u")) == []
        store.remove(list(store.list()))
        store.save(hexkey("small"), "fits")
        assert store.load(hexkey("small")) == "fits"
    finally:
        store.close()


def test_damaged_value_reads_as_missing(make_store: Callable[..., Any]) -> None:
    store = make_store("redis")
    store.save(hexkey(1), {"a": np.arange(100)})
    rkey = store.keys.result(hexkey(1))
    data = bytearray(store.r.get(rkey))
    data[-3] ^= 0x10
    store.r.set(rkey, bytes(data))
    with pytest.raises(ResultMissing, match="damaged"):
        store.load(hexkey(1))


def test_missing_chunk_reads_as_missing(make_store: Callable[..., Any]) -> None:
    store = make_store("redis", chunk_bytes=MiB)
    store.save(hexkey(1), np.ones(3 * MiB // 8))
    store.r.delete(ns_keys(store, "c")[1])
    with pytest.raises(ResultMissing, match="damaged"):
        store.load(hexkey(1))


def test_lock_message_and_expiry(make_store: Callable[..., Any]) -> None:
    store = make_store("redis")
    holder = store.owner_lock(ttl_s=60)
    holder.acquire()
    assert 0 < store.r.pttl(store.keys.lock) <= 60_000
    with pytest.raises(StoreLocked) as err:
        store.owner_lock().acquire()
    assert socket.gethostname() in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    holder.release()
    assert store.r.get(store.keys.lock) is None


def test_lock_of_dead_local_process_is_taken_over(make_store: Callable[..., Any]) -> None:
    store = make_store("redis")
    info = {
        "owner": "x",
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "expires_at": time.time() + 60,
    }
    store.r.set(store.keys.lock, json.dumps(info), px=60_000)
    mine = store.owner_lock()
    mine.acquire()
    assert json.loads(store.r.get(store.keys.lock))["owner"] == mine.owner
    mine.renew()
    mine.release()


def test_large_values_are_sent_as_their_pieces(make_store: Callable[..., Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A large result goes to redis as the buffers it is made of (the array's own memory),
    never joined into one bytes first, whole or in chunks, and redis stores exactly the
    encoding; without the zero-copy client the joined bytes (and APPEND for chunks) give the
    same values."""
    from ajug.stores import encoding

    whole = make_store("redis")
    chunked = make_store("redis", chunk_bytes=MiB)
    assert whole.parts_ok
    value = np.arange(3 * MiB // 8, dtype=np.float64)
    enc = encoding.encode(value, {"func": "m.f"})
    joined = encoding.join(enc)

    def appends(store: RedisStore) -> int:
        return int(store.r.info("commandstats").get("cmdstat_append", {}).get("calls", 0))

    def refuse(e: Any) -> bytes:
        raise AssertionError("a large value was joined before it was sent")

    for zero_copy in (True, False):
        whole.parts_ok = chunked.parts_ok = zero_copy
        with monkeypatch.context() as mp:
            if zero_copy:
                mp.setattr("ajug.stores.redis.encoding.join", refuse)
            before = appends(chunked)
            whole.save_many([(hexkey(1), enc, None)])
            chunked.save_many([(hexkey(2), enc, None)])
            assert (appends(chunked) == before) == zero_copy
        assert whole.r.get(whole.keys.result(hexkey(1))) == joined
        up = chunked.metadata([hexkey(2)])[0]
        assert up is not None and up["size"] == len(joined)
        assert np.array_equal(whole.load(hexkey(1)), value)
        assert np.array_equal(chunked.load(hexkey(2)), value)
        whole.remove([hexkey(1)])
        chunked.remove([hexkey(2)])


@pytest.mark.parametrize("listed", [True, False])
def test_a_big_graph_is_asked_about_by_listing_or_key_by_key_alike(
        make_store: Callable[..., Any], listed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph bigger than the database is answered from one SCAN of the namespace (a first
    run: nothing to ask key by key); the answers are the same as key by key, damaged results,
    other namespaces' results and keys that only look like results included."""
    from ajug.stores import redisqueries

    store = make_store("redis", namespace="big")
    other = make_store("redis", namespace="bigother")  # its results are not ours
    keys = [hexkey(i) for i in range(12_000)]
    store.save_many([(k, i, None) for i, k in enumerate(keys[:300])])
    other.save_many([(k, 0, None) for k in keys[300:400]])
    store.r.set(store.keys.result(keys[5]), b"AJUG cut short")  # damaged: not intact
    store.r.set(store.keys.meta(keys[400]), b"metadata without a result")
    if not listed:
        monkeypatch.setattr(redisqueries, "SCAN_MIN_KEYS", 10**9)
    calls = []
    real = store._listed
    monkeypatch.setattr(store, "_listed", lambda ks: calls.append(r := real(ks)) or r)
    assert store.exists(keys) == [i < 300 for i in range(12_000)]
    sizes = store.intact_sizes(keys)
    assert [i for i, n in enumerate(sizes) if n is not None] == [i for i in range(300) if i != 5]
    assert all(n and n > 0 for n in sizes[:5])
    assert (calls[0] is not None) is listed and len(calls) == 2
    store.save_many([(k, 0, None) for k in keys[:11_000]])  # now the database is bigger: per key
    assert store._listed(keys[:10_500]) is None and all(store.exists(keys[:10_500]))
