"""Jugfiles for the task-model and jug-compatibility tests, written for either package.

Each source says ``PKG`` where it imports the framework: ``source(name, "ajug")`` is an ajug
jugfile and ``source(name, "jug")`` the same jugfile for jug, so that both build the same tasks
(modelled on jug's own tests/jugfiles). ``EXPECTED[name]`` maps variables of the jugfile to
the values they have once everything has run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCES: dict[str, str] = {}
EXPECTED: dict[str, dict[str, Any]] = {}

SOURCES["simple"] = """
from PKG import TaskGenerator

@TaskGenerator
def double(x):
    return x * 2

@TaskGenerator
def sum2(a, b):
    return a + b

@TaskGenerator
def plus1(x):
    return x + 1

vals = list(range(8))
vals = [double(v) for v in vals]
vals = [plus1(v) for v in vals]
vals = [sum2(v, 2) for v in vals]
vals = [sum2(v, v) for v in vals]
"""
EXPECTED["simple"] = {"vals": [((2 * v + 1) + 2) * 2 for v in range(8)]}

SOURCES["tasklets"] = """
from PKG import Task, Tasklet

def double(xs):
    return [x * 2 for x in xs]

def sum2(a, b):
    return a + b

def plus1(x):
    return x + 1

vals = [0, 1, 2, 3, 4, 5, 6, 7]
t = Task(double, vals)
t0 = t[0]
t2 = t[2]
t0_2 = Task(sum2, t0, t2)
t0_2_1 = Tasklet(t0_2, plus1)
t0_2_2 = Tasklet(t0_2_1, lambda x: x + 1)
final = Task(sum2, t0_2_1, t0_2_2)
d = Task(dict, a=t0, b=[t2, {"c": t0_2}])
dk = Task(sum2, d["a"], d["b"][1]["c"])
"""
EXPECTED["tasklets"] = {
    "t0": 0,
    "t2": 4,
    "t0_2": 4,
    "t0_2_1": 5,
    "t0_2_2": 6,
    "final": 11,
    "d": {"a": 0, "b": [4, {"c": 4}]},
    "dk": 4,
}

SOURCES["mapreduce"] = """
from PKG import Task, TaskGenerator, mapreduce

@TaskGenerator
def double(x):
    return 2 * x

@TaskGenerator
def sum2(a, b):
    return a + b

@TaskGenerator
def sum_all(xs):
    return sum(xs)

def square(x):
    return x * x

vs = list(range(16))
v2s = mapreduce.map(double, vs)
s = sum_all(v2s)
v4s = mapreduce.map(double, v2s)
part = sum_all(v4s[3:11:2])
sumtwo = mapreduce.mapreduce(sum2, double, list(range(10)))
squares = mapreduce.mapreduce(sum2, square, list(range(30)), map_step=3, reduce_step=2)
total = mapreduce.reduce(sum2, [Task(square, i) for i in range(9)], reduce_step=3)
curried = mapreduce.currymap(sum2, [(i, 100) for i in range(7)], map_step=3)
single = mapreduce.map(square, [1, 2, 3], map_step=1)
empty = mapreduce.map(square, [])
"""
EXPECTED["mapreduce"] = {
    "v2s": [2 * v for v in range(16)],
    "s": sum(2 * v for v in range(16)),
    "v4s": [4 * v for v in range(16)],
    "part": sum(4 * v for v in range(3, 11, 2)),
    "sumtwo": 2 * sum(range(10)),
    "squares": sum(x * x for x in range(30)),
    "total": sum(i * i for i in range(9)),
    "curried": [i + 100 for i in range(7)],
    "single": [1, 4, 9],
    "empty": [],
}

SOURCES["compound"] = """
from PKG import TaskGenerator
from PKG.compound import CompoundTask, CompoundTaskGenerator
from PKG import mapreduce

@TaskGenerator
def double(x):
    return 2 * x

@CompoundTaskGenerator
def twice(x):
    return (double(x), double(x))

@TaskGenerator
def tadd(y):
    return y[0] + y[1]

def add(a, b):
    return a + b

def square(x):
    return x * x

eight = twice(4)
sixteen = tadd(eight)
squares = CompoundTask(mapreduce.mapreduce, add, square, list(range(20)))
after = double(squares)
"""
EXPECTED["compound"] = {
    "eight": (8, 8),
    "sixteen": 16,
    "squares": sum(x * x for x in range(20)),
    "after": 2 * sum(x * x for x in range(20)),
}

SOURCES["compound_nonsimple"] = """
from PKG import barrier, value, TaskGenerator
from PKG.utils import identity
from PKG.compound import CompoundTaskGenerator

@TaskGenerator
def double(x):
    return 2 * x

@CompoundTaskGenerator
def twice(x):
    return (double(x), double(x))

@TaskGenerator
def tadd(y):
    return y[0] + y[1]

eight = twice(4)
barrier()
eight = identity(eight)
barrier()
sixteen = tadd(eight)
"""
EXPECTED["compound_nonsimple"] = {"sixteen": 16}

SOURCES["compound_wbarrier"] = """
from PKG import barrier, value, TaskGenerator
from PKG.compound import CompoundTaskGenerator

@TaskGenerator
def double(x):
    return 2 * x

@CompoundTaskGenerator
def twice(x):
    x2 = double(x)
    barrier()
    return double(value(x2))

four = double(2)
sixteen = twice(four)
"""
EXPECTED["compound_wbarrier"] = {"four": 4, "sixteen": 16}

SOURCES["bvalue"] = """
from PKG import Task, bvalue

def double(x):
    return 2 * x

