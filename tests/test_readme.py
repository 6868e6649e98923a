"""The README's examples, run so that they cannot rot.

- Fenced blocks tagged ``console``: each line ``$ COMMAND`` runs with bash in a scratch copy of
  the repository's ``examples/`` (so paths read as from the repository root). A trailing
  ``# exit N`` comment is the expected exit status (default 0). The lines after a command, up
  to the next one, are output it must print (stdout or stderr, any order); ``...`` inside a
  line matches anything, a line of just ``...`` stands for lines left out.
- Fenced blocks tagged ``bash`` (cluster recipes, which need a cluster to run), in the README
  and in docs/cluster.md: bash must parse them, and every ``--option`` they pass to an ``ajug``
  command must exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from procs import env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def blocks(tag: str, *docs: Path) -> list[str]:
    text = "".join(d.read_text() for d in (README, *docs))
    return [body for t, body in FENCE.findall(text) if t == tag]


def console_steps() -> list[tuple[str, int, list[str]]]:
    """(command, expected exit status, expected output lines) for every console block."""
    steps: list[tuple[str, int, list[str]]] = []
    for body in blocks("console"):
        for line in body.splitlines():
            if line.startswith("$ "):
                cmd = line[2:]
                m = re.search(r"#\s*exit\s+(\d+)\s*$", cmd)
                steps.append((cmd, int(m.group(1)) if m else 0, []))
            elif line.strip() and steps:
                steps[-1][2].append(line.rstrip())
    return steps


def matches(expected: str, actual: list[str]) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, a.rstrip()) for a in actual)


def test_readme_has_runnable_examples() -> None:
    steps = console_steps()
    assert len(steps) >= 8
    commands = {re.match(r"(?:\S+=\S+ )*(?:echo .*\| )?ajug (\S+)", c).group(1)  # type: ignore[union-attr]
                for c, _, _ in steps}
    for cmd in ("run", "check", "sleep-until", "shell", "graph", "invalidate", "cleanup", "config"):
        assert cmd in commands, f"no README example runs `ajug {cmd}`"


@pytest.mark.timeout(90)
def test_readme_console_examples(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("*.ajugdata", "__pycache__", "ajug.toml"))
    e = env()
    e.pop("AJUG_TOKEN", None)
    for var in [k for k in e if k.startswith("AJUG_")]:
        del e[var]  # the examples show what a fresh shell prints
    for cmd, code, expected in console_steps():
        out = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=e, capture_output=True,
                             text=True, timeout=60)
        got = (out.stdout + "\n" + out.stderr).splitlines()
        assert out.returncode == code, f"$ {cmd}\nexit {out.returncode}\n{out.stdout}\n{out.stderr}"
        for line in expected:
            if line.strip() == "...":
                continue
            assert matches(line, got), f"$ {cmd}\nexpected a line {line!r} in:\n" + "\n".join(got)


def test_readme_bash_recipes_parse_and_use_real_options() -> None:
    from ajug.cli import cli

    recipes = blocks("bash", CLUSTER_DOC)
    assert any("#SBATCH --array" in b for b in recipes), "the SLURM array recipe is missing"
    assert any("ssh " in b for b in recipes), "the plain-ssh recipe is missing"
    for body in recipes:
        check = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, f"{check.stderr}\n{body}"
        text = body.replace("\\\n", " ")
        for m in re.finditer(r"\bajug ([a-z-]+)([^;&|>\"\n]*)", text):
            name, rest = m.group(1), m.group(2)
            cmd = cli.commands.get(name)
            assert cmd is not None, f"`ajug {name}` is not a command"
            opts = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
            for opt in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", rest):
                assert opt in opts, f"`ajug {name}` has no option {opt}"
