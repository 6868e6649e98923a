"""The code beside the jugfile, on every worker: how ``import helper`` inside a task works.

jug runs the jugfile in every process, so its directory is on ``sys.path`` everywhere and a task
may ``import helper`` (a module beside the jugfile) at run time. ajug's workers do not run the
jugfile, so the coordinator tells each worker the jugfile's *code roots*: its directory and the
directories the jugfile added to ``sys.path`` while loading. A worker then:

1. puts every code root that exists on its machine at the front of ``sys.path``, as jug does
   (``ajug run``'s workers, and ``ajug work`` on a shared filesystem: the same files);
2. if some root does not exist there (another machine, no shared filesystem), asks the
   coordinator once for its copy of the modules under the roots (the *bundle*) and imports from
   it, after everything installed or on disk (``BundleFinder`` is last on ``sys.meta_path``);
3. registers the jugfile's own module name as a ``JugfileModule``: importing it (a helper that
   does ``from analysis import X``, or a result whose class the jugfile defines) never runs the
   jugfile unless a name defined in it is needed, and then runs it once, as jug would.

Functions and classes of the jugfile and of modules beside it travel by value (cloudpickle), so
tasks defined there need no import at all; module objects they refer to travel by name and are
imported on the worker by the rules above. That is what keeps import cycles between modules
(a package whose submodule imports the package) from recursing while pickling.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The bundle is bounded: a jugfile in a home directory must not ship the whole of it.
MAX_BUNDLE_BYTES = 32 << 20
MAX_BUNDLE_FILES = 5000
_SKIP_DIRS = ("site-packages", "dist-packages", "__pycache__", "node_modules")


@dataclass(frozen=True)
class ModuleSource:
    name: str  # dotted module name
    path: str  # the file on the coordinator's machine (shown in tracebacks)
    is_pkg: bool
    source: bytes


# -- coordinator side ------------------------------------------------------------------------
def code_roots(jugdir: str | os.PathLike[str], added: Iterable[str] = ()) -> list[str]:
    """The jugfile's directory, then what the jugfile put on ``sys.path`` (absolute, existing,
    not installed packages), without repeats."""
    out: list[str] = []
    for p in (os.fspath(jugdir), *added):
        if not p:
            continue
        a = os.path.abspath(p)
        if a in out or not os.path.isdir(a) or any(s in Path(a).parts for s in _SKIP_DIRS):
            continue
        out.append(a)
    return out


def _module_files(root: str) -> Iterable[tuple[str, str, bool]]:
    """(module name, file, is package) for the importable modules under ``root``: its ``.py``
    files, and packages (directories with ``__init__.py``) with what is inside them."""
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        d, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            name = e.name
            if name.startswith(".") or name in _SKIP_DIRS:
                continue
            try:
                if e.is_file() and name.endswith(".py"):
                    stem = name[:-3]
                    if stem.isidentifier() and stem != "__init__":
                        yield prefix + stem, e.path, False
                elif e.is_dir() and name.isidentifier():
                    init = os.path.join(e.path, "__init__.py")
                    if os.path.isfile(init):
                        yield prefix + name, init, True
                        stack.append((e.path, prefix + name + "."))
            except OSError:
                continue


def collect_bundle(roots: Sequence[str], exclude: Iterable[str] = (),
                   max_bytes: int = MAX_BUNDLE_BYTES) -> list[ModuleSource]:
    """The sources of the modules under ``roots`` (modules already imported first: a task is
    likeliest to need those), at most ``max_bytes`` and ``MAX_BUNDLE_FILES`` in all.

    The first root that holds a name wins, as on ``sys.path``."""
    skip = set(exclude)
    found: dict[str, tuple[str, bool]] = {}
    for root in roots:
        for name, path, is_pkg in _module_files(root):
            if name not in found and name.split(".")[0] not in skip:
                found[name] = (path, is_pkg)
    loaded = [n for n in found if n in sys.modules]
    order = loaded + [n for n in found if n not in sys.modules]
    out: list[ModuleSource] = []
    total = 0
    for name in order:
        path, is_pkg = found[name]
        try:
            src = Path(path).read_bytes()
        except OSError:
            continue
        if total + len(src) > max_bytes or len(out) >= MAX_BUNDLE_FILES:
            log.warning(
                "the code beside the jugfile is larger than %d MiB or %d files: workers on "
                "machines without %s get only part of it (put shared code in an installed "
                "package, or run workers where the directory is mounted)",
                max_bytes >> 20, MAX_BUNDLE_FILES, roots[0])
            break
        total += len(src)
        out.append(ModuleSource(name, path, is_pkg, src))
    return out


# -- worker side -----------------------------------------------------------------------------
class BundleFinder(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Imports modules from the coordinator's copy (last on ``sys.meta_path``, so installed
    packages and files on this machine win). ``get_source`` lets tracebacks show the lines."""

    def __init__(self, modules: Iterable[ModuleSource]) -> None:
        self.modules = {m.name: m for m in modules}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        m = self.modules.get(fullname)
        if m is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=m.path, is_package=m.is_pkg)
        if spec is not None:
            spec.has_location = True
            if m.is_pkg:
                spec.submodule_search_locations = [os.path.dirname(m.path)]
        return spec

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        m = self.modules[module.__name__]
        module.__file__ = m.path
        exec(compile(m.source, m.path, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, fullname: str) -> str | None:
        m = self.modules.get(fullname)
        return None if m is None else m.source.decode("utf-8", "replace")

    def is_package(self, fullname: str) -> bool:
        m = self.modules.get(fullname)
        return bool(m and m.is_pkg)

    def get_filename(self, fullname: str) -> str:
        return self.modules[fullname].path


class JugfileModule(types.ModuleType):
    """The jugfile's module on a worker: empty until someone needs a name defined in it, then
    the jugfile runs here once (as jug runs it in every process) and the name comes from it."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.__file__ = path
        self.__dict__["_ajug_loaded"] = False

    def __getattr__(self, attr: str) -> Any:
        d = self.__dict__
        if attr.startswith("__") or d.get("_ajug_loaded"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        d["_ajug_loaded"] = True
        path = d.get("__file__", "")
        if not path or not os.path.isfile(path):
            raise AttributeError(
                f"{attr!r} is defined in the jugfile {Path(path).name}, which is not on this "
                "machine: move it into a module beside the jugfile")
        _run_jugfile_here(self, path)
        if attr in d:
            return d[attr]
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


def _run_jugfile_here(module: types.ModuleType, path: str) -> None:
    from .barrier import BarrierError

    log.info("running the jugfile %s on this worker: a name defined in it is needed", path)
    try:
        exec(compile(Path(path).read_bytes(), path, "exec"), module.__dict__)
    except BarrierError:
        pass  # what comes before the barrier is defined, as when jug loads it


def prepare_worker(jugfile: str, roots: Sequence[str]) -> list[str]:
    """Make the jugfile's code importable here; return the roots missing on this machine (for
    those, the caller fetches the bundle and calls ``install_bundle``)."""
    if jugfile:
        name = Path(jugfile).stem
        if name.isidentifier() and not isinstance(sys.modules.get(name), types.ModuleType):
            sys.modules[name] = JugfileModule(name, jugfile)
    missing = []
    for root in reversed(list(roots)):
        if os.path.isdir(root):
            if root not in sys.path:
                sys.path.insert(0, root)
        else:
            missing.append(root)
    importlib.invalidate_caches()
    return list(reversed(missing))


def install_bundle(modules: Iterable[ModuleSource]) -> BundleFinder:
    finder = BundleFinder(modules)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, BundleFinder)]
    sys.meta_path.append(finder)
    return finder
