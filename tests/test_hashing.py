"""Task identity: equal to jug 2.7's digests, independent of order and hash seed, and frozen.

Every identity is checked against pip-installed jug, building jug's Task and ajug's Task from
the same functions (``identity_funcs``), so that ``module.name`` is the same in both.

Run ``python tests/test_hashing.py`` to regenerate ``golden_digests.json`` -- only when a
change of the scheme is intended (it changes every stored result's key).
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import identity_funcs as F
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ajug.mapreduce
import ajug.task
import ajug.utils
from ajug.errors import AjugError, IdentityError

jug_task = pytest.importorskip("jug.task")
import jug.mapreduce  # noqa: E402
import jug.utils  # noqa: E402

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden_digests.json"

# One namespace per implementation, so that a case builds "the same" tasks with either.
JUG = SimpleNamespace(
    Task=jug_task.Task,
    Tasklet=jug_task.Tasklet,
    TaskGenerator=jug_task.TaskGenerator,
    iteratetask=jug_task.iteratetask,
    mapreduce=jug.mapreduce,
    utils=jug.utils,
)
AJUG = SimpleNamespace(
    Task=ajug.task.Task,
    Tasklet=ajug.task.Tasklet,
    TaskGenerator=ajug.task.TaskGenerator,
    iteratetask=ajug.task.iteratetask,
    mapreduce=ajug.mapreduce,
    utils=ajug.utils,
)


def clear_tasks() -> None:
    del jug_task.alltasks[:]
    ajug.task.reset()
    F.scrub()


@pytest.fixture(autouse=True)
def _no_leftover_tasks() -> Iterator[None]:
    clear_tasks()
    yield
    clear_tasks()


def digest(obj: Any) -> str:
    """The identity of a jug or ajug Task, or of a Tasklet (anything with ``__jug_hash__``)."""
    if isinstance(obj, ajug.task.Task):
        return obj.key
    if isinstance(obj, jug_task.Task):
        return obj.hash().decode()
    return obj.__jug_hash__().decode()


def jug_and_ajug(build: Callable[[SimpleNamespace], Any]) -> tuple[str, str]:
    clear_tasks()
    j = digest(build(JUG))
    a = digest(build(AJUG))
    return j, a


# -- argument structures --------------------------------------------------------------------
Point = namedtuple("Point", "x y")

_big = 2**200 + 12345
ARGS: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "small_int": 7,
    "negative_int": -42,
    "huge_int": _big,
    "huge_negative_int": -_big,
    "float": 1.5,
    "nan": math.nan,
    "inf": math.inf,
    "minus_inf": -math.inf,
    "minus_zero": -0.0,
    "complex": complex(1.5, -2),
    "empty_str": "",
    "str": "hello",
    "unicode": "héllo wörld ☃ 𝄞 日本語",
    "bytes": b"\x00\x01\xff",
    "bytearray": bytearray(b"abc"),
    "empty_tuple": (),
    "empty_list": [],
    "empty_dict": {},
    "nested": (1, [2, (3, [4, {"five": (6,)}])], {"a": [None, True]}),
    "list_vs_tuple": [(1, 2), [1, 2]],
    "dict_non_str_keys": {1: "a", 2.5: "b", (1, 2): [3], None: 0, b"k": {}, False: 1, "1": 2},
    "dict_nested": {"x": {"y": {"z": [1, 2, {3: 4}]}}},
    "set_mixed": {1, "a", (2, 3), None, 2.5, b"b", False},
    "frozenset": frozenset({"x", "y", 3}),
    "set_of_frozensets": {frozenset({1, 2}), frozenset({"a"}), frozenset()},
    "empty_set": set(),
    "range": range(3, 30, 4),
    "slice": slice(1, 9, 2),
    "namedtuple": Point(1, 2),
    "ellipsis": ...,
    "builtin_function": len,
    "module_function": F.double,
    "partial": functools.partial(F.add, 1),
    "np_int64": np.arange(10, dtype=np.int64),
    "np_int8": np.array([-1, 0, 127], dtype=np.int8),
    "np_uint16": np.array([1, 65535], dtype=np.uint16),
    "np_float32": np.linspace(0, 1, 7, dtype=np.float32),
    "np_float64_nan": np.array([np.nan, np.inf, -0.0]),
    "np_complex": np.array([1 + 2j, -3j]),
    "np_bool": np.array([True, False, True]),
    "np_unicode": np.array(["a", "bcd", "é"]),
    "np_bytes": np.array([b"a", b"bc"]),
    "np_structured": np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    "np_2d": np.arange(12, dtype=np.float64).reshape(3, 4),
    "np_fortran": np.asfortranarray(np.arange(12).reshape(3, 4)),
    "np_non_contiguous": np.arange(20)[::3],
    "np_transposed": np.arange(12).reshape(3, 4).T,
    "np_0d": np.array(3.5),
    "np_empty": np.zeros((0, 3)),
    "np_big_endian": np.arange(4, dtype=">i4"),
    "np_object": np.array([1, "a", None, (2, 3)], dtype=object),
    "np_object_2d": np.array([[1, [2]], ["x", {3: 4}]], dtype=object),
    "np_scalar_float64": np.float64(1.25),
    "np_scalar_int32": np.int32(-7),
    "np_scalar_bool": np.bool_(True),
    "np_scalar_str": np.str_("abc"),
    "list_of_arrays": [np.arange(3), {"k": np.ones(2)}],
}


@pytest.mark.parametrize("name", sorted(ARGS))
def test_argument_identity_equals_jug(name: str) -> None:
    arg = ARGS[name]
    j, a = jug_and_ajug(lambda m: m.Task(F.f1, arg))
    assert a == j
    j, a = jug_and_ajug(lambda m: m.Task(F.fkw, arg, key=arg, other=[arg]))
    assert a == j


TASK_CASES: dict[str, Callable[[SimpleNamespace], Any]] = {
    "no_arguments": lambda m: m.Task(F.f0),
    "two_args": lambda m: m.Task(F.f2, 1, "b"),
    "kwargs": lambda m: m.Task(F.fkw, x=1, y=[2]),
    "kwargs_order": lambda m: m.Task(F.fkw, 1, b=2, a=1),
    "args_and_kwargs": lambda m: m.Task(F.fkw, 1, 2, z={"a": 3}),
    "partial_function": lambda m: m.Task(functools.partial(F.f2, 1), 2),
    "partial_kwargs": lambda m: m.Task(functools.partial(F.fkw, 1, k=2), 3, j=4),
    "task_generator": lambda m: m.TaskGenerator(F.double)(21),
    "task_argument": lambda m: m.Task(F.f1, m.Task(F.f0)),
    "task_kwarg": lambda m: m.Task(F.fkw, x=m.Task(F.f0)),
    "tasks_in_containers": lambda m: m.Task(
        F.f1, [m.Task(F.f0), (m.Task(F.double, 1),), {"a": m.Task(F.double, 2)}]
    ),
    "task_in_dict_with_int_keys": lambda m: m.Task(F.f1, {1: m.Task(F.f0), 2: m.Task(F.f1, 2)}),
    "task_in_set": lambda m: m.Task(F.f1, {m.Task(F.f0), 3}),
    "tasklet_index": lambda m: m.Task(F.f1, m.Task(F.pairs, 3)[0]),
    "tasklet_key": lambda m: m.Task(F.f1, m.Task(F.f1, {"k": 1})["k"]),
    "tasklet_negative_index": lambda m: m.Task(F.f1, m.Task(F.pairs, 3)[-1]),
    "tasklet_slice": lambda m: m.Task(F.f1, m.Task(F.pairs, 5)[1:4]),
    "tasklet_nested": lambda m: m.Task(F.f1, m.Task(F.pairs, 3)[1][0]),
    "tasklet_task_index": lambda m: m.Task(F.f1, m.Task(F.pairs, 3)[m.Task(F.f0)]),
    "tasklet_function": lambda m: m.Task(F.f1, m.Tasklet(m.Task(F.f0), F.plus1)),
    "tasklet_lambda": lambda m: m.Task(F.f1, m.Tasklet(m.Task(F.f0), lambda x: x + 1)),
    "tasklet_lambda_set_constant": lambda m: m.Task(
        F.f1, m.Tasklet(m.Task(F.f0), lambda x: x in {"a", "b", "c"})
    ),
    "tasklet_lambda_closure": lambda m: _closure_tasklet(m, 5),
    "tasklet_lambda_unpicklable_closure": lambda m: _closure_tasklet(m, threading.Lock()),
    "tasklet_of_tasklet": lambda m: m.Task(F.f1, m.Tasklet(m.Task(F.pairs, 2)[1], F.plus1)),
    "iteratetask": lambda m: m.Task(F.f1, list(m.iteratetask(m.Task(F.pairs, 3), 3))),
    "tasklet_itself": lambda m: m.Task(F.pairs, 4)[2],
    "chain_of_20": lambda m: _chain(m, 20),
    "diamond": lambda m: _diamond(m),
    "timed_path": lambda m: m.Task(F.f1, m.utils.timed_path(__file__)),
    "custom_hash": lambda m: m.Task(F.f1, m.utils.CustomHash(3, lambda x: b"three")),
    "custom_hash_of_task": lambda m: m.Task(
        F.f1, m.utils.CustomHash(m.Task(F.f0), lambda t: b"fixed")
    ),
    "identity": lambda m: m.utils.identity([1, 2, 3]),
    "jug_execute": lambda m: m.utils.jug_execute(["true"], return_value=1),
}


def _closure_tasklet(m: SimpleNamespace, captured: Any) -> Any:
    return m.Task(F.f1, m.Tasklet(m.Task(F.f0), lambda x: (x, captured)))


def _chain(m: SimpleNamespace, n: int) -> Any:
    t = m.Task(F.f0)
    for i in range(n):
        t = m.Task(F.add, t, i)
    return t


def _diamond(m: SimpleNamespace) -> Any:
    top = m.Task(F.f0)
    left = m.Task(F.double, top)
    right = m.Task(F.plus1, top)
    return m.Task(F.add, left, right)


@pytest.mark.parametrize("name", sorted(TASK_CASES))
def test_task_identity_equals_jug(name: str) -> None:
    j, a = jug_and_ajug(TASK_CASES[name])
    assert a == j


def test_long_chain_identity_equals_jug() -> None:
    """Keys computed as the chain is built (as loading a jugfile does): no deep recursion."""
    clear_tasks()
    keys = {}
    for name, m in (("jug", JUG), ("ajug", AJUG)):
        t = m.Task(F.f0)
        for i in range(1000):
            t = m.Task(F.add, t, i)
            digest(t)
        keys[name] = digest(t)
    assert keys["ajug"] == keys["jug"]


def test_datetime_arrays_have_an_identity() -> None:
    """jug 2.7 cannot hash datetime64/timedelta64 arrays (no buffer); ajug hashes their bytes."""
    dates = np.array(["2024-01-01", "2025-06-30", "2026-02-03"], dtype="datetime64[D]")
    k = ajug.task.Task(F.f1, dates).key
    assert k == ajug.task.Task(F.f1, dates.copy()).key
    assert k != ajug.task.Task(F.f1, dates + 1).key
    assert k != ajug.task.Task(F.f1, dates.astype("datetime64[s]")).key
    strided = ajug.task.Task(F.f1, dates[::2]).key
    assert strided == ajug.task.Task(F.f1, dates[::2].copy()).key
    delta = np.array(5, dtype="timedelta64[h]")
    assert ajug.task.Task(F.f1, delta).key != ajug.task.Task(F.f1, delta * 2).key


# -- property: any nested structure ---------------------------------------------------------
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.complex_numbers(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_hashables = st.recursive(
    _scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=6
)
_structures = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_hashables, inner, max_size=4)
        | st.sets(_hashables, max_size=4)
        | st.frozensets(_hashables, max_size=4)
    ),
    max_leaves=20,
)


_kwarg_names = st.text(max_size=5).filter(lambda k: k not in ("f", "self"))
_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@settings(_SETTINGS, max_examples=150)
@given(
    args=st.lists(_structures, max_size=3),
    kwargs=st.dictionaries(_kwarg_names, _structures, max_size=3),
)
def test_property_nested_structures_equal_jug(args: list[Any], kwargs: dict[str, Any]) -> None:
    j, a = jug_and_ajug(lambda m: m.Task(F.fkw, *args, **kwargs))
    assert a == j
    # ... and as arguments of a dependent task, through a Tasklet
    j, a = jug_and_ajug(lambda m: m.Task(F.fkw, m.Task(F.fkw, *args)[0], kw=kwargs))
    assert a == j


_plain = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
          | st.text(max_size=8) | st.binary(max_size=8))


@settings(_SETTINGS, max_examples=200)
@given(args=st.lists(_plain, max_size=4))
def test_property_plain_arguments_equal_jug(args: list[Any]) -> None:
    """The fast paths for plain positional arguments (one, or several) give jug's digest."""
    j, a = jug_and_ajug(lambda m: m.Task(F.fkw, *args))
    assert a == j


