"""The task model (jug's semantics) and the in-process executor.

TaskGenerator, value, Tasklets, iteratetask, return_tuple, CachedFunction, NoLoad, barrier and
bvalue, write_task_out, CompoundTask, the utils, and jugfiles like jug's own test jugfiles.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import identity_funcs as F
import jugfile_sources as J
import numpy as np
import pytest

import ajug.task
from ajug import (
    CachedFunction,
    Task,
    TaskGenerator,
    Tasklet,
    iteratetask,
    return_tuple,
    value,
)
from ajug.compound import CompoundTask, CompoundTaskGenerator
from ajug.errors import TaskFailed, UsageError
from ajug.executor import execute, execute_jugfile
from ajug.io import NoLoad, write_task_out
from ajug.jugfile import load_jugfile
from ajug.stores import open_store
from ajug.utils import CustomHash, cached_glob, identity, jug_execute, timed_path


@pytest.fixture
def store() -> Iterator[Any]:
    ajug.task.reset()
    s = open_store("memory:")
    prev, Task.store = Task.store, s
    yield s
    Task.store = prev
    ajug.task.reset()


class CountingStore:
    """Wraps a store and counts saves per key."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.saves: list[str] = []

    def save(self, key: str, value: Any, meta: dict[str, Any] | None = None) -> int:
        self.saves.append(key)
        return self.inner.save(key, value, meta)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- functions the tasks below run (module level: tasks name them) ----------------------------
CALLS: list[Any] = []


def counted(x: Any) -> Any:
    CALLS.append(x)
    return x * 10


def fails(x: Any) -> Any:
    raise RuntimeError(f"boom {x}")


@TaskGenerator
def tg_double(x: Any) -> Any:
    return 2 * x


@TaskGenerator
def load_partials(ts: list[Any]) -> float:
    assert all(isinstance(t, NoLoad) for t in ts)
    return float(sum(value(t.base) for t in ts))


@return_tuple(2)
@TaskGenerator
def split(x: Any) -> tuple[Any, Any]:
    return x, x + 1


@return_tuple(3)
@TaskGenerator
def not_three(x: Any) -> tuple[Any, Any]:
    return x, x


# -- Task, TaskGenerator, value ---------------------------------------------------------------
def test_task_generator_records_a_call(store: Any) -> None:
    t = tg_double(21)
    assert isinstance(t, Task)
    assert t.name == f"{__name__}.tg_double"
    assert t.f is tg_double.f
    assert t.args == (21,) and t.kwargs == {}
    assert ajug.task.alltasks == [t]
    assert not t.can_load()
    assert t.can_run()
    assert len(t.key) == 40 and t.hash() == t.key.encode()
    assert t.key == tg_double(21).key != tg_double(22).key


def test_value_is_recursive(store: Any) -> None:
    a, b = tg_double(1), tg_double(2)
    nested = [a, (b, {"k": [a, 3]}), "plain"]
    run = execute(store=store)
    assert run.ok and len(run.executed) == 2
    assert value(nested) == [2, (4, {"k": [2, 3]}), "plain"]
    assert value(a) == a.result == a.value() == 2
    a.unload()
    assert not a.is_loaded() and value(a) == 2  # loaded again from the store
    assert value(5) == 5


def test_tasklets(store: Any) -> None:
    t = Task(F.pairs, 4)
    d = Task(dict, a=1, b=[10, 20])
    items = [t[0], t[-1], t[1:3], t[2][1], d["a"], d["b"][1], Tasklet(t[3], F.f1)]
    key_arg = Task(F.f1, t[Task(F.f0)])
    dependent = Task(F.add, t[2][0], d["b"][0])
    assert list(dependent.dependencies()) == [t, d] or list(dependent.dependencies()) == [d, t]
    run = execute(store=store)
    assert run.ok
    expected = F.pairs(4)
    assert value(items) == [
        expected[0],
        expected[-1],
        expected[1:3],
        expected[2][1],
        1,
        20,
        expected[3],
    ]
    assert value(key_arg) == expected[0]
    assert value(dependent) == 2 + 10
    assert t[0].can_load()
    with pytest.raises(NotImplementedError):
        iter(t)