two = Task(double, 1)
two = bvalue(two)
four = 2 * two
eight = Task(double, four)
"""
EXPECTED["bvalue"] = {"two": 2, "four": 4, "eight": 8}

SOURCES["wbarrier"] = """
from PKG import barrier, Task

def double(x):
    return x * 2.0

two = Task(double, 1)
barrier()
four = Task(double, two)

def make_call(f, arg):
    return f(arg)

eight = Task(make_call, double, four)
"""
EXPECTED["wbarrier"] = {"two": 2.0, "four": 4.0, "eight": 8.0}

SOURCES["barrier_mapreduce"] = """
from functools import reduce
import operator
from PKG import barrier, value, mapreduce

def double(x):
    return 2 * x

two = mapreduce.map(double, list(range(1, 11)))
barrier()
product = reduce(operator.mul, value(two))
"""
EXPECTED["barrier_mapreduce"] = {"two": [2 * i for i in range(1, 11)], "product": 3715891200}

SOURCES["iteratetask"] = """
from PKG import Task
from PKG.task import iteratetask

def double(xs):
    return [x * 2 for x in xs]

vals = [0, 1, 2]
t = Task(double, vals)
t0, t1, t2 = iteratetask(t, 3)
f2 = Task(double, [t0, t1])
f3 = Task(double, [2, 3, 4])
"""
EXPECTED["iteratetask"] = {"t0": 0, "t1": 2, "t2": 4, "f2": [0, 4], "f3": [4, 6, 8]}

SOURCES["slice_task"] = """
from PKG import TaskGenerator
from PKG.task import return_tuple

@TaskGenerator
def zero():
    return 0

@TaskGenerator
def range10():
    return list(range(10))

@TaskGenerator
def double(x):
    return 2 * x

@return_tuple(2)
@TaskGenerator
def plus1(x):
    return x, 1 + x

r = range10()
z = zero()
r0 = r[z]
z2 = double(r0)
z2_2, z3 = plus1(z2)
z4 = double(z3)  # a task taking a return_tuple Tasklet: its identity is jug's too
sl = r[2:5]
"""
EXPECTED["slice_task"] = {"r0": 0, "z2": 0, "z2_2": 0, "z3": 1, "z4": 2, "sl": [2, 3, 4]}

SOURCES["custom_hash"] = """
from PKG import TaskGenerator
from PKG.utils import CustomHash

hash_called = 0

def bad_hash(x):
    global hash_called
    hash_called += 1
    return f"{x}".encode("utf-8")

@TaskGenerator
def double(x):
    return 2 * x

one = CustomHash(1, bad_hash)
two = double(one)
four = double(CustomHash(two, bad_hash))
"""
EXPECTED["custom_hash"] = {"two": 2, "four": 4}

SOURCES["no_load"] = """
from PKG import TaskGenerator, value
from PKG.io import NoLoad

@TaskGenerator
def gen(i):
    return i * 0.5

@TaskGenerator
def sum_partials(ts):
    total = 0.0
    for t in ts:
        assert isinstance(t, NoLoad)
        total += value(t.base)
    return total

@TaskGenerator
def double(x):
    return 2 * x

map_ts = [gen(i) for i in range(10)]
x = sum_partials([NoLoad(t) for t in map_ts])
final = double(x)
"""
EXPECTED["no_load"] = {"x": 22.5, "final": 45.0}

SOURCES["duplicates"] = """
from PKG import TaskGenerator

@TaskGenerator
def double(x):
    return 2 * x

a = double(2)
b = double(2)
c = [double(i % 3) for i in range(9)]
"""
EXPECTED["duplicates"] = {"a": 4, "b": 4, "c": [0, 2, 4] * 3}

SOURCES["kitchen_sink"] = """
import numpy as np
from PKG import Task, Tasklet, TaskGenerator, mapreduce, barrier, bvalue
from PKG.utils import identity, CustomHash

@TaskGenerator
def make_array(n, dtype):
    return np.arange(n, dtype=dtype)

@TaskGenerator
def describe(*args, **kwargs):
    return (len(args), sorted(kwargs))

@TaskGenerator
def total(x):
    return float(np.sum(x))

@TaskGenerator
def nothing():
    return None

def fixed_hash(x):
    return b"fixed-" + str(x).encode()

arr = make_array(10, "f8")
ints = make_array(7, np.int32)
args = describe(
    None, True, -3, 2 ** 70, 1.5, float("nan"), complex(1, 2), "héllo ☃", b"\\x00\\xff",
    (1, [2, 3]), {"a": 1, 2: "b", (3, 4): None}, {"x", "y", 5}, frozenset({1, 2}),
    np.arange(6).reshape(2, 3)[:, ::2], np.float64(2.5), np.array(3),
    key=[arr, {"t": ints}], other=arr[2:5],
)
summed = total(arr)
big = identity(list(range(1000)))
lam = describe(Tasklet(summed, lambda v: v + 1))
custom = describe(CustomHash(arr, fixed_hash))
none = nothing()
halves = mapreduce.map(total, [np.ones(i) for i in range(9)], map_step=2)
barrier()
n = int(bvalue(summed))
after = make_array(n, "i8")
"""
EXPECTED["kitchen_sink"] = {
    "args": (16, ["key", "other"]),
    "summed": 45.0,
    "big": list(range(1000)),
    "lam": (1, []),
    "custom": (1, []),
    "none": None,
    "halves": [float(i) for i in range(9)],
    "n": 45,
}


def source(name: str, pkg: str) -> str:
    return SOURCES[name].replace("PKG", pkg)


def write(directory: Path, name: str, pkg: str = "ajug") -> Path:
    """Write the jugfile as ``<directory>/jf_<name>.py`` (a module name no library has)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"jf_{name}.py"
    path.write_text(source(name, pkg), encoding="utf-8")
    return path
