"""The examples of README.md and of every docs/*.md page, run so that they cannot rot.

- Fenced blocks tagged ``console``: each line ``$ COMMAND`` runs with bash in a scratch copy of
  the repository's ``examples/`` (so paths read as from the repository root), a fresh copy for
  each page, so that every page's examples read on their own. A trailing
  ``# exit N`` comment is the expected exit status (default 0). The lines after a command, up
  to the next one, are output it must print (stdout or stderr, any order); ``...`` inside a
  line matches anything, a line of just ``...`` stands for lines left out.
- Fenced blocks tagged ``bash`` (cluster recipes, which need a cluster to run), in every page:
  bash must parse them, and every ``--option`` they pass to an ``ajug`` command must exist.
- Every relative link of every page (CONTRIBUTING.md too) names a file that exists, and the
  README links every docs page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from procs import env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
FENCE = re.compile(r"^ *```(\w+)\n(.*?)^ *```$", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def blocks(tag: str, *docs: Path) -> list[str]:
    """The bodies of the fenced blocks tagged ``tag`` (indented ones too, as in a list item)."""
    text = "".join(d.read_text() for d in docs)
    return [textwrap.dedent(body) for t, body in FENCE.findall(text) if t == tag]


def _steps(body: str) -> list[tuple[str, int, list[str]]]:
    steps: list[tuple[str, int, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            cmd = line[2:]
            m = re.search(r"#\s*exit\s+(\d+)\s*$", cmd)
            steps.append((cmd, int(m.group(1)) if m else 0, []))
        elif line.strip() and steps:
            steps[-1][2].append(line.rstrip())
    return steps


def console_steps(page: Path) -> list[tuple[str, int, list[str]]]:
    """(command, expected exit status, expected output lines) for every console block."""
    return [step for body in blocks("console", page) for step in _steps(body)]


def matches(expected: str, actual: list[str]) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, a.rstrip()) for a in actual)


def test_docs_have_runnable_examples() -> None:
    readme = console_steps(README)
    assert len(readme) >= 5, "the README's first session is missing"
    steps = [s for page in PAGES for s in console_steps(page)]
    commands = {re.match(r"(?:\S+=\S+ )*(?:echo .*\| )?ajug (\S+)", c).group(1)  # type: ignore[union-attr]
                for c, _, _ in steps}
    for cmd in ("run", "check", "sleep-until", "shell", "graph", "invalidate", "cleanup", "config",
                "status"):
        assert cmd in commands, f"no example in the README or docs/ runs `ajug {cmd}`"


def test_the_console_parser_reads_commands_statuses_and_output() -> None:
    page = "```console\n$ ajug check x.py          # exit 1\najug: 1/2 tasks done\n...\n$ ajug run x.py\n```\n"
    steps = [(c, code, out) for t, body in FENCE.findall(page) if t == "console"
             for c, code, out in _steps(body)]
    assert steps == [("ajug check x.py          # exit 1", 1, ["ajug: 1/2 tasks done", "..."]),
                     ("ajug run x.py", 0, [])]
    assert matches("ajug: ... done", ["x", "ajug: 40/42 done  "])
    assert not matches("ajug: ... done", ["ajug: 40/42 failed"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", [p for p in PAGES if console_steps(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_console_examples(page: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("*.ajugdata", "__pycache__", "ajug.toml"))
    e = env()
    e.pop("AJUG_TOKEN", None)
    for var in [k for k in e if k.startswith("AJUG_")]:
        del e[var]  # the examples show what a fresh shell prints
    for cmd, code, expected in console_steps(page):
        out = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=e, capture_output=True,
                             text=True, timeout=60)
        got = (out.stdout + "\n" + out.stderr).splitlines()
        assert out.returncode == code, f"$ {cmd}\nexit {out.returncode}\n{out.stdout}\n{out.stderr}"
        for line in expected:
            if line.strip() == "...":
                continue
            assert matches(line, got), f"$ {cmd}\nexpected a line {line!r} in:\n" + "\n".join(got)


def test_bash_recipes_parse_and_use_real_options() -> None:
    from ajug.cli import cli

    recipes = blocks("bash", *PAGES)
    assert any("#SBATCH --array" in b for b in recipes), "the SLURM array recipe is missing"
    assert any("ssh " in b for b in recipes), "the plain-ssh recipe is missing"
    for body in recipes:
        check = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, f"{check.stderr}\n{body}"
        text = body.replace("\\\n", " ")
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for m in re.finditer(r"\bajug(?: -[vq]+)* ([a-z-]+)([^;&|>\"\n]*)", text):
            name, rest = m.group(1), m.group(2)
            cmd = cli.commands.get(name)
            assert cmd is not None, f"`ajug {name}` is not a command"
            opts = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
            for opt in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", rest):
                assert opt in opts, f"`ajug {name}` has no option {opt}"


def test_relative_links_resolve_and_the_readme_links_every_page() -> None:
    for page in [*PAGES, ROOT / "CONTRIBUTING.md"]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
    linked = {(ROOT / t.split("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    for page in [*DOCS, ROOT / "CONTRIBUTING.md"]:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"