def test_a_tasklet_depends_on_every_task_its_operation_reads(store: Any) -> None:
    """``r[z]``, ``r[(z, 0)]``, a Tasklet of such a Tasklet, a partial's bound Task: each
    Task the value needs is a dependency, so no walker (leasing, status, invalidation) lets
    the dependent start before it (jug's slice_task.py shape failed 1 run in 6)."""
    from functools import partial

    from ajug.graph import build_graph

    r = Task(F.pairs, 4)
    z = Task(F.f0)
    o = Task(F.f1, 1)
    cases = {
        "index": Task(F.f1, r[z]),
        "tuple index": Task(F.f1, r[(z, 0)]),
        "tasklet of tasklet": Task(F.f1, r[z][o]),
        "partial": Task(F.f1, Tasklet(r, partial(F.add, o))),
    }
    want = {"index": {r, z}, "tuple index": {r, z}, "tasklet of tasklet": {r, z, o},
            "partial": {r, o}}
    for what, t in cases.items():
        assert set(t.dependencies()) == want[what], what
    g = build_graph(list(ajug.task.alltasks), encode=False)
    for what, t in cases.items():
        deps = {g.keys[j] for j in g.deps(g.index[t.key])}
        assert deps == {d.key for d in want[what]}, what


def test_iteratetask(store: Any) -> None:
    t = Task(F.pairs, 3)
    a, b, c = iteratetask(t, 3)
    it = iteratetask(t, 3)
    assert len(it) == 3
    with pytest.raises(IndexError):
        it[3]
    assert a.__jug_hash__() == t[0].__jug_hash__()
    execute(store=store)
    assert value([a, b, c]) == F.pairs(3)


def test_return_tuple(store: Any) -> None:
    x, y = split(1)
    assert isinstance(x, Tasklet) and isinstance(y, Tasklet)
    z = tg_double(y)
    p, q, r = not_three(5)
    bad = tg_double(p)
    run = execute(store=store)
    assert value([x, y, z]) == [1, 2, 4]
    # a wrong size is found when the value is used: the dependent fails, clearly
    assert list(run.failures) == [bad.key]
    assert "expected a tuple of size 3" in run.failures[bad.key].traceback


def test_cached_function_runs_once_and_is_cached(store: Any) -> None:
    CALLS.clear()
    assert CachedFunction(counted, 4) == 40
    assert CALLS == [4]
    key = Task(counted, 4).key
    assert store.contains(key)
    ajug.task.reset()
    assert CachedFunction(counted, 4) == 40
    assert CALLS == [4]  # loaded, not called again
    assert store.metadata([key])[0]["func"] == f"{__name__}.counted"


def test_cached_function_refuses_uncomputed_inputs(store: Any) -> None:
    with pytest.raises(ValueError, match="not computed"):
        CachedFunction(counted, tg_double(1))


def test_noload_passes_the_task_itself(store: Any) -> None:
    parts = [tg_double(i) for i in range(5)]
    wrapped = [NoLoad(p) for p in parts]
    s = load_partials(wrapped)
    assert set(s.dependencies()) == set(parts)
    assert value(wrapped[0]) is wrapped[0]
    run = execute(store=store)
    assert run.ok
    assert value(s) == 2.0 * sum(range(5))
    with pytest.raises(NotImplementedError):
        wrapped[0][0]


# -- barrier / bvalue ---------------------------------------------------------------------------
BARRIER_JUGFILE = """
from ajug import TaskGenerator, barrier, bvalue

@TaskGenerator
def double(x):
    return 2 * x

two = double(1)
barrier()
four = double(two)
n = bvalue(four)
eight = double(n)
"""


