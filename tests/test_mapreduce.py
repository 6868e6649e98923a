"""ajug.mapreduce: the results of Python's map/reduce, few tasks, lazy views, jug's identities."""

from __future__ import annotations

import functools
import operator
import pickle
import sys
import types
from collections.abc import Iterator
from typing import Any

import identity_funcs as F
import jug.mapreduce
import jug.task
import numpy as np
import pytest

import ajug.task
from ajug import TaskGenerator, mapreduce, value
from ajug.executor import execute
from ajug.stores import open_store
from ajug.task import Task, Tasklet, alltasks


@pytest.fixture(autouse=True)
def store() -> Iterator[Any]:
    ajug.task.reset()
    s = open_store("memory:")
    prev, Task.store = Task.store, s
    yield s
    Task.store = prev
    ajug.task.reset()


def run_all() -> None:
    res = execute()
    res.raise_for_failures()
    assert res.ok


def concat(a: list[Any], b: list[Any]) -> list[Any]:
    """Associative, not commutative: checks that the order of the inputs is kept."""
    return a + b


def wrap(x: Any) -> list[Any]:
    return [x]


@pytest.mark.parametrize("n", [0, 1, 2, 7, 33])
@pytest.mark.parametrize("map_step", [1, 2, 3, 4, 10])
def test_map_equals_python_map(n: int, map_step: int) -> None:
    xs = list(range(n))
    ts = mapreduce.map(F.square, xs, map_step=map_step)
    run_all()
    assert value(ts) == [x * x for x in xs]
    assert len(ts) == n


@pytest.mark.parametrize("n", [1, 2, 9, 64, 100])
@pytest.mark.parametrize("map_step, reduce_step", [(1, 2), (2, 3), (4, 8), (5, 2), (100, 8)])
def test_mapreduce_equals_python_reduce(n: int, map_step: int, reduce_step: int) -> None:
    xs = list(range(n))
    t = mapreduce.mapreduce(concat, wrap, xs, map_step=map_step, reduce_step=reduce_step)
    s = mapreduce.mapreduce(F.add, F.square, xs, map_step=map_step, reduce_step=reduce_step)
    run_all()
    assert value(t) == functools.reduce(concat, map(wrap, xs)) == xs
    assert value(s) == sum(x * x for x in xs)


@pytest.mark.parametrize("reduce_step", [2, 3, 8, 50])
def test_reduce_equals_python_reduce(reduce_step: int) -> None:
    words = [[f"w{i}"] for i in range(37)]
    t = mapreduce.reduce(concat, words, reduce_step=reduce_step)
    run_all()
    assert value(t) == functools.reduce(concat, words)


def test_reduce_over_tasks() -> None:
    parts = [Task(F.square, i) for i in range(10)]
    t = mapreduce.reduce(F.add, parts, reduce_step=3)
    run_all()
    assert value(t) == sum(i * i for i in range(10))


def test_empty_inputs() -> None:
    m = mapreduce.map(F.square, [])
    r = mapreduce.mapreduce(F.add, F.square, [])
    run_all()
    assert value(m) == [] and len(m) == 0
    assert value(r) == []
    assert value(mapreduce.reduce(F.add, [])) == []


def test_map_of_1000_with_step_10_makes_100_tasks() -> None:
    before = len(alltasks)
    ts = mapreduce.map(F.square, range(1000), map_step=10)
    assert len(alltasks) - before == 100
    assert len(ts) == 1000
    assert len(ts.blocks) == 100


def test_mapreduce_builds_a_tree() -> None:
    before = len(alltasks)
    mapreduce.mapreduce(F.add, F.square, range(1000), map_step=10, reduce_step=8)
    # 100 map tasks, then ceil(100/8)=13, ceil(13/8)=2, 1
    assert len(alltasks) - before == 100 + 13 + 2 + 1


def test_million_elements_default_step_is_not_a_million_tasks() -> None:
    before = len(alltasks)
    ts = mapreduce.map(F.square, range(1_000_000), map_step=1000)
    assert len(alltasks) - before == 1000
    assert len(ts) == 1_000_000


def test_currymap() -> None:
    pairs = [(i, 10 * i) for i in range(11)]
    for step in (1, 3, 4):
        ts = mapreduce.currymap(F.add, pairs, map_step=step)
        assert len(ts) == len(pairs)
        run_all()
        assert value(ts) == [a + b for a, b in pairs]


