"""How a worker imports the code beside the jugfile (ajug/codeship.py), in one process: the
coordinator's side (code roots, the bundle) and the worker's (sys.path, the bundle finder, the
jugfile's module that runs the jugfile only when a name in it is needed)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import env

from ajug import codeship
from ajug.codeship import ModuleSource, collect_bundle, install_bundle


@pytest.fixture
def clean_imports() -> Iterator[None]:
    """Undo what a test does to sys.modules, sys.path and sys.meta_path."""
    mods, path, meta = dict(sys.modules), list(sys.path), list(sys.meta_path)
    yield
    for name in set(sys.modules) - set(mods):
        del sys.modules[name]
    sys.path[:] = path
    sys.meta_path[:] = meta


def test_code_roots_are_the_jugfile_directory_then_what_it_added(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    roots = codeship.code_roots(tmp_path, ["src", str(tmp_path / "src"), str(tmp_path / "gone"),
                                           "/usr/lib/python3/dist-packages"])
    assert roots[0] == str(tmp_path)
    assert str(tmp_path / "gone") not in roots and not any("dist-packages" in r for r in roots)
    assert roots.count(str(tmp_path / "src")) <= 1


def test_the_bundle_holds_modules_and_packages_not_data_or_the_jugfile(tmp_path: Path) -> None:
    for rel in ("helper.py", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/deep.py",
                "analysis.py", "data/notapackage.py", ".hidden/x.py", "not-a-name.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"NAME = {rel!r}\n")
    names = {m.name: m for m in collect_bundle([str(tmp_path)], exclude=["analysis"])}
    assert set(names) == {"helper", "pkg", "pkg.sub", "pkg.sub.deep"}
    assert names["pkg"].is_pkg and not names["helper"].is_pkg
    assert names["pkg.sub.deep"].source == b"NAME = 'pkg/sub/deep.py'\n"


def test_the_bundle_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(10):
        (tmp_path / f"m{i}.py").write_text("x = 1\n" * 100)
    got = collect_bundle([str(tmp_path)], max_bytes=2000)
    assert 0 < len(got) < 10
    assert "larger than" in caplog.text


def test_bundle_modules_import_with_cycles_and_show_their_lines_in_tracebacks(
        clean_imports: None) -> None:
    where = "/nonexistent/project"
    install_bundle([
        ModuleSource("cyclepkg", f"{where}/cyclepkg/__init__.py", True, b"from .sub import f\n"),
        ModuleSource("cyclepkg.sub", f"{where}/cyclepkg/sub.py", False,
                     b"import cyclepkg\n\ndef f(x):\n    raise ValueError(f'bad {x}')\n"),
    ])
    import cyclepkg  # type: ignore[import-not-found]

    with pytest.raises(ValueError) as exc:
        cyclepkg.f(3)
    tb = "".join(traceback.format_exception(exc.value))
    assert f'File "{where}/cyclepkg/sub.py", line 4, in f' in tb
    assert "raise ValueError(f'bad {x}')" in tb


def test_files_on_this_machine_win_over_the_bundle(tmp_path: Path, clean_imports: None) -> None:
    (tmp_path / "localmod.py").write_text("WHERE = 'disk'\n")
    install_bundle([ModuleSource("localmod", "/elsewhere/localmod.py", False,
                                 b"WHERE = 'bundle'\n")])
    missing = codeship.prepare_worker("", [str(tmp_path), "/elsewhere"])
    assert missing == ["/elsewhere"]
    import localmod  # type: ignore[import-not-found]

    assert localmod.WHERE == "disk"


JUGFILE = textwrap.dedent("""\
    import os
    from pathlib import Path

    from ajug import TaskGenerator, barrier

    Path(os.environ["RAN_MARK"]).write_text("ran")


    class Thing:
        def __init__(self, v):
            self.v = v


    @TaskGenerator
    def f(x):
        return x

    t = f(1)
    barrier()
    AFTER = 1
    """)


def test_the_jugfile_runs_on_a_worker_only_when_a_name_in_it_is_needed(tmp_path: Path) -> None:
    """A result of a class the jugfile defines, pickled by reference (as jug and the in-process
    executor store it), loads on a worker: the jugfile runs there then, once, up to a barrier
    whose tasks are not done. Before that, importing the jugfile's module runs nothing."""
    jf = tmp_path / "things.py"
    jf.write_text(JUGFILE)
    mark = tmp_path / "mark"
    code = textwrap.dedent(f"""\
        import pickle, sys
        from pathlib import Path
        from ajug import codeship
        from ajug.stores import open_store
        from ajug.task import Task
        Task.store = open_store("memory:")
        codeship.prepare_worker({str(jf)!r}, [])
        import things
        assert not Path({str(mark)!r}).exists(), "importing must not run the jugfile"
        blob = {pickle.dumps(("things", "Thing"))!r}
        mod, name = pickle.loads(blob)
        cls = getattr(sys.modules[mod], name)
        assert Path({str(mark)!r}).read_text() == "ran"
        assert cls(3).v == 3 and not hasattr(things, "AFTER")
        print("ok")
        """)
    out = subprocess.run([sys.executable, "-c", code], env=env(RAN_MARK=str(mark)),
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_missing_jugfile_name_says_what_to_do(tmp_path: Path, clean_imports: None) -> None:
    codeship.prepare_worker(str(tmp_path / "gone_jugfile.py"), [])
    mod = sys.modules["gone_jugfile"]
    with pytest.raises(AttributeError, match="not on this machine: move it into a module"):
        mod.Thing  # noqa: B018


def test_module_objects_pickle_by_name(tmp_path: Path, clean_imports: None) -> None:
    """A function from beside the jugfile that uses a package with an import cycle pickles (it
    recursed forever when the package went by value)."""
    from ajug.graph import pickle_function, register_by_value

    (tmp_path / "cyc").mkdir()
    (tmp_path / "cyc" / "__init__.py").write_text("from .sub import f\n")
    (tmp_path / "cyc" / "sub.py").write_text("import cyc\n\ndef f(x):\n    return x + 1\n")
    (tmp_path / "user.py").write_text("import cyc\n\ndef use(x):\n    return cyc.f(x) * 2\n")
    sys.path.insert(0, str(tmp_path))
    import cloudpickle
    import user  # type: ignore[import-not-found]

    from ajug import graph

    register_by_value(tmp_path)
    try:
        blob = pickle_function(user.use, "user.use")
    finally:
        for name in ("user", "cyc", "cyc.sub"):
            graph._BY_VALUE.discard(name)
            if name in sys.modules:
                cloudpickle.unregister_pickle_by_value(sys.modules[name])
    assert pickle.loads(blob)(3) == 8