def test_barrier_stops_loading_until_the_tasks_before_it_are_done(tmp_path: Path) -> None:
    jf = tmp_path / "jf_barrier.py"
    jf.write_text(BARRIER_JUGFILE)
    store = open_store("memory:")
    first = load_jugfile(jf, store)
    assert first.hit_barrier
    assert [t.name for t in first.tasks] == ["jf_barrier.double"]
    assert "four" not in first.module.__dict__
    assert execute(first.tasks, store).executed == [first.tasks[0].key]
    second = load_jugfile(jf, store)
    assert second.hit_barrier  # now at bvalue(four)
    assert len(second.tasks) == 2 and "four" in second.module.__dict__
    execute(second.tasks, store)
    third = load_jugfile(jf, store)
    assert not third.hit_barrier
    assert len(third.tasks) == 3
    assert third.module.n == 4
    run = execute(third.tasks, store)
    assert len(run.executed) == 1 and len(run.loaded) == 2
    assert value(third.module.eight) == 8


def test_execute_jugfile_goes_past_barriers(tmp_path: Path) -> None:
    jf = tmp_path / "jf_barrier2.py"
    jf.write_text(BARRIER_JUGFILE)
    store = open_store("memory:")
    run = execute_jugfile(jf, store)
    assert run.ok and run.loads == 3 and len(run.executed) == 3
    assert value(run.jugfile.module.eight) == 8
    again = execute_jugfile(jf, store)
    assert again.loads == 1 and again.executed == [] and len(again.loaded) == 3


def test_execute_jugfile_stops_at_a_barrier_behind_a_failure(tmp_path: Path) -> None:
    jf = tmp_path / "jf_barrier_fail.py"
    jf.write_text(
        "from ajug import Task, barrier\n\ndef bad():\n    raise ValueError('no')\n\n"
        "t = Task(bad)\nbarrier()\nnever = Task(bad)\n"
    )
    run = execute_jugfile(jf, open_store("memory:"))
    assert run.loads == 1 and len(run.failures) == 1 and run.jugfile.hit_barrier
    with pytest.raises(TaskFailed, match="ValueError: no") as info:
        run.raise_for_failures()
    assert "raise ValueError('no')" in info.value.traceback


def test_execute_jugfile_opens_a_store_url(tmp_path: Path) -> None:
    jf = J.write(tmp_path, "simple")
    run = execute_jugfile(jf, str(tmp_path / "data"))
    assert run.ok and len(run.executed) == 32
    assert any((tmp_path / "data").iterdir())


# -- jugfiles like jug's ------------------------------------------------------------------------
def _check_expected(name: str, module: Any) -> None:
    for var, expected in J.EXPECTED[name].items():
        got = value(module.__dict__[var])
        assert got == expected, f"{name}: {var} = {got!r}, expected {expected!r}"


@pytest.mark.parametrize("name", sorted(J.SOURCES))
def test_jugfiles(name: str, tmp_path: Path) -> None:
    jf = J.write(tmp_path, name)
    store = open_store("memory:")
    run = execute_jugfile(jf, store)
    run.raise_for_failures()
    assert run.ok and not run.jugfile.hit_barrier
    _check_expected(name, run.jugfile.module)
    # everything is in the store now: a new load runs nothing and sees the same values
    for t in ajug.task.alltasks:
        t.unload()
    again = execute_jugfile(jf, store)
    assert again.executed == [] and again.loads == 1
    _check_expected(name, again.jugfile.module)


def test_same_task_defined_twice_is_one_task(tmp_path: Path) -> None:
    loaded = load_jugfile(J.write(tmp_path, "duplicates"), open_store("memory:"))
    assert len(ajug.task.alltasks) == 11
    assert len(loaded.tasks) == 3  # double(2), double(0), double(1)
    assert len({t.key for t in loaded.tasks}) == 3