def test_task_generator_mapper_and_reducer() -> None:
    square = TaskGenerator(F.square)
    add = TaskGenerator(F.add)
    ts = mapreduce.map(square, list(range(16)))
    total = mapreduce.mapreduce(add, square, list(range(10)))
    again = mapreduce.map(square, ts)  # a map over a map's view
    cs = mapreduce.currymap(add, [(1, 2), (3, 4), (5, 6)], map_step=2)
    run_all()
    assert value(ts) == [x * x for x in range(16)]
    assert value(total) == sum(x * x for x in range(10))
    assert value(again) == [x**4 for x in range(16)]
    assert value(cs) == [3, 7, 11]


def test_map_step_1_makes_the_same_tasks_as_by_hand() -> None:
    xs = list(range(8))
    ts = mapreduce.map(TaskGenerator(F.square), xs, map_step=1)
    cs = mapreduce.currymap(TaskGenerator(F.add), list(zip(xs, xs)), map_step=1)
    assert [t.key for t in ts] == [Task(F.square, x).key for x in xs]
    assert [t.key for t in cs] == [Task(F.add, x, x).key for x in xs]


def test_numpy_input() -> None:
    a = np.arange(50, dtype=np.float64)
    ts = mapreduce.map(F.double, a, map_step=7)
    s = mapreduce.mapreduce(F.add, F.square, a, map_step=6)
    run_all()
    assert np.array_equal(np.array(value(ts)), 2 * a)
    assert value(s) == pytest.approx(float((a**2).sum()))


SLICES = [
    slice(None),
    slice(None, None, 2),
    slice(1, 9, 3),
    slice(None, None, -1),
    slice(20, 2, -3),
    slice(5, 3),
    slice(3, 100),
    slice(-5, None),
]


def test_indexing_and_slicing_the_view() -> None:
    xs = list(range(23))
    ts = mapreduce.map(F.square, xs)
    run_all()
    expected = [x * x for x in xs]
    assert isinstance(ts[0], Tasklet)
    for i in (0, 5, 22, -1, -23):
        assert value(ts[i]) == expected[i]
    assert value(ts[np.int64(4)]) == expected[4]
    with pytest.raises(IndexError):
        ts[23]
    with pytest.raises(IndexError):
        ts[-24]
    with pytest.raises(TypeError):
        ts["a"]
    for s in SLICES:
        sub = ts[s]
        assert len(sub) == len(expected[s])
        assert value(sub) == expected[s]
        for s2 in SLICES:
            assert value(sub[s2]) == expected[s][s2]
            assert len(sub[s2]) == len(expected[s][s2])
        for i in range(-len(sub), len(sub)):
            assert value(sub[i]) == expected[s][i]


def test_views_pass_to_tasks_and_depend_on_their_blocks_only(store: Any) -> None:
    ts = mapreduce.map(F.square, list(range(23)), map_step=4)
    sub = ts[5:10]
    t = Task(sum, sub)
    assert list(t.dependencies()) == ts.blocks[1:3]
    assert not t.can_run()
    ts.blocks[1].run()
    assert not t.can_run()
    ts.blocks[2].run()
    assert t.can_run()
    assert t.run() == sum(i * i for i in range(5, 10))
    whole = Task(sum, ts)
    assert list(whole.dependencies()) == ts.blocks
    element = Task(F.f1, ts[22])
    assert list(element.dependencies()) == [ts.blocks[5]]


def test_view_identities() -> None:
    ts = mapreduce.map(F.square, list(range(23)))
    assert ts[2:8][1:3].__jug_hash__() == mapreduce.block_access_slice(ts, (3, 5, 1)).__jug_hash__()
    assert ts[1:3].__jug_hash__() != ts[1:4].__jug_hash__()
    other = mapreduce.map(F.square, list(range(24)))
    assert ts.__jug_hash__() != other.__jug_hash__()
    assert Task(F.f1, ts).key == Task(F.f1, mapreduce.map(F.square, list(range(23)))).key


def test_cannot_iterate_over_the_view() -> None:
    ts = mapreduce.map(F.square, list(range(5)))
    with pytest.raises(NotImplementedError):
        iter(ts)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_steps_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="map_step"):
        mapreduce.map(F.square, [1, 2], map_step=bad)
    with pytest.raises(ValueError, match="map_step"):
        mapreduce.currymap(F.add, [(1, 2)], map_step=bad)
    with pytest.raises(ValueError, match="reduce_step"):
        mapreduce.mapreduce(F.add, F.square, [1, 2], reduce_step=1 if bad == 0 else bad)


