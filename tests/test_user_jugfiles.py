"""Jugfiles as users write them: helper modules and packages beside the jugfile (imported inside
tasks, with import cycles, from a directory the jugfile put on ``sys.path``), classes defined in
the jugfile, jug's option and hook modules, tasks that change their inputs in place.

Each runs through the real engine: ``ajug run`` with forked and with spawned workers, and
``ajug serve`` + ``ajug work`` with the worker started in another directory; values are read
back in a fresh interpreter, as a user's script would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from procs import Procs, ajug_cmd, env, read_log, values

RUN_TIMEOUT_S = 90

HELPERS = {
    "helper.py": "def f(x):\n    return x + 1\n",
    # a package whose submodule imports the package: a cycle, as normal Python allows
    "helperpkg/__init__.py": "from .sub import f\n",
    "helperpkg/sub.py": "import helperpkg\n\ndef f(x):\n    return x + 1\n",
    "learnmod.py": textwrap.dedent("""\
        import helperpkg

        class Learner:
            def train(self, x):
                return helperpkg.f(x)
        """),
    # a directory the jugfile puts on sys.path itself
    "src/srcmod.py": "def g(x):\n    return 100 * x\n",
}

JUGFILE = textwrap.dedent("""\
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

    import helperpkg
    from learnmod import Learner

    from ajug import TaskGenerator


    class Pair:
        # a class defined in the jugfile, returned by a task and used by another
        def __init__(self, a, b):
            self.a, self.b = a, b

        def total(self):
            return self.a + self.b


    @TaskGenerator
    def use_helper(x):
        import helper  # imported while the task runs, as real jugfiles do

        return helper.f(x)


    @TaskGenerator
    def use_learner(learner, x):
        return learner.train(x)


    @TaskGenerator
    def use_package_global(x):
        return helperpkg.f(x) * 10


    @TaskGenerator
    def use_srcmod(x):
        import srcmod

        return srcmod.g(x)


    @TaskGenerator
    def make_pair(a, b):
        return Pair(a, b)


    @TaskGenerator
    def pair_total(p):
        return p.total()


    helped = [use_helper(i) for i in range(3)]
    learned = use_learner(Learner(), 3)
    package_global = use_package_global(2)
    from_src = use_srcmod(4)
    total = pair_total(make_pair(5, 6))
    """)

NAMES = ["helped", "learned", "package_global", "from_src", "total"]
EXPECTED = {"helped": [1, 2, 3], "learned": 4, "package_global": 30, "from_src": 400, "total": 11}


def write_project(root: Path, jugfile: str = JUGFILE, helpers: dict[str, str] = HELPERS) -> Path:
    for rel, text in helpers.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    jf = root / "analysis.py"
    jf.write_text(jugfile)
    return jf


def run(args: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ajug_cmd(*args), cwd=cwd, env=env(**extra_env), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, start_new_session=True)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_ajug_run_from_another_directory(tmp_path: Path, start: str) -> None:
    """The worker's working directory is not the jugfile's: modules beside the jugfile must
    import anyway (a forked worker used to lack the jugfile's directory on sys.path)."""
    jf = write_project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run(["run", str(jf), "-j", "2", "--no-progress"], cwd=elsewhere,
              AJUG_WORKER_START=start)
    assert out.returncode == 0, out.stderr
    assert values(jf, NAMES) == EXPECTED


def test_serve_and_a_worker_started_in_another_directory(tmp_path: Path, procs: Procs) -> None:
    jf = write_project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    serve, port = procs.serve(jf, cwd=elsewhere)
    w = procs.work(port, cwd=elsewhere)
    assert w.wait(RUN_TIMEOUT_S) == 0, read_log(w)
    assert serve.wait(RUN_TIMEOUT_S) == 0, read_log(serve)
    assert values(jf, NAMES) == EXPECTED


def _can_hide_directories() -> str:
    """Why a worker cannot be given a machine without the project directory ('' if it can):
    a mount namespace with a tmpfs over the directory (root, util-linux's unshare)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not found"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a mount namespace: {probe.stderr.strip()}"
    return ""


def test_a_worker_on_a_machine_without_the_project_directory(tmp_path: Path, procs: Procs) -> None:
    """No shared filesystem for code: the worker imports the modules beside the jugfile from
    the coordinator's copy, and a task's traceback still shows the helper's source lines."""
    why = _can_hide_directories()
    if why:
        if os.environ.get("AJUG_REQUIRE_UNSHARE") == "1":
            pytest.fail(f"{why} (AJUG_REQUIRE_UNSHARE=1)")
        pytest.skip(why)
    helpers = dict(HELPERS)
    helpers["boom.py"] = "def explode(x):\n    raise ValueError(f'exploded on {x}')\n"
    jugfile = JUGFILE + textwrap.dedent("""\


        @TaskGenerator
        def use_boom(x):
            import boom

            return boom.explode(x)


        exploded = use_boom(7)
        """)
    project = tmp_path / "project"
    jf = write_project(project, jugfile, helpers)
    store = tmp_path / "store"  # shared by both; the code directory is not
    serve, port = procs.serve(jf, "--store", str(store))
    hide = (f"mount -t tmpfs none {project} && cd / && exec {sys.executable} -m ajug -v work "
            f"127.0.0.1:{port}")
    w = procs.start_cmd(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide],
                        "work-hidden")
    assert w.wait(RUN_TIMEOUT_S) == 0, read_log(w)
    assert serve.wait(RUN_TIMEOUT_S) == 1, read_log(serve)  # use_boom failed, as it must
    log = read_log(w)
    assert "from the coordinator's copy" in log, log
    assert values(jf, NAMES, store=str(store)) == EXPECTED
    st = json.loads(subprocess.run(ajug_cmd("status", str(jf), "--store", str(store), "--json"),
                                   capture_output=True, text=True, env=env(),
                                   timeout=60).stdout)
    assert st["totals"]["done"] == st["tasks"] - 1
    assert "ValueError: exploded on 7" in log