def test_custom_hash_jugfile_uses_the_hash_function(tmp_path: Path) -> None:
    loaded = load_jugfile(J.write(tmp_path, "custom_hash"), open_store("memory:"))
    assert loaded.module.hash_called >= 1
    two = loaded.module.two
    assert two.key == Task(two.f, CustomHash(1, lambda x: b"1")).key


def test_a_long_chain_loads_and_runs(tmp_path: Path) -> None:
    jf = tmp_path / "jf_chain.py"
    jf.write_text(
        "from ajug import TaskGenerator\n\n@TaskGenerator\ndef inc(x):\n    return x + 1\n\n"
        "t = 0\nfor _ in range(3000):\n    t = inc(t)\n"
    )
    run = execute_jugfile(jf, open_store("memory:"))
    assert run.ok and len(run.executed) == 3000
    assert value(run.jugfile.module.t) == 3000


# -- compound -----------------------------------------------------------------------------------
def test_compound_stands_for_its_subgraph_once_computed(store: Any) -> None:
    from ajug import mapreduce

    counting = CountingStore(store)
    Task.store = counting
    x = CompoundTask(mapreduce.mapreduce, F.add, F.square, list(range(100)))
    n_tasks = len(ajug.task.alltasks)
    assert n_tasks > 10  # the whole map-reduce tree
    assert not x.can_load()
    run = execute(store=counting)
    assert run.ok
    assert value(x) == sum(i * i for i in range(100))
    assert counting.saves.count(x.key) == 1
    ajug.task.reset()
    y = CompoundTask(mapreduce.mapreduce, F.add, F.square, list(range(100)))
    assert ajug.task.alltasks == [y]  # f was not called: no sub-graph
    assert y.key == x.key and y.can_load()
    assert value(y) == value(x)
    assert y.key == Task(mapreduce.mapreduce, F.add, F.square, list(range(100))).key


def test_compound_task_generator(store: Any) -> None:
    @CompoundTaskGenerator
    def twice(v: Any) -> Any:
        return [tg_double(v), tg_double(v + 1)]

    t = twice(3)
    assert twice.f.__name__ == "twice" and twice.__name__ == "twice"
    dependent = tg_double(t)
    execute(store=store)
    assert value(t) == [6, 8]
    assert value(dependent) == [6, 8, 6, 8]


def test_a_computed_compound_is_not_stale_code(store: Any) -> None:
    """The compound's result records the source of its function, not of the collector that
    saved it: loaded again (as the function's own task), it is not "from changed code"."""
    from ajug.resultmeta import source_hash

    x = CompoundTask(mapreduce_tree, 6)
    assert execute(store=store).ok
    ajug.task.reset()
    y = CompoundTask(mapreduce_tree, 6)
    assert ajug.task.alltasks == [y] and y.key == x.key
    assert store.metadata([y.key])[0]["src"] == source_hash(y.f) == source_hash(mapreduce_tree)
    assert pickle.loads(pickle.dumps(x.f))(5, x.key) == 5  # the collector goes to workers


def mapreduce_tree(n: int) -> Any:
    from ajug import mapreduce

    return mapreduce.mapreduce(F.add, F.square, list(range(n)), map_step=2, reduce_step=2)


# -- write_task_out -----------------------------------------------------------------------------
def test_write_task_out(store: Any, tmp_path: Path) -> None:
    arr = Task(np.arange, 5)
    obj = tg_double([1, 2])
    w1 = write_task_out(arr, str(tmp_path / "arr.npy"))
    w2 = write_task_out(obj, str(tmp_path / "obj.pkl"), str(tmp_path / "meta.json"), "json")
    assert set(w1.dependencies()) == {arr}
    run = execute(store=store)
    assert run.ok, run.failures
    assert np.array_equal(np.load(tmp_path / "arr.npy"), np.arange(5))
    assert pickle.loads((tmp_path / "obj.pkl").read_bytes()) == [1, 2, 1, 2]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["name"] == f"{__name__}.tg_double"
    assert w2.key != w1.key


