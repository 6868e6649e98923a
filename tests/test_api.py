"""The Python API (ajug/api.py) used the way docs/python-api.md shows: its ``python`` blocks run
as scripts in a copy of examples/, and every ``print(...)  # OUTPUT`` line must print OUTPUT.
Scripts, not calls in this process, where a user's script starts from a fresh interpreter (runs);
a client of a coordinator asks it from this process (tests/inproc.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from inproc import TOKEN
from procs import ROOT, Procs, env

DOC = ROOT / "docs" / "python-api.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def doc_blocks() -> list[str]:
    return FENCE.findall(DOC.read_text())


def expected_lines(block: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+# (.*)$", block, re.M)]


def run_script(code: str, cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    script = cwd / "script.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=cwd, env=env(**extra), timeout=timeout, start_new_session=True)


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    d = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", d, ignore=shutil.ignore_patterns("*.ajugdata"))
    return d


@pytest.mark.timeout(180)
def test_the_docs_run_examples_print_what_they_say(examples: Path) -> None:
    blocks = doc_blocks()
    runs = [b for b in blocks if "ajug.run(" in b]
    assert len(runs) == 2, "docs/python-api.md: the two ajug.run examples"
    first, again = runs
    out = run_script(first, examples)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected_lines(first)
    # the second block goes on from the first (the same store): nothing to compute
    out = run_script(first + again, examples)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected_lines(first) + expected_lines(again)
    assert "nothing to do" in out.stderr


@pytest.mark.timeout(180)
def test_the_docs_connect_example_against_a_served_run(examples: Path, procs: Procs) -> None:
    (block,) = [b for b in doc_blocks() if "ajug.connect(" in b]
    token = "api-test-token-0123456789"
    (examples / "token").write_text(token + "\n")
    serve, port = procs.serve(examples / "primes.py", "--token-file", "token", cwd=examples)
    (examples / "script.py").write_text(block.replace("127.0.0.1:5555", f"127.0.0.1:{port}"))
    # the client waits from before the workers start until the coordinator has finished
    client = procs.start_cmd([sys.executable, "script.py"], "client", cwd=examples,
                             env=env(AJUG_TOKEN=""), stdout=subprocess.PIPE)
    procs.work(port, "-j", "2", "--token-file", str(examples / "token"), cwd=examples)
    out, _ = client.communicate(timeout=120)
    assert client.returncode == 0, out
    assert out.splitlines() == expected_lines(block)
    assert serve.wait(30) == 0


@pytest.mark.timeout(180)
def test_client_status_failed_invalidate_and_read_only(
        tmp_path: Path, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ajug.connect``'s client against a coordinator and a worker in this process
    (tests/inproc.py): asking a coordinator needs no fresh interpreter."""
    import ajug
    from ajug.errors import UsageError
    from ajug.stores import open_store

    jugfile = tmp_path / "jf.py"
    jugfile.write_text(textwrap.dedent("""\
        import os
        from ajug import TaskGenerator

        LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.log")

        @TaskGenerator
        def double(x):
            with open(LOG, "a") as f:
                f.write("double\\n")
            return 2 * x

        @TaskGenerator
        def boom(x):
            raise ValueError(f"no {x}")

        d = double(21)
        b = boom(1)
        """))
    (tmp_path / "token").write_text(TOKEN.decode())
    monkeypatch.delenv("AJUG_TOKEN", raising=False)
    monkeypatch.setenv("AJUG_READ_TOKEN", "read-token-0123456789")
    coord = engine.make_coordinator(jugfile, read_token=b"read-token-0123456789", stay=True)
    engine.run_worker(coord.port)
    c = ajug.connect(f"127.0.0.1:{coord.port}", token_file=str(tmp_path / "token"))
    st = c.wait(timeout=60, interval=0.1)
    failed = c.failed()
    assert st["state"] == "finished"
    assert st["totals"]["done"] == 1 and st["totals"]["failed"] == 1
    assert [(f["func"], f["type"], "ValueError: no 1" in f["tb"]) for f in failed] == [
        ("jf.boom", "ValueError", True)]
    (d_key,) = open_store(str(tmp_path / "jf.ajugdata")).list()  # d's: boom stored nothing
    c.invalidate([d_key])
    after = c.wait(timeout=60, interval=0.1)
    assert after["totals"]["done"] == 1  # d ran again
    assert (tmp_path / "runs.log").read_text().split() == ["double", "double"]
    ro = ajug.connect(f"127.0.0.1:{coord.port}", read_only=True)
    assert ro.status()["totals"]["failed"] == 1
    with pytest.raises(UsageError):
        ro.invalidate([d_key.encode()])  # as jug's hash() gives it: bytes
    assert (tmp_path / "runs.log").read_text().split() == ["double", "double"]


