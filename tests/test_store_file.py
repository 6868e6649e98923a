"""The file store: jug's layout and results, damage, crashes, a full disk, the owner lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from store_helpers import GiB, dead_pid, files_under, hexkey, run_1gib_round_trip, subprocess_env

from ajug.errors import ResultMissing, StoreFull, StoreLocked, StoreUnreachable
from ajug.stores.file import MARKER_FILE, TMP_DIR, FileStore
from ajug.stores.filelock import LOCK_FILE
from ajug.stores.filetmp import TMP_MAX_AGE_S

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------ jug's files


@pytest.mark.parametrize("compress_numpy", [False, True], ids=["npy", "zlib"])
def test_reads_results_written_by_jug(tmp_path: Path, compress_numpy: bool) -> None:
    from jug.backends.file_store import file_store

    jug = file_store(str(tmp_path / "x.jugdata"), compress_numpy=compress_numpy)
    values = {hexkey("none"): None, hexkey("int"): 42, hexkey("dict"): {"a": [1, 2], "b": "c"}}
    values[hexkey("arr")] = np.arange(12.0).reshape(3, 4)
    for k, v in values.items():
        jug.dump(v, k)

    store = FileStore(tmp_path / "x.jugdata")
    assert sorted(store.list()) == sorted(values)
    assert store.exists(list(values)) == [True] * 4
    for k, v in values.items():
        got = store.load(k)
        if isinstance(v, np.ndarray):
            assert np.array_equal(got, v) and got.dtype == v.dtype
        else:
            assert got == v
    meta = store.metadata([hexkey("int")])[0]
    assert meta["jug"] is True and meta["size"] > 0 and meta["ts"] > 0


def test_layout_matches_jug(tmp_path: Path) -> None:
    """jug finds our results by name (it cannot decode them, but can_load/list see them)."""
    from jug.backends.file_store import file_store

    store = FileStore(tmp_path / "p.jugdata")
    key = hexkey(1)
    store.save(key, {"x": 1})
    assert (tmp_path / "p.jugdata" / key[:2] / key[2:]).is_file()
    jug = file_store(str(tmp_path / "p.jugdata"))
    assert jug.can_load(key)
    assert [k.decode() for k in jug.list()] == [key]


def test_creates_directory_on_first_save_only(tmp_path: Path) -> None:
    d = tmp_path / "later"
    store = FileStore(d)
    assert store.exists([hexkey(1)]) == [False]
    assert list(store.list()) == []
    assert not d.exists()
    store.save(hexkey(1), 1)
    assert store.load(hexkey(1)) == 1

    strict = FileStore(tmp_path / "never", create=False)
    with pytest.raises(StoreUnreachable, match="does not exist"):
        strict.save(hexkey(1), 1)


def test_fsync_and_compress_options(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", fsync=True, compress=True)
    arr = np.zeros(1_000_000)
    size = store.save(hexkey(1), arr)
    assert size < arr.nbytes / 10
    assert np.array_equal(store.load(hexkey(1)), arr)
    assert files_under(tmp_path / "s" / TMP_DIR) == []


# ------------------------------------------------------------------------------------ damage


@pytest.mark.parametrize("how", ["truncate", "flip", "empty-ajug-off", "garbage"])
def test_damaged_result_reads_as_missing(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path / "s", read_jug=(how != "empty-ajug-off"))
    key = hexkey(1)
    store.save(key, {"value": np.arange(1000)})
    path = tmp_path / "s" / key[:2] / key[2:]
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip":
        data[len(data) - 100] ^= 0x40
    elif how == "empty-ajug-off":
        data = bytearray()
    else:
        data = bytearray(b"\x78\x9c not really zlib")
    path.write_bytes(bytes(data))

    assert store.exists([key]) == [True]  # presence only...
    with pytest.raises(ResultMissing, match="damaged"):
        store.load(key)
    assert "damaged" in caplog.text
    assert store.exists([key]) == [False]  # ...until a load found the damage
    with pytest.raises(ResultMissing):
        store.load(key)
    assert store.cleanup() == len(data)
    assert files_under(tmp_path / "s" / TMP_DIR) == []
    store.save(key, "again")
    assert store.load(key) == "again"


def test_damaged_jug_result_reads_as_missing(tmp_path: Path) -> None:
    from jug.backends.file_store import file_store

    key = hexkey(2)
    file_store(str(tmp_path / "j"), compress_numpy=True).dump(np.arange(5000), key)
    path = tmp_path / "j" / key[:2] / key[2:]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ResultMissing):
        FileStore(tmp_path / "j").load(key)


# ------------------------------------------------------------------------- crash mid-save

SAVE_AND_HANG = """
import sys
import numpy as np
from ajug.stores.file import FileStore
store = FileStore(sys.argv[1], fsync=True)
value = np.full(200 << 20, 7, dtype=np.uint8)
print("ready", flush=True)
store.save(sys.argv[2], value)
print("saved", flush=True)
"""


def test_sigkill_mid_save_leaves_no_partial_result(tmp_path: Path) -> None:
    """The temp file is growing when we kill the writer: the key must not appear, ever."""
    root = tmp_path / "s"
    store = FileStore(root)
    key = hexkey("killed")
    killed_mid_save = 0
    for _attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_AND_HANG, str(root), key],
            stdout=subprocess.PIPE,
            env=subprocess_env(),
        )
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline() == b"ready\n"
            deadline = time.monotonic() + 20
            seen = 0
            while time.monotonic() < deadline and proc.poll() is None:
                sizes = (
                    [p.stat().st_size for p in (root / TMP_DIR).rglob("*.tmp")]
                    if (root / TMP_DIR).exists()
                    else []
                )
                if sizes and sizes[0] > seen > 0:
                    break  # growing
                seen = max(sizes or [seen])
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            proc.stdout.close()
        leftovers = files_under(root / TMP_DIR)
        if store.exists([key]) == [True]:  # the save won the race with the kill: whole value
            assert leftovers == []
            got = store.load(key)
            assert got.shape == (200 << 20,) and got[0] == 7 and got[-1] == 7
            store.remove([key])
            continue
        killed_mid_save += 1
        with pytest.raises(ResultMissing):
            store.load(key)
        assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
        size = leftovers[0].stat().st_size
        assert store.cleanup(dry_run=True) == size
        assert store.cleanup() == size
        assert files_under(root / TMP_DIR) == []
        break
    assert killed_mid_save, "the writer always finished before it could be killed"


def test_cleanup_keeps_live_writers_and_removes_old_or_dead(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    store.save(hexkey(1), 1)
    tmp = tmp_path / "s" / TMP_DIR
    host = socket.gethostname()
    live = tmp / f"{host}.{os.getpid()}.aaaa.tmp"
    dead = tmp / f"{host}.{dead_pid()}.bbbb.tmp"
    other_host = tmp / "elsewhere.example.1.cccc.tmp"
    old = tmp / "elsewhere.example.2.dddd.tmp"
    for p in (live, dead, other_host, old):
        p.write_bytes(b"x" * 100)
    past = time.time() - TMP_MAX_AGE_S - 60
    os.utime(old, (past, past))
    assert store.cleanup() == 200
    assert sorted(p.name for p in tmp.iterdir() if p.is_file()) == sorted([live.name, other_host.name])


def test_writers_leave_no_empty_temporary_directories(tmp_path: Path) -> None:
    """Each writing process has tmp/<host>.<pid>/: it goes when the store is closed; those of
    writers that died go when a coordinator takes the store (its owner lock)."""
    tmp = tmp_path / "s" / TMP_DIR
    host = socket.gethostname()
    store = FileStore(tmp_path / "s")
    store.save(hexkey(1), 1)
    assert [p.name for p in tmp.iterdir()] == [f"{host}.{os.getpid()}"]
    store.close()
    assert list(tmp.iterdir()) == []
    store.save(hexkey(2), 2)  # closed and used again: works, and makes it again
    assert store.load(hexkey(2)) == 2
    (tmp / f"{host}.{dead_pid()}").mkdir()  # a writer killed on this host
    (tmp / "elsewhere.example.7").mkdir()  # another host's: maybe alive
    lock = FileStore(tmp_path / "s").owner_lock(ttl_s=10)
    lock.acquire()
    lock.release()
    assert sorted(p.name for p in tmp.iterdir()) == sorted(
        [f"{host}.{os.getpid()}", "elsewhere.example.7"])


# ----------------------------------------------------------------------------- big arrays


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_1gib_array_memory(tmp_path: Path) -> None:
    peak = run_1gib_round_trip(str(tmp_path / "big"))
    assert peak < 2.5 * GiB, f"peak RSS {peak / GiB:.2f} GiB"


# ------------------------------------------------------------------------------- full disk


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a 5 MiB tmpfs: {res.stderr.decode().strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk(small_tmpfs: Path) -> None:
    store = FileStore(small_tmpfs / "s")
    key = hexkey("big")
    noise = np.random.default_rng(0).integers(0, 256, size=8 << 20, dtype=np.uint8)
    with pytest.raises(StoreFull, match=r"is full: free space") as err:
        store.save(key, noise)
    assert str(small_tmpfs / "s") in str(err.value)
    # neither a partial result nor a temp file (the marker says the store is ajug's)
    assert [p.name for p in files_under(small_tmpfs)] == [MARKER_FILE]
    assert store.exists([key]) == [False]
    store.save(key, np.arange(1000))
    assert np.array_equal(store.load(key), np.arange(1000))


# ------------------------------------------------------------------------------ owner lock


def test_lock_refusal_names_host_and_pid(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    holder = store.owner_lock(ttl_s=60)
    holder.acquire()
    info = json.loads((tmp_path / "s" / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(StoreLocked) as err:
        FileStore(tmp_path / "s").owner_lock().acquire()
    msg = str(err.value)
    assert socket.gethostname() in msg and f"pid {os.getpid()}" in msg and "expires at" in msg
    holder.release()
    assert not (tmp_path / "s" / LOCK_FILE).exists()


def test_lock_of_dead_local_process_is_taken_over(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    store.save(hexkey(1), 1)
    lock = {
        "owner": "x",
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "expires_at": time.time() + 3600,
    }
    (tmp_path / "s" / LOCK_FILE).write_text(json.dumps(lock))
    mine = store.owner_lock()
    mine.acquire()
    assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["owner"] == mine.owner
    mine.release()


def test_live_lock_on_another_host_is_respected(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    store.save(hexkey(1), 1)
    lock = {"owner": "x", "host": "node7", "pid": dead_pid(), "expires_at": time.time() + 3600}
    (tmp_path / "s" / LOCK_FILE).write_text(json.dumps(lock))
    with pytest.raises(StoreLocked, match=r"node7 \(pid"):
        store.owner_lock().acquire()
    lock["expires_at"] = time.time() - 1
    (tmp_path / "s" / LOCK_FILE).write_text(json.dumps(lock))
    store.owner_lock().acquire()


def test_unreadable_old_lock_is_taken_over(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    store.save(hexkey(1), 1)
    path = tmp_path / "s" / LOCK_FILE
    path.write_text("")
    past = time.time() - 60
    os.utime(path, (past, past))
    mine = store.owner_lock()
    mine.acquire()
    assert mine.took_over
    assert json.loads(path.read_text())["owner"] == mine.owner  # the lock file is ours now
    mine.release()
    assert not path.exists()


def test_temp_names_are_unique_across_threads(tmp_path: Path) -> None:
    """A worker saves from two threads (its batch's flush thread and its main thread), the
    coordinator writes failure records beside its loads: no two writes may share a temp file."""
    import sys
    import threading

    from ajug.stores.file import FileStore

    store = FileStore(str(tmp_path / "s"))
    names: list[list[str]] = [[] for _ in range(8)]
    go = threading.Barrier(8)

    def make(out: list[str]) -> None:
        go.wait()
        for _ in range(3000):
            out.append(store._tmp_name())

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=make, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
    every = [x for n in names for x in n]
    assert len(every) == 24000 and len(set(every)) == len(every)