# -- utils --------------------------------------------------------------------------------------
def test_identity(store: Any) -> None:
    big = list(range(100))
    t = identity(big)
    assert t.name == "identity"
    assert identity(t) is t
    assert identity(t[0]).__class__ is Tasklet
    uses = [tg_double(t) for _ in range(3)]
    execute(store=store)
    assert value(t) == big
    assert value(uses[0]) == big + big


def test_custom_hash(store: Any) -> None:
    base = tg_double(2)
    wrapped = CustomHash(base, lambda t: b"stable")
    t = Task(F.f1, wrapped)
    assert list(t.dependencies()) == [base]
    assert t.key == Task(F.f1, CustomHash(tg_double(3), lambda t: b"stable")).key
    execute(store=store)
    assert value(t) == 4
    with pytest.raises(TypeError, match="not bytes"):
        _ = Task(F.f1, CustomHash(1, lambda x: "a str")).key


def test_timed_path_follows_the_file(tmp_path: Path) -> None:
    p = tmp_path / "input.txt"
    p.write_text("abc")
    os.utime(p, (1_000_000_000, 1_000_000_000))
    k1 = Task(F.f1, timed_path(str(p))).key
    assert Task(F.f1, timed_path(str(p))).key == k1
    os.utime(p, (1_000_000_100, 1_000_000_100))
    k2 = Task(F.f1, timed_path(str(p))).key
    p.write_text("abcd")
    os.utime(p, (1_000_000_100, 1_000_000_100))
    k3 = Task(F.f1, timed_path(str(p))).key
    assert len({k1, k2, k3}) == 3
    assert value(timed_path(str(p))) == str(p)


