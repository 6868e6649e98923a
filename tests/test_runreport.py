"""What `ajug run` says around the work: nothing to do (a second run of a finished project),
results that came from code that has changed since, where the results are and how to read
them. The commands it names use the jugfile as the user typed it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from procs import ajug_cmd, copy_jugfile, env

pytestmark = pytest.mark.timeout(90)


def run(*args: str, cwd: Path, **e: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ajug_cmd("run", *args, "-j", "2", "--no-progress"), capture_output=True,
                          text=True, env=env(**e), cwd=cwd, timeout=60)


def test_a_second_run_says_there_is_nothing_to_do(tmp_path: Path) -> None:
    copy_jugfile(tmp_path, "views.py")
    first = run("views.py", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "nothing to do" not in first.stderr
    assert first.stderr.strip().splitlines()[-1] == (
        "ajug: results are in views.ajugdata; read them with `ajug shell views.py` (value(name))"
        " or, in Python, ajug.init('views.py') and ajug.value(task)"), first.stderr
    second = run("views.py", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stderr.strip().splitlines() == [
        "ajug: nothing to do: 61 results already in views.ajugdata",
        "ajug: results are in views.ajugdata; read them with `ajug shell views.py` (value(name))"
        " or, in Python, ajug.init('views.py') and ajug.value(task)"], second.stderr


def test_run_warns_of_results_from_code_that_changed(tmp_path: Path) -> None:
    sub = tmp_path / "proj"
    sub.mkdir()
    jug = copy_jugfile(sub, "pipeline.py")
    assert run("proj/pipeline.py", cwd=tmp_path).returncode == 0
    jug.write_text(jug.read_text().replace("    return 2 * x\n", "    return x + x  # new code\n"))
    out = run("proj/pipeline.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    warned = [ln for ln in out.stderr.splitlines() if "changed" in ln]
    assert warned == [
        "ajug: warning: stored results of pipeline.double (6 of 6) came from code that has "
        "changed since; they are reused, as jug does. `ajug invalidate proj/pipeline.py --stale` "
        "computes them again"], out.stderr
    # the command it names works as printed
    inv = subprocess.run(ajug_cmd("invalidate", "proj/pipeline.py", "--stale"),
                         capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60)
    assert inv.returncode == 0 and "removed 8 result(s)" in inv.stdout, inv.stdout + inv.stderr
    again = run("proj/pipeline.py", cwd=tmp_path)
    assert again.returncode == 0 and "changed" not in again.stderr, again.stderr
    assert "ajug: [finished] 14/14 done" in again.stderr