def test_helper_tasks_carry_jugs_names() -> None:
    ts = mapreduce.map(F.square, list(range(10)))
    t = mapreduce.mapreduce(F.add, None, list(range(100)))
    cs = mapreduce.currymap(F.add, [(1, 2), (3, 4)])
    assert {b.name for b in ts.blocks} == {"jug.mapreduce._jug_map"}
    assert t.name == "jug.mapreduce._jug_reduce"
    assert cs[0].base.name == "jug.mapreduce._jug_map_curry"
    # for CompoundTask(mapreduce.mapreduce, ...), whose identity is that of this task:
    assert Task(mapreduce.mapreduce, F.add, F.square, [1]).name == "jug.mapreduce.mapreduce"


# -- identities equal jug's -----------------------------------------------------------------


def _jug_and_ajug(build: Any) -> tuple[list[str], list[str]]:
    """Build with jug and with ajug; the keys of every task each created, in order."""
    del jug.task.alltasks[:]
    ajug.task.reset()
    F.scrub()
    build(jug.mapreduce, jug.task.TaskGenerator, jug.task.Task)
    build(mapreduce, TaskGenerator, Task)
    j = [t.hash().decode() for t in jug.task.alltasks]
    a = [t.key for t in alltasks]
    del jug.task.alltasks[:]
    F.scrub()
    return j, a


BUILDS = {
    "map": lambda mr, TG, T: mr.map(F.square, list(range(10))),
    "map_step_3": lambda mr, TG, T: mr.map(F.square, list(range(10)), map_step=3),
    "map_generator": lambda mr, TG, T: mr.map(TG(F.square), list(range(10))),
    "map_over_tasks": lambda mr, TG, T: mr.map(F.square, [T(F.f1, i) for i in range(6)]),
    "map_of_map": lambda mr, TG, T: mr.map(F.double, mr.map(TG(F.square), list(range(9)))),
    "map_numpy": lambda mr, TG, T: mr.map(F.double, np.arange(10.0), map_step=4),
    "mapreduce": lambda mr, TG, T: mr.mapreduce(F.add, F.square, list(range(100))),
    "mapreduce_generators": lambda mr, TG, T: mr.mapreduce(
        TG(F.add), TG(F.square), list(range(50)), map_step=3, reduce_step=2
    ),
    "reduce": lambda mr, TG, T: mr.reduce(operator.add, list(range(40)), reduce_step=3),
    "reduce_generator": lambda mr, TG, T: mr.reduce(TG(F.add), [T(F.f1, i) for i in range(9)]),
    "currymap": lambda mr, TG, T: mr.currymap(F.add, [(i, i) for i in range(9)]),
    "currymap_generator": lambda mr, TG, T: mr.currymap(TG(F.add), [(i, 1) for i in range(9)]),
    "empty": lambda mr, TG, T: mr.mapreduce(F.add, F.square, []),
    "slices_as_arguments": lambda mr, TG, T: _use_slices(mr, T),
}


def _use_slices(mr: Any, T: Any) -> None:
    ts = mr.map(F.square, list(range(23)))
    T(F.f1, ts)
    T(F.f1, ts[3])
    T(F.f1, ts[-1])
    T(F.f1, ts[2:9])
    T(F.f1, ts[20:2:-3][1:])
    T(F.f1, ts[::2][3])


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_identities_equal_jug(name: str) -> None:
    j, a = _jug_and_ajug(BUILDS[name])
    assert len(a) == len(j)
    assert a == j


@pytest.mark.parametrize(
    "modname, fname",
    [
        ("identity_funcs_like", "square"),
        ("same", "same"),
        ("pkg.sub.mod", "f" + "x" * 300),
        ("m", "fünf"),
    ],
    ids=["plain", "module_named_like_function", "long_name", "unicode"],
)
def test_task_generator_pickles_as_jugs(
    monkeypatch: pytest.MonkeyPatch, modname: str, fname: str
) -> None:
    """jug hashes a TaskGenerator mapper by pickling jug's own TaskGenerator: same bytes."""
    from ajug.hashing import jug_generator_pickle

    def f(x: Any) -> Any:
        return x

    f.__name__ = f.__qualname__ = fname
    f.__module__ = f.__name__ if modname == fname else modname  # the same str object: memoised
    module = types.ModuleType(modname)
    setattr(module, fname, f)
    monkeypatch.setitem(sys.modules, modname, module)
    assert jug_generator_pickle(f) == pickle.dumps(jug.task.TaskGenerator(f), protocol=4)