def test_jug_execute(store: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    write = jug_execute(
        [sys.executable, "-c", f"open({str(out)!r}, 'w').write('hi')"], return_value=str(out)
    )
    assert write.name == "jug.utils.jug_execute"
    reader = Task(F.f1, write)
    after = jug_execute([sys.executable, "-c", "pass"], run_after=write)
    failing = jug_execute([sys.executable, "-c", "raise SystemExit(3)"])
    ignored = jug_execute([sys.executable, "-c", "raise SystemExit(3)"], check_exit=False)
    run = execute(store=store)
    assert out.read_text() == "hi"
    assert value(reader) == str(out)
    assert list(after.dependencies()) == [write]
    assert list(run.failures) == [failing.key]
    assert isinstance(run.failures[failing.key].error, SystemError)
    assert "3" in str(run.failures[failing.key].error)
    assert value(ignored) is None


def test_cached_glob(store: Any, tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.dat"):
        (tmp_path / name).write_text("x")
    pattern = str(tmp_path / "*.txt")
    assert cached_glob(pattern) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    (tmp_path / "d.txt").write_text("x")
    assert len(cached_glob(pattern)) == 2  # cached until invalidated


# -- executor -----------------------------------------------------------------------------------
def test_failures_block_dependents_only(store: Any) -> None:
    ok = tg_double(1)
    bad = Task(fails, 1)
    child = tg_double(bad)
    grandchild = Task(F.add, child, ok)
    independent = tg_double(ok)
    run = execute(store=store)
    assert set(run.executed) == {ok.key, independent.key}
    assert list(run.failures) == [bad.key]
    f = run.failures[bad.key]
    assert isinstance(f.error, RuntimeError) and "boom 1" in f.traceback
    assert f.name == f"{__name__}.fails"
    assert run.blocked == [child.key, grandchild.key]
    assert not run.ok
    assert not store.contains(bad.key) and store.contains(independent.key)
    with pytest.raises(TaskFailed, match="boom 1"):
        run.raise_for_failures()


def test_execute_runs_dependencies_of_given_tasks_in_order(store: Any) -> None:
    a = tg_double(1)
    b = tg_double(a)
    c = Task(F.add, b, a)
    unrelated = tg_double(100)
    run = execute([c], store)
    assert run.executed == [a.key, b.key, c.key]
    assert not store.contains(unrelated.key)
    meta = store.metadata([c.key])[0]
    assert meta["func"] == "identity_funcs.add" and meta["rt"] >= 0 and meta["src"]
    again = execute([c, b], store)
    assert again.executed == [] and set(again.loaded) == {a.key, b.key, c.key}


def test_execute_needs_a_store() -> None:
    prev, Task.store = Task.store, None
    try:
        with pytest.raises(UsageError):
            execute([])
    finally:
        Task.store = prev


def make_lock() -> Any:
    import threading

    return threading.Lock()


def test_unpicklable_result_is_a_failure(store: Any) -> None:
    lock = Task(make_lock)
    t = Task(F.f1, lock)
    run = execute(store=store)
    assert list(run.failures) == [lock.key] and run.blocked == [t.key]
    assert "lock" in str(run.failures[lock.key].error)


def test_arguments_round_trip_for_workers() -> None:
    """What a lease carries: a 2-tuple of a tuple and a dict as arguments stays that."""
    from ajug.graph import decode_args, encode_args
    from ajug.task import ResultRef

    def f(*a, **k):
        return a, k

    dep = Task(f, 1)
    t = Task(f, (1, 2), {"a": 1})
    assert decode_args(encode_args(t)) == (((1, 2), {"a": 1}), {})
    t2 = Task(f, dep, x=[dep, 3])
    args, kwargs = decode_args(encode_args(t2))
    assert isinstance(args[0], ResultRef) and args[0].key == dep.key
    assert isinstance(kwargs["x"][0], ResultRef) and kwargs["x"][1] == 3


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_the_graph_is_the_same_in_chunks_or_task_by_task(store: Any, chunk: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_graph`` takes runs of plain-argument tasks a chunk at a time and everything
    else task by task: every task's function, inputs, options and wire arguments are what
    the task itself says, wherever the chunk boundaries fall."""
    from ajug import graph as G
    from ajug.hashing import task_digest
    from ajug.jugfile import unique_tasks_indexed
    from ajug.taskopts import NO_OPTIONS

    monkeypatch.setattr(G, "CHUNK", chunk)
    ajug.task.alltasks.clear()
    a = [Task(F.f1, i) for i in range(5)]
    mixed = [Task(F.add, i, 2.5) for i in range(4)] + [Task(F.f1, "s"), Task(F.f1, None)]
    special = [
        Task(F.f1, a[0]),  # an input
        Task(F.add, a[1], b=a[2]),  # a keyword input
        Task(F.f1, np.arange(3)),  # not a plain value
        Task(F.f1, [1, 2]),  # a list
        Task(F.f1, 99).set_options(priority=3),  # options
        Task(F.add, 1, b=2),  # keywords, plain
        Task(F.f1, a[3][0]),  # a Tasklet
    ]
    tail = [Task(F.f1, i) for i in range(100, 107)] + [Task(F.f1, a[0])]  # a duplicate last
    made = list(ajug.task.alltasks)
    tasks, index = unique_tasks_indexed(made)
    assert len(tasks) == len(made) - 1 and tasks == made[:-1]
    assert all(index[t.key] == i for i, t in enumerate(tasks))
    g = G.build_graph(tasks, index=index)
    assert g.index is index and g.keys == [t.key for t in tasks]
    for i, t in enumerate(tasks):
        assert t.key == task_digest(t.name, t.args, t.kwargs)  # task_keys' quick path too
        assert g.functions[g.fn[i]].name == t.name
        assert g.args[i] == G.encode_args(t), t
        deps = list(dict.fromkeys(index[d.key] for d in t.dependencies()))
        assert list(g.deps(i)) == deps, t
        assert g.opts(i) == (t.opts or NO_OPTIONS)
    assert {g.functions[f].name for f in g.fn} == {t.name for t in a + mixed + tail}
    assert sorted(g.deps(index[special[1].key])) == [1, 2]
    assert g.opts(index[special[4].key]).priority == 3