JUG_OPTIONS_JUGFILE = textwrap.dedent("""\
    import ajug.options
    from ajug import TaskGenerator, is_jug_running
    from ajug.hooks import exit_checks
    from ajug.options import default_options

    # what jugfiles written for jug do to tune jug
    default_options.execute_wait_cycle_time_secs = 1
    default_options.execute_nr_wait_cycles = 3
    default_options.aggressive_unload = True
    ajug.options.default_options.some_name_of_my_own = "kept"
    exit_checks.exit_after_n_tasks(1000)
    exit_checks.exit_env_vars()
    WHERE = (default_options.jugfile, default_options.jugdir, default_options.some_name_of_my_own,
             default_options.execute_keep_going)


    @TaskGenerator
    def report(where):
        return list(where) + [is_jug_running()]


    where = report(WHERE)
    """)


def test_jugfiles_that_set_jug_options_and_exit_checks_load_and_run(tmp_path: Path) -> None:
    jf = tmp_path / "tuned.py"
    jf.write_text(JUG_OPTIONS_JUGFILE)
    out = run(["run", str(jf), "-j", "1", "--no-progress"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = values(jf, ["where"])["where"]
    assert got == [str(jf), str(tmp_path / "tuned.ajugdata"), "kept", False, True]


MUTATE_JUGFILE = textwrap.dedent("""\
    from ajug import TaskGenerator


    @TaskGenerator
    def make(i):
        return [i]


    @TaskGenerator
    def mutate(x):
        x.append("mutated")
        return len(x)


    @TaskGenerator
    def read(x):
        return list(x)


    made = [make(i) for i in range(N)]
    mutated = [mutate(m) for m in made]
    read_back = [read(m) for m in made]
    """)


@pytest.mark.parametrize("how", ["run-2", "run-1", "in-process"])
def test_a_task_that_changes_its_input_changes_nothing_else(tmp_path: Path, how: str) -> None:
    """What is stored for a task is what it returned, and every task receives its inputs equal
    to their stored values, wherever it runs (stricter than jug, which hands a live object to
    the next task when both run in one process)."""
    n = 40
    jf = tmp_path / "mutating.py"
    jf.write_text(f"N = {n}\n" + MUTATE_JUGFILE)
    if how == "in-process":
        code = ("from ajug.executor import execute_jugfile\n"
                f"assert execute_jugfile({str(jf)!r}).ok\n")
        out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                             text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    else:
        out = run(["run", str(jf), "-j", how[-1], "--no-progress"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = values(jf, ["made", "mutated", "read_back"])
    assert got["made"] == [[i] for i in range(n)]
    assert got["mutated"] == [2] * n
    assert got["read_back"] == [[i] for i in range(n)]
