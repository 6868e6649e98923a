"""A jug project moves to ajug and keeps its results.

The same jugfiles (``jugfile_sources``), written once for jug and once for ajug, must define
the same tasks with the same identities; and a directory that ``jug execute`` filled must be,
for ajug's file store, a store where every task of the jugfile is already done, with the
values ajug itself would compute.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jugfile_sources as J
import numpy as np
import pytest

import ajug.task
from ajug.executor import execute_jugfile
from ajug.jugfile import load_jugfile
from ajug.stores import open_store
from ajug.task import Task, value

jug_jug = pytest.importorskip("jug.jug")
import jug.task  # noqa: E402

JUG_RUN_TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    prev_ajug, prev_jug = Task.store, jug.task.Task.store
    ajug.task.reset()
    del jug.task.alltasks[:]
    yield
    ajug.task.reset()
    del jug.task.alltasks[:]
    Task.store, jug.task.Task.store = prev_ajug, prev_jug


def _unique(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(keys))


@pytest.mark.parametrize("name", sorted(J.SOURCES))
def test_jugfile_defines_the_same_tasks_as_with_jug(name: str, tmp_path: Path) -> None:
    jug_file = J.write(tmp_path / "jug", name, "jug")
    ajug_file = J.write(tmp_path / "ajug", name, "ajug")
    jug_jug.init(str(jug_file), "dict_store", on_error="propagate")
    jug_keys = _unique([t.hash().decode() for t in jug.task.alltasks])
    loaded = load_jugfile(ajug_file, open_store("memory:"))
    assert [t.key for t in loaded.tasks] == jug_keys
    assert [t.name for t in loaded.tasks] == _unique_names(jug.task.alltasks)


def _unique_names(tasks: list[Any]) -> list[str]:
    seen: dict[str, str] = {}
    for t in tasks:
        seen.setdefault(t.hash().decode(), t.name)
    return list(seen.values())


# -- results written by jug, read by ajug ---------------------------------------------------------
@pytest.fixture(scope="module")
def jug_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run ``jug execute`` on every jugfile (concurrently); name -> its jugdir."""
    root = tmp_path_factory.mktemp("jug_runs")
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name in sorted(J.SOURCES):
        workdir = root / name
        jf = J.write(workdir, name, "jug")
        jugdir = workdir / "jugdata"
        cmd = [
            sys.executable,
            "-c",
            "from jug.jug import main; main()",
            "execute",
            jf.name,
            "--jugdir",
            str(jugdir),
            "--will-cite",
        ]
        log = open(workdir / "jug.log", "wb")
        try:
            procs[name] = (
                subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT),
                jugdir,
            )
        finally:
            log.close()
    out: dict[str, Path] = {}
    for name, (proc, jugdir) in procs.items():
        try:
            rc = proc.wait(timeout=JUG_RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        log_text = (jugdir.parent / "jug.log").read_text(errors="replace")
        assert rc == 0, f"jug execute {name} failed ({rc}):\n{log_text}"
        out[name] = jugdir
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equality that sees through numpy arrays and NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("name", sorted(J.SOURCES))
def test_ajug_finds_every_result_jug_computed(
    name: str, jug_runs: dict[str, Path], tmp_path: Path
) -> None:
    # what ajug computes by itself
    mine = execute_jugfile(J.write(tmp_path / "mine", name), open_store("memory:"))
    mine.raise_for_failures()
    mine_values = {t.key: value(t) for t in mine.jugfile.tasks}
    ajug.task.reset()

    # the same jugfile, on the directory jug filled
    store = open_store(str(jug_runs[name]))
    loaded = load_jugfile(J.write(tmp_path / "theirs", name), store)
    assert not loaded.hit_barrier  # every barrier is passed: jug computed what they wait for
    keys = [t.key for t in loaded.tasks]
    # the same tasks (fewer when a CompoundTask's result stands for its sub-graph)
    assert set(keys) <= set(mine_values)
    if "compound" not in name:
        assert keys == list(mine_values)
    missing = [t.name for t, ok in zip(loaded.tasks, store.exists(keys), strict=True) if not ok]
    assert not missing, f"results jug computed that ajug does not find: {missing}"
    for t in loaded.tasks:
        theirs = value(t)
        assert same_value(theirs, mine_values[t.key]), f"{t.name}: {theirs!r}"
    for var, expected in J.EXPECTED[name].items():
        assert same_value(value(loaded.module.__dict__[var]), expected), var
    # and nothing is left to run
    again = execute_jugfile(J.write(tmp_path / "theirs", name), store)
    assert again.executed == [] and again.ok


def test_jug_layout_is_read_in_place(jug_runs: dict[str, Path]) -> None:
    """ajug reads jug's files where jug put them (``<jugdir>/<key[:2]>/<key[2:]>``), as they are."""
    jugdir = jug_runs["simple"]
    files = sorted(p for p in jugdir.rglob("*") if p.is_file() and len(p.parent.name) == 2)
    before = {p: p.read_bytes() for p in files}
    store = open_store(str(jugdir))
    keys = [p.parent.name + p.name for p in files]
    assert len(keys) == 32 and all(store.exists(keys))
    assert all(isinstance(store.load(k), int) for k in keys)
    assert {p: p.read_bytes() for p in files} == before


def test_taskgenerator_as_an_argument_has_jugs_identity() -> None:
    import identity_funcs as F

    jug_tg = jug.task.TaskGenerator(F.double)
    ajug_tg = ajug.task.TaskGenerator(F.double)
    jug_key = jug.task.Task(F.f2, jug_tg, 3).hash().decode()
    assert ajug.task.Task(F.f2, ajug_tg, 3).key == jug_key