@settings(_SETTINGS, max_examples=40)
@given(
    arr=hnp.arrays(
        dtype=hnp.scalar_dtypes().filter(lambda d: d.kind not in "mM"),  # jug cannot hash those
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    step=st.integers(min_value=1, max_value=3),
)
def test_property_numpy_arrays_equal_jug(arr: np.ndarray, step: int) -> None:
    view = arr[::step] if arr.ndim else arr
    j, a = jug_and_ajug(lambda m: m.Task(F.f2, arr, view))
    assert a == j


# -- order independence ---------------------------------------------------------------------
def test_dict_insertion_order_does_not_matter() -> None:
    items = [(str(i), i) for i in range(50)] + [(i, str(i)) for i in range(20)]
    d1 = dict(items)
    d2 = dict(reversed(items))
    assert list(d1) != list(d2)
    k1 = ajug.task.Task(F.f1, d1).key
    k2 = ajug.task.Task(F.f1, d2).key
    assert k1 == k2
    assert ajug.task.Task(F.f1, {"a": d1}).key == ajug.task.Task(F.f1, {"a": d2}).key


def test_set_insertion_order_does_not_matter() -> None:
    items = [f"s{i}" for i in range(200)] + list(range(100)) + [(1, "x"), 2.5, None]
    s1: set[Any] = set()
    s2: set[Any] = set()
    for x in items:
        s1.add(x)
    for x in reversed(items):
        s2.add(x)
    # colliding small ints land in different orders when inserted differently
    s3 = {8, 16, 0}
    s4 = {0, 16, 8}
    assert ajug.task.Task(F.f1, s1).key == ajug.task.Task(F.f1, s2).key
    assert ajug.task.Task(F.f1, frozenset(s1)).key == ajug.task.Task(F.f1, frozenset(s2)).key
    assert ajug.task.Task(F.f1, s3).key == ajug.task.Task(F.f1, s4).key
    assert ajug.task.Task(F.f1, s1).key != ajug.task.Task(F.f1, frozenset(s1)).key


def test_kwargs_order_does_not_matter() -> None:
    assert ajug.task.Task(F.fkw, a=1, b=2).key == ajug.task.Task(F.fkw, b=2, a=1).key


def test_different_arguments_differ() -> None:
    keys = {ajug.task.Task(F.f1, v).key for v in (0, 0.0, False, "0", b"0", (0,), [0], None)}
    assert len(keys) == 8
    assert ajug.task.Task(F.f1, 1).key != ajug.task.Task(F.double, 1).key


# -- PYTHONHASHSEED -------------------------------------------------------------------------
SEED_SCRIPT = r"""
import json, sys
import numpy as np
import identity_funcs as F
from ajug.task import Task, Tasklet
from ajug import mapreduce

strs = [f"word{i}" for i in range(40)]
t = Task(F.pairs, 3)
tasks = [
    Task(F.f1, set(strs)),
    Task(F.f1, frozenset(strs)),
    Task(F.f1, {s: i for i, s in enumerate(strs)}),
    Task(F.f1, {frozenset(strs[:5]): set(strs[5:9]), "x": {("a", 1), ("b", 2)}}),
    Task(F.f1, [{"k": {"nested", "set"}}, np.arange(5)]),
    Task(F.f1, Tasklet(t, lambda x: x in {"a", "b", "c"})),
    Task(F.f1, t[0], s={"q", "r"}),
    Task(F.f1, mapreduce.map(F.double, strs, map_step=7)),
]
json.dump([x.key for x in tasks], sys.stdout)
"""


def _keys_with_seed(seed: str) -> list[str]:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = seed
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, str(HERE), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", SEED_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_identity_does_not_depend_on_pythonhashseed() -> None:
    results = {seed: _keys_with_seed(seed) for seed in ("0", "1", "12345")}
    first = results["0"]
    assert len(set(first)) == len(first)
    for seed, keys in results.items():
        assert keys == first, f"PYTHONHASHSEED={seed} gave other identities"


# -- golden digests -------------------------------------------------------------------------
def golden_tasks() -> dict[str, Any]:
    """~30 fixed tasks whose identities must never change by accident.

    Nothing here may depend on the Python version (no lambdas: their key is bytecode).
    """
    T, TL = ajug.task.Task, ajug.task.Tasklet
    base = T(F.pairs, 3)
    return {
        "f0()": T(F.f0),
        "f1(None)": T(F.f1, None),
        "f1(True)": T(F.f1, True),
        "f1(0)": T(F.f1, 0),
        "f1(-42)": T(F.f1, -42),
        "f1(2**200+12345)": T(F.f1, _big),
        "f1(1.5)": T(F.f1, 1.5),
        "f1(nan)": T(F.f1, math.nan),
        "f1(-0.0)": T(F.f1, -0.0),
        "f1(1.5-2j)": T(F.f1, complex(1.5, -2)),
        "f1('héllo ☃')": T(F.f1, "héllo ☃"),
        "f1(b'\\x00\\xff')": T(F.f1, b"\x00\xff"),
        "f1((1, [2, (3,)]))": T(F.f1, (1, [2, (3,)])),
        "f1({1: 'a', 'b': [2], (3,): None})": T(F.f1, {1: "a", "b": [2], (3,): None}),
        "f1({1, 'a', (2, 3)})": T(F.f1, {1, "a", (2, 3)}),
        "f1(frozenset({'x', 'y'}))": T(F.f1, frozenset({"x", "y"})),
        "f1(np.arange(6, dtype=int64).reshape(2, 3))": T(
            F.f1, np.arange(6, dtype=np.int64).reshape(2, 3)
        ),
        "f1(np.array([0.5, -1.0], float32))": T(F.f1, np.array([0.5, -1.0], dtype=np.float32)),
        "f1(np.array([1, 'a', None], object))": T(F.f1, np.array([1, "a", None], dtype=object)),
        "fkw(1, x=2, y=[3])": T(F.fkw, 1, x=2, y=[3]),
        "f2(f0(), pairs(3))": T(F.f2, T(F.f0), base),
        "f1(pairs(3)[0])": T(F.f1, base[0]),
        "f1(f1({'k': 1})['k'])": T(F.f1, T(F.f1, {"k": 1})["k"]),
        "f1(pairs(3)[1:3])": T(F.f1, base[1:3]),
        "f1(Tasklet(f0(), plus1))": T(F.f1, TL(T(F.f0), F.plus1)),
        "chain add x10": _chain(AJUG, 10),
        "identity([1, 2, 3])": ajug.utils.identity([1, 2, 3]),
        "f1(map(double, range(10), map_step=3))": T(
            F.f1, ajug.mapreduce.map(F.double, list(range(10)), map_step=3)
        ),
        "mapreduce(add, square, range(20))": ajug.mapreduce.mapreduce(
            F.add, F.square, list(range(20))
        ),
        "f1(CustomHash(1, const))": T(F.f1, ajug.utils.CustomHash(1, _const_hash)),
    }


def _const_hash(x: Any) -> bytes:
    return b"const"


def compute_golden() -> dict[str, str]:
    ajug.task.reset()
    return {name: digest(t) for name, t in golden_tasks().items()}


def test_golden_digests_unchanged() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    actual = compute_golden()
    assert sorted(actual) == sorted(expected), "the golden task list changed: regenerate"
    changed = {k: (expected[k], v) for k, v in actual.items() if expected[k] != v}
    assert not changed, (
        f"task identities changed for {sorted(changed)}: every stored result would be recomputed"
    )


def test_golden_digests_equal_jug() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    clear_tasks()
    base = jug_task.Task(F.pairs, 3)
    spot = {
        "f0()": jug_task.Task(F.f0),
        "f1({1, 'a', (2, 3)})": jug_task.Task(F.f1, {1, "a", (2, 3)}),
        "f2(f0(), pairs(3))": jug_task.Task(F.f2, jug_task.Task(F.f0), base),
        "f1(pairs(3)[0])": jug_task.Task(F.f1, base[0]),
        "mapreduce(add, square, range(20))": jug.mapreduce.mapreduce(
            F.add, F.square, list(range(20))
        ),
    }
    for name, t in spot.items():
        assert expected[name] == t.hash().decode(), name


# -- arguments without an identity ----------------------------------------------------------
def _gen() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    "arg, type_name",
    [
        (threading.Lock(), "_thread.lock"),
        (_gen(), "builtins.generator"),
        ([1, {"nested": threading.Lock()}], "_thread.lock"),
        (lambda x: x, "builtins.function"),
    ],
    ids=["lock", "generator", "nested_lock", "lambda"],
)
def test_unidentifiable_argument_raises_identity_error(arg: Any, type_name: str) -> None:
    t = ajug.task.Task(F.f1, arg)
    with pytest.raises(IdentityError) as info:
        _ = t.key
    err = info.value
    assert isinstance(err, TypeError) and isinstance(err, AjugError)
    msg = str(err)
    assert "identity_funcs.f1" in msg
    assert type_name in msg


def test_unidentifiable_argument_of_a_dependency_is_reported() -> None:
    inner = ajug.task.Task(F.f1, threading.Lock())
    outer = ajug.task.Task(F.f1, inner)
    with pytest.raises(IdentityError, match="identity_funcs.f1"):
        _ = outer.key


def test_unidentifiable_argument_fails_the_jugfile_load(tmp_path: Path) -> None:
    from ajug.jugfile import load_jugfile
    from ajug.stores import open_store

    jf = tmp_path / "lockfile_jf.py"
    jf.write_text(
        "import threading\nfrom ajug import TaskGenerator\n\n"
        "@TaskGenerator\ndef use(x):\n    return 1\n\nt = use(threading.Lock())\n"
    )
    with pytest.raises(IdentityError, match="lockfile_jf.use"):
        load_jugfile(jf, open_store("memory:"))


if __name__ == "__main__":
    GOLDEN.write_text(
        json.dumps(compute_golden(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {GOLDEN}")
