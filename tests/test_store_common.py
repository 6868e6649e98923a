"""Behaviour every store shares, run against the file, redis and memory stores alike."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from store_helpers import VALUES, hexkey, same

from ajug.errors import ResultMissing, StoreLocked, UsageError
from ajug.stores import open_store
from ajug.stores.file import FileStore
from ajug.stores.memory import MemoryStore

pytestmark = pytest.mark.timeout(60)


def test_round_trip_values(store: Any) -> None:
    for i, value in enumerate(VALUES):
        size = store.save(hexkey(i), value)
        assert size > 0
    for i, value in enumerate(VALUES):
        assert same(store.load(hexkey(i)), value)


def test_large_array_round_trip(store: Any) -> None:
    """Over the redis chunk size used by the fixture (256 KiB): exercises chunking."""
    arr = np.random.default_rng(1).standard_normal((300, 1000))
    store.save(hexkey("big"), arr)
    out = store.load(hexkey("big"))
    assert np.array_equal(out, arr)
    assert out.flags.writeable


def test_saved_value_is_a_snapshot(store: Any) -> None:
    value = {"a": [1]}
    store.save(hexkey(1), value)
    value["a"].append(2)
    loaded = store.load(hexkey(1))
    loaded["a"].append(3)
    assert store.load(hexkey(1)) == {"a": [1]}


def test_missing(store: Any) -> None:
    with pytest.raises(ResultMissing):
        store.load(hexkey("nope"))
    with pytest.raises(KeyError):  # ResultMissing is also a KeyError
        store.load(hexkey("nope"))
    assert store.exists([hexkey("nope")]) == [False]
    assert store.metadata([hexkey("nope")]) == [None]
    assert not store.contains(hexkey("nope"))


def test_none_is_a_result(store: Any) -> None:
    store.save(hexkey(0), None)
    assert store.contains(hexkey(0))
    assert store.load(hexkey(0)) is None


def test_metadata_round_trip(store: Any) -> None:
    meta = {"func": "jugfile.compute", "src": "ab12", "rt": 1.5, "worker": "node1:42"}
    before = time.time()
    size = store.save(hexkey(1), np.zeros(1000), meta)
    store.save(hexkey(2), 5)
    got = store.metadata([hexkey(1), hexkey("missing"), hexkey(2)])
    assert got[1] is None
    assert {k: got[0][k] for k in meta} == meta
    assert got[0]["size"] == size
    assert before - 1 <= got[0]["ts"] <= time.time() + 1
    assert got[2]["size"] > 0 and "func" not in got[2]


def test_overwrite(store: Any) -> None:
    store.save(hexkey(1), np.ones(100_000))
    store.save(hexkey(1), "small now", {"func": "f2"})
    assert store.load(hexkey(1)) == "small now"
    assert store.metadata([hexkey(1)])[0]["func"] == "f2"


def test_batched_exists_5000(store: Any) -> None:
    keys = [hexkey(i) for i in range(5000)]
    for k in keys[::2]:
        store.save(k, 1)
    t0 = time.monotonic()
    answer = store.exists(keys)
    elapsed = time.monotonic() - t0
    assert answer == [i % 2 == 0 for i in range(5000)]
    assert elapsed < 2.0
    assert store.metadata(keys[:4])[1] is None


def test_remove_and_list(store: Any) -> None:
    keys = [hexkey(i) for i in range(20)]
    for k in keys:
        store.save(k, k)
    store.save(hexkey("big"), np.ones(100_000))
    assert sorted(store.list()) == sorted([*keys, hexkey("big")])
    assert store.remove([*keys[:5], hexkey("absent"), hexkey("big")]) == 6
    assert sorted(store.list()) == sorted(keys[5:])
    assert store.exists(keys[:6]) == [False] * 5 + [True]
    with pytest.raises(ResultMissing):
        store.load(hexkey("big"))
    assert store.metadata([keys[0]]) == [None]


BAD_KEYS = ["../etc/passwd", "ab", "a/b/c", "x" * 300, "k*y", "a:b", "abc\ndef", "", "abc\n"]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_bad_keys_are_refused(store: Any, bad: str) -> None:
    with pytest.raises(UsageError):
        store.save(bad, 1)
    with pytest.raises(UsageError):
        store.exists([bad])


@pytest.mark.parametrize("bad", [*BAD_KEYS, None, 12])
def test_a_bad_key_among_many_is_refused(bad: Any) -> None:
    """A big graph's keys are checked at once (``check_keys``), as strictly as one by one."""
    from ajug.stores.base import check_keys

    keys = [hexkey(i) for i in range(3000)]
    check_keys(keys)
    for where in (0, 1500, 2999):
        with pytest.raises(UsageError):
            check_keys([*keys[:where], bad, *keys[where:]])


def test_owner_lock(store: Any) -> None:
    first = store.owner_lock(ttl_s=30)
    second = store.owner_lock(ttl_s=30)
    first.acquire()
    with pytest.raises(StoreLocked) as err:
        second.acquire()
    assert "pid" in str(err.value)
    first.renew()
    first.release()
    second.acquire()
    with pytest.raises(StoreLocked):
        first.renew()
    second.release()


def test_expired_lock_is_taken_over(store: Any) -> None:
    first = store.owner_lock(ttl_s=0.2)
    first.acquire()
    time.sleep(0.35)
    second = store.owner_lock(ttl_s=30)
    second.acquire()
    with pytest.raises(StoreLocked):
        first.renew()
    first.release()  # not ours any more: a no-op
    with pytest.raises(StoreLocked):
        store.owner_lock().acquire()
    second.release()


def test_cleanup_on_clean_store(store: Any) -> None:
    store.save(hexkey(1), np.ones(100_000))
    assert store.cleanup() == 0
    assert np.array_equal(store.load(hexkey(1)), np.ones(100_000))


# ------------------------------------------------------------------------------- open_store


def test_open_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("proj.ajugdata")
    assert isinstance(rel, FileStore) and rel.root == str(tmp_path / "proj.ajugdata")
    absolute = open_store(str(tmp_path / "x"), fsync=True)
    assert isinstance(absolute, FileStore) and absolute.fsync
    assert open_store(f"file:{tmp_path}/y").root == str(tmp_path / "y")
    assert open_store(f"file://{tmp_path}/z").root == str(tmp_path / "z")
    assert isinstance(open_store(tmp_path / "p"), FileStore)
    assert isinstance(open_store("memory:"), MemoryStore)
    assert open_store("memory:shared") is open_store("memory:shared")
    assert open_store("memory:") is not open_store("memory:")
    for bad in ("ftp://host/x", "s3://bucket/k", ""):
        with pytest.raises(UsageError) as err:
            open_store(bad)
        assert "redis://" in str(err.value) or "empty" in str(err.value)


def test_open_store_redis_url() -> None:
    from ajug.stores.redis import RedisStore

    s = open_store("redis://127.0.0.1:1/3?namespace=proj&chunk_mib=8&retry_s=0.5")
    try:
        assert isinstance(s, RedisStore)
        assert s.keys.ns == "proj:"
        assert s.chunk_bytes == 8 << 20
        assert s.retry_s == 0.5
        assert s.r.connection_pool.connection_kwargs["db"] == 3
    finally:
        s.close()
    with pytest.raises(UsageError):
        open_store("redis://127.0.0.1:1/0", bogus_option=1)
