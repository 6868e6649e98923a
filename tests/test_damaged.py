"""Damaged results (cut short, to 0 bytes too; random bytes; a flipped bit) never read as a
value: they count as missing wherever they are found — a dependent's load, the start-up scan,
status — and are computed again in the same run. jug's empty-file None stays readable in a
store that jug made."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inproc import Engine
from procs import ajug_cmd, copy_jugfile, env, values
from store_helpers import hexkey

from ajug.errors import ResultMissing
from ajug.stores.file import MARKER_FILE, FileStore

DAMAGES = ("half", "empty", "random", "flip")


def damage(data: bytes, how: str) -> bytes:
    if how == "half":
        return data[: len(data) // 2]
    if how == "empty":
        return b""
    if how == "random":
        return os.urandom(len(data))
    b = bytearray(data)
    b[len(b) - 20] ^= 0x08  # a bit inside the payload: only the payload checksum sees it
    return bytes(b)


def _raw(store: Any, key: str) -> tuple[Callable[[], bytes], Callable[[bytes], None]]:
    """Read and overwrite a stored value's bytes behind the store's back."""
    if hasattr(store, "root"):
        path = Path(store.root) / key[:2] / key[2:]
        return path.read_bytes, path.write_bytes
    if hasattr(store, "r"):
        rkey = store.keys.result(key)
        return (lambda: store.r.get(rkey)), (lambda b: store.r.set(rkey, b))
    return (lambda: store._data[key]), (lambda b: store._data.__setitem__(key, b))


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_result_is_never_a_value(store: Any, how: str) -> None:
    keys = [hexkey(f"{how}{i}") for i in range(3)]
    sizes = [store.save(k, {"i": i, "a": np.arange(200)}) for i, k in enumerate(keys)]
    read, write = _raw(store, keys[1])
    write(damage(read(), how))
    assert store.verify(keys) == [None, store.verify([keys[1]])[0], None]
    assert store.verify([keys[1]])[0]  # every kind of damage is found by reading it whole
    # a cheap look (header and length) finds all but a flipped payload bit; the file store's
    # look at the size the writer reported (one stat) also misses a same-length overwrite
    expected = [True, how == "flip", True]
    assert store.intact(keys) == expected
    if hasattr(store, "root") and how == "random":
        expected[1] = True
    assert store.intact(keys, sizes) == expected
    with pytest.raises(ResultMissing, match="damaged") as e:
        store.load(keys[1])
    assert e.value.key == keys[1]
    assert store.load(keys[0])["i"] == 0 and store.load(keys[2])["i"] == 2


def test_empty_file_is_damage_in_an_ajug_store_and_none_in_a_jug_store(tmp_path: Path) -> None:
    from jug.backends.file_store import file_store

    key = hexkey("none")
    ajugs = FileStore(tmp_path / "a")
    ajugs.save(key, 5)
    assert (tmp_path / "a" / MARKER_FILE).exists()
    (tmp_path / "a" / key[:2] / key[2:]).write_bytes(b"")
    assert ajugs.intact([key]) == [False]
    with pytest.raises(ResultMissing, match="damaged"):
        ajugs.load(key)
    # jug's own store: jug writes None as an empty file, and it reads as None
    file_store(str(tmp_path / "j")).dump(None, key)
    assert (tmp_path / "j" / key[:2] / key[2:]).stat().st_size == 0
    jugs = FileStore(tmp_path / "j")
    assert jugs.intact([key]) == [True]
    assert jugs.load(key) is None
    jugs.save(hexkey("later"), 1)  # ajug writing into jug's store does not make it ajug's
    assert not (tmp_path / "j" / MARKER_FILE).exists()
    assert jugs.load(key) is None


def run_here(engine: Engine, jugfile: Path) -> None:
    """One run served in this process with two workers (as ``ajug run -j 2``)."""
    coord = engine.make_coordinator(jugfile)
    workers = [engine.run_worker(coord.port) for _ in range(2)]
    assert coord.wait(120) == 0
    for w in workers:
        assert w.wait(30) == 0


def test_damaged_results_are_computed_again_in_one_run(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two runs, results are cut short (to 0 bytes too), overwritten with random bytes
    or get a flipped bit: the next run finds every one of them and computes it again. The runs
    in this process (tests/inproc.py); status, keys and check by the commands."""
    jugfile = copy_jugfile(tmp_path, "steps.py")
    runlog = tmp_path / "runs.log"
    e = env(AJUG_TEST_STEP_S="0", AJUG_TEST_RUNLOG=str(runlog))
    monkeypatch.setenv("AJUG_TEST_STEP_S", "0")
    monkeypatch.setenv("AJUG_TEST_RUNLOG", str(runlog))
    run_here(engine, jugfile)
    store = tmp_path / "steps.ajugdata"
    assert list((store / "tmp").iterdir()) == []  # no writer's directory left behind
    code = ("import json, ajug\n"
            f"_, ns = ajug.init({str(jugfile)!r})\n"
            "print(json.dumps([t.key for t in ns['steps']] + [ns['total'].key]))\n")
    out = subprocess.run([os.sys.executable, "-c", code], env=e, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    keys = json.loads(out.stdout)
    steps, total = keys[:40], keys[40]
    damaged = {}
    for n, key in enumerate(steps[:24]):
        path = store / key[:2] / key[2:]
        how = DAMAGES[n % 4]
        path.write_bytes(damage(path.read_bytes(), how))
        damaged[key] = how
    path = store / total[:2] / total[2:]
    path.write_bytes(path.read_bytes()[:-1])  # the reduce again: it loads every input

    # status counts what is visibly damaged as not done (the 6 flipped bits look whole)
    out = subprocess.run(ajug_cmd("status", str(jugfile), "--json"), env=e, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["totals"]["done"] == 41 - 1 - 18

    runlog.write_text("")
    run_here(engine, jugfile)
    assert values(jugfile, ["total"], AJUG_TEST_STEP_S="0")["total"] == 3 * sum(range(40))
    ran = runlog.read_text().split()
    assert sorted(ran) == sorted(["add_all"] + [f"step:{steps.index(k)}" for k in damaged])
    check = subprocess.run(ajug_cmd("check", str(jugfile), "--verify"), env=e,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "41/41 tasks done; 41 stored result(s) read whole, 0 damaged" in check.stdout


def test_check_verify_lists_and_sets_aside_damaged_results(tmp_path: Path) -> None:
    jugfile = copy_jugfile(tmp_path, "steps.py")
    e = env(AJUG_TEST_STEP_S="0")
    first = subprocess.run(ajug_cmd("run", str(jugfile), "-j", "1", "--no-progress"), env=e,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    store = tmp_path / "steps.ajugdata"
    files = sorted(p for p in store.glob("??/*") if p.is_file())
    for p, how in zip(files, DAMAGES):
        p.write_bytes(damage(p.read_bytes(), how))
    out = subprocess.run(ajug_cmd("check", str(jugfile), "--verify"), env=e,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    listed = [line for line in out.stdout.splitlines() if line.startswith("ajug: damaged: ")]
    assert sorted(line.split()[2] for line in listed) == sorted(
        p.parent.name + p.name for p in files[:4])
    assert "37/41 tasks done; 41 stored result(s) read whole, 4 damaged" in out.stdout
    assert all(not p.exists() for p in files[:4])  # set aside: a run computes them again
    bad = subprocess.run(ajug_cmd("check", "127.0.0.1:1", "--verify"), env=e,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "give the jugfile" in bad.stderr
