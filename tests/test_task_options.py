"""Per-task options (resources, timeout, retries, priority): how a jugfile sets them, how the
graph keeps them, and that they never change a task's identity (jug's stays valid)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ajug.task
from ajug import Task, TaskGenerator
from ajug.graph import build_graph
from ajug.taskopts import NO_OPTIONS, make_options, parse_quantity, parse_resources

jug_task = pytest.importorskip("jug.task")


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    ajug.task.reset()
    yield
    ajug.task.reset()


def double(x: int) -> int:
    return 2 * x


def test_options_do_not_change_identities_which_stay_jugs() -> None:
    plain = TaskGenerator(double)
    with_opts = TaskGenerator(resources={"gpus": 1, "memory": "8GiB"}, timeout=60, retries=2,
                              priority=5)(double)
    jug_key = jug_task.Task(double, 3).hash().decode()
    assert plain(3).key == jug_key
    assert with_opts(3).key == jug_key
    assert with_opts.options(priority=9)(3).key == jug_key
    assert plain(3).set_options(timeout=1).key == jug_key


def test_function_options_per_call_and_per_task() -> None:
    gen = TaskGenerator(resources={"gpus": 1}, timeout=30)(double)
    t = gen(1)
    assert t.opts is not None and t.opts.needs() == {"gpus": 1.0} and t.opts.timeout_s == 30
    u = gen.options(priority=3, resources={"memory": "1KiB"})(2)
    assert u.opts is not None and u.opts.priority == 3 and u.opts.timeout_s == 30
    assert u.opts.needs() == {"gpus": 1.0, "memory": 1024.0}
    v = gen(3).set_options(timeout=5)
    assert v.opts is not None and v.opts.timeout_s == 5 and v.opts.needs() == {"gpus": 1.0}
    assert gen(4).opts == t.opts  # set_options changed that task only
    assert TaskGenerator(double)(5).opts is None  # no options: nothing stored per task


def test_the_graph_keeps_each_tasks_options_compactly() -> None:
    gen = TaskGenerator(double)
    gpu = TaskGenerator(resources={"gpus": 1})(double)
    ts = [gen(0), gpu(1), gpu(2), gen(3).set_options(priority=7)]
    g = build_graph(ts, encode=False)
    assert g.opts(0) == NO_OPTIONS
    assert g.opts(1) == g.opts(2) and g.opts(1).needs() == {"gpus": 1.0}
    assert g.opts(3).priority == 7
    assert len(g.options) == 3  # none, gpus, priority: shared, not per task
    plain = build_graph([Task(double, i) for i in range(10, 20)], encode=False)
    assert plain.opt_of is None


@pytest.mark.parametrize("bad, what", [
    ({"resources": {"gpus": -1}}, "at least 0"),
    ({"resources": {"memory": "lots"}}, "is not an amount"),
    ({"resources": {"bad name": 1}}, "resource name"),
    ({"timeout": 0}, "positive number of seconds"),
    ({"timeout": "10"}, "number of seconds"),
    ({"retries": -1}, "at least 0"),
    ({"priority": 1.5}, "whole number"),
])
def test_bad_options_say_what_is_wrong(bad: dict, what: str) -> None:
    with pytest.raises((ValueError, TypeError), match=what):
        make_options(**bad)
    with pytest.raises((ValueError, TypeError), match=what):
        TaskGenerator(**bad)(double)


def test_quantities_and_resource_lists() -> None:
    assert parse_quantity("memory", "64GiB") == 64 * 2**30
    assert parse_quantity("memory", "500MB") == 500e6
    assert parse_quantity("gpus", 2) == 2.0
    assert parse_resources("gpus=2, memory=64GiB,licence=1") == {
        "gpus": 2.0, "memory": 64 * 2**30, "licence": 1.0}
    with pytest.raises(ValueError, match="NAME=AMOUNT"):
        parse_resources("gpus")


def test_status_shows_each_functions_options(tmp_path: Path) -> None:
    """Offline status (JSON and text) lists the options each function's tasks have."""
    import subprocess
    import sys

    jf = tmp_path / "opts.py"
    jf.write_text(
        "from ajug import TaskGenerator\n\n"
        "@TaskGenerator(resources={'gpus': 1}, timeout=3600, retries=1)\n"
        "def train(i):\n    return i\n\n"
        "@TaskGenerator\ndef plain(i):\n    return i\n\n"
        "ts = [train(i) for i in range(2)] + [train.options(priority=5)(9)]\n"
        "ps = [plain(i) for i in range(2)]\n")
    run = [sys.executable, "-m", "ajug", "status", str(jf)]
    out = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {f["name"]: f for f in __import__("json").loads(out.stdout)["functions"]}
    assert rows["opts.train"]["options"] == [
        {"resources": {"gpus": 1.0}, "timeout": 3600, "retries": 1},
        {"resources": {"gpus": 1.0}, "timeout": 3600, "retries": 1, "priority": 5}]
    assert "options" not in rows["opts.plain"]
    text = subprocess.run(run, capture_output=True, text=True, timeout=60).stdout
    assert ("options: opts.train: gpus=1, timeout 3600 s, retries 1; gpus=1, timeout 3600 s, "
            "retries 1, priority 5") in text