def test_bad_arguments_raise_a_usage_error(tmp_path: Path) -> None:
    code = textwrap.dedent("""\
        import ajug
        from ajug.errors import AjugError
        for kw in ({"jugfile": "missing.py"}, {"jugfile": "jf.py", "jobs": 0},
                   {"jugfile": "jf.py", "task_timeout": -1},
                   {"jugfile": "jf.py", "resources": "gpus"}):
            try:
                ajug.run(**kw)
            except AjugError as e:
                print(type(e).__name__, str(e).splitlines()[0][:60])
        try:
            ajug.connect("nowhere")
        except AjugError as e:
            print(type(e).__name__)
        """)
    (tmp_path / "jf.py").write_text("from ajug import TaskGenerator\n")
    out = run_script(code, tmp_path, AJUG_TOKEN="")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["JugfileError"] + ["UsageError"] * 4, lines
    assert "missing.py" in lines[0] and "jobs=0" in lines[1] and "--resources" in lines[3]


@pytest.mark.timeout(180)
def test_run_inside_a_running_event_loop_as_in_jupyter(examples: Path) -> None:
    code = textwrap.dedent("""\
        import asyncio, ajug

        async def cell():
            # a notebook cell: an event loop runs in this thread
            return ajug.run("primes.py", jobs=2, progress=False)

        r = asyncio.run(cell())
        print(r.ok, r.value("totals")["count"])
        """)
    out = run_script(code, examples)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True 2262"]


@pytest.mark.timeout(240)
def test_run_in_a_jupyter_notebook_with_live_bars(examples: Path) -> None:
    """A real kernel (nbclient + ipykernel): the cell's outputs hold the live progress widget
    and the result. Without those packages (the ``notebook`` extra) it skips, and fails with
    AJUG_REQUIRE_JUPYTER=1 (CI)."""
    try:
        import ipykernel  # noqa: F401
        import ipywidgets  # noqa: F401
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:
        reason = f"Jupyter is not installed (pip install -e '.[notebook]'): {e}"
        if os.environ.get("AJUG_REQUIRE_JUPYTER") == "1":
            pytest.fail(f"{reason} (AJUG_REQUIRE_JUPYTER=1)")
        pytest.skip(reason)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        'import ajug\nr = ajug.run("primes.py", jobs=2)\nprint(r.ok, r.value("totals")["count"])')]
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(examples)}}).execute()
    outputs = nb.cells[0].outputs
    stdout = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert stdout.splitlines() == ["True 2262"], outputs
    widgets = [o for o in outputs if o["output_type"] == "display_data"
               and "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, f"no live progress widget in the cell's outputs: {outputs}"
    assert (examples / "primes.ajugdata").is_dir()


@pytest.mark.timeout(120)
def test_interrupting_a_run_in_a_running_event_loop_stops_it(tmp_path: Path) -> None:
    """As the notebook's stop button: SIGINT to the caller stops the run, which returns the
    state it reached (the run goes on in a thread of its own there)."""
    import signal
    import time

    (tmp_path / "slow.py").write_text(textwrap.dedent("""\
        import os, time
        from ajug import TaskGenerator

        @TaskGenerator
        def nap(i):
            open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"started{i}"), "w")
            time.sleep(0.5)
            return i

        naps = [nap(i) for i in range(40)]
        """))
    code = textwrap.dedent("""\
        import asyncio, ajug

        async def cell():
            return ajug.run("slow.py", jobs=2, progress=False)

        r = asyncio.run(cell())
        print(r.ok, r.counts["done"] < 40, r.status["state"], r.exit_status)
        """)
    (tmp_path / "script.py").write_text(code)
    p = subprocess.Popen([sys.executable, "script.py"], cwd=tmp_path, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob("started*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(tmp_path.glob("started*")), "no task started"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, err
    # stopped before the end, as Ctrl-C stops ajug run: exit status 130, said in one line
    assert out.split() == ["False", "True", "running", "130"], (out, err)
    assert "ajug: interrupted" in err
