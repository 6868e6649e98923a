"""jug's own test jugfiles (``jug/tests/jugfiles`` of the installed jug), imports renamed to
ajug, run with ``ajug run -j 2`` many times in a row, each on a fresh store; every run's values
must equal what ``jug execute`` computed (identities too).

``python tests/jug_own_jugfiles.py [RUNS] [NAME...]`` runs it by hand; the slow test in
test_jug_own_jugfiles.py runs it in CI.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import jug  # noqa: E402
from fuzz_checks import Checker, Failed  # noqa: E402
from fuzz_jugfiles import FZ_LOG  # noqa: E402

JUGFILES = Path(jug.__file__).parent / "tests" / "jugfiles"
# what they do that no two runs can agree on: random numbers (identities are compared)
RANDOM = {"no_load.py"}

LOAD = """\
import json, sys
from ajug import task as T
from ajug.errors import JugfileError
from ajug.jugfile import load_jugfile, unique_tasks
from ajug.stores import open_store
from ajug.task import Task, value
from fz_log import canon
out = []
for store_url in sys.argv[2:]:
    store = open_store(store_url)
    Task.store = store
    try:
        tasks = load_jugfile(sys.argv[1], store).tasks
    except JugfileError:  # a jugfile that raises past its barrier (as with jug: see JUG_LOAD)
        tasks = list(T.alltasks)
    got = {}
    for t in unique_tasks(tasks):
        got[t.key] = [t.name, repr(canon(value(t))) if t.can_load() else "<missing>"]
    out.append(got)
print(json.dumps(out))
"""

JUG_LOAD = """\
import json, sys
import jug.task
from jug import jug as J
from fz_log import canon
try:
    J.init(sys.argv[1], sys.argv[2], on_error="propagate")
except Exception as e:
    print("init stopped:", type(e).__name__, file=sys.stderr)
out = {}
for t in jug.task.alltasks:
    out[t.hash().decode()] = [t.name, repr(canon(t.value())) if t.can_load() else "<missing>"]
print(json.dumps(out))
"""


def names() -> list[str]:
    return sorted(p.name for p in JUGFILES.glob("*.py") if p.name not in ("__init__.py",
                                                                         "exceptions.py"))


def renamed(text: str) -> str:
    """jug -> ajug in imports and uses; jug's own test modules (exceptions) stay jug's."""
    text = re.sub(r"\bjug\b(?!\.tests)", "ajug", text)
    return text


def check_jugfile(name: str, root: Path, runs: int) -> list[str]:
    """Problems of ``runs`` ajug runs of one of jug's jugfiles (empty: none)."""
    src = (JUGFILES / name).read_text()
    c = Checker(root, lambda d, pkg: None, mutates=False, rng=None)  # type: ignore[arg-type]
    jd, ad = root / "jug", root / "ajug"
    for d, text in ((jd, src), (ad, renamed(src))):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        (d / name).write_text(text)
        (d / "fz_log.py").write_text(FZ_LOG)
    out = c.run([sys.executable, "-c", "from jug.jug import main; main()", "execute", name,
                 "--jugdir", "jugdata", "--will-cite", "--keep-going",
                 # tasks blocked by a failure never become ready: don't wait for them
                 "--nr-wait-cycles", "1", "--wait-cycle-time", "0"], jd)
    jug_rc = out.returncode
    out = c.run([sys.executable, "-c", JUG_LOAD, name, "jugdata"], jd)
    c.ok("loading jug's values", out)
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    problems = []
    stores = []
    for i in range(runs):
        store = f"run{i}.ajugdata"
        out = c.run([sys.executable, "-m", "ajug", "run", name, "-j", "2", "--no-progress",
                     "--store", store], ad)
        if (out.returncode == 0) != (jug_rc == 0):
            problems.append(f"{name} run {i}: ajug exit {out.returncode}, jug exit {jug_rc}: "
                            f"{out.stderr[-1500:]}")
        stores.append(store)
    out = c.run([sys.executable, "-c", LOAD, name, *stores], ad)
    try:
        c.ok("loading ajug's values", out)
    except Failed as e:
        return [*problems, f"{name}: {e}"]
    for i, got in enumerate(json.loads(out.stdout.strip().splitlines()[-1])):
        if set(got) != set(ref):
            problems.append(f"{name} run {i}: identities differ: ajug only "
                            f"{[got[k][0] for k in set(got) - set(ref)]}, jug only "
                            f"{[ref[k][0] for k in set(ref) - set(got)]}")
        elif name not in RANDOM:
            bad = {got[k][0]: (got[k][1], ref[k][1]) for k in got if got[k][1] != ref[k][1]}
            if bad:
                problems.append(f"{name} run {i}: values differ (ajug, jug): {bad}")
    return problems


def main(argv: list[str]) -> int:
    import tempfile

    runs = int(argv[0]) if argv else 50
    which = argv[1:] or names()
    root = Path(tempfile.mkdtemp(prefix="ajug-jugs-"))
    failed = 0
    for name in which:
        problems = check_jugfile(name, root / name.removesuffix(".py"), runs)
        failed += bool(problems)
        print(f"{name}: {'ok' if not problems else 'FAILED'} ({runs} runs)", flush=True)
        for p in problems[:5]:
            print("   ", p.replace("\n", "\n    "), flush=True)
    print(f"{len(which)} jugfiles x {runs} runs, {failed} jugfiles failed; kept in {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
