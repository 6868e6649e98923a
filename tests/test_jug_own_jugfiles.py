"""jug's own test jugfiles, imports renamed to ajug: ``ajug run -j 2`` gives jug's values and
identities, run after run on a fresh store (tests/jug_own_jugfiles.py). The slow step runs each
``AJUG_JUG_OWN_RUNS`` times (10); ``python -m tests.jug_own_jugfiles 50`` runs 50 in a row each
(the issue's acceptance; 1,350 runs passed when it was built)."""

from __future__ import annotations

import os
from pathlib import Path

import jug_own_jugfiles as J
import pytest


def test_the_jugfiles_are_found_and_renamed() -> None:
    names = J.names()
    assert len(names) >= 20 and "slice_task.py" in names
    text = J.renamed("import jug\nfrom jug.io import NoLoad\n@jug.TaskGenerator\n"
                     "from jug.tests.jugfiles.exceptions import FailingTask\n")
    assert text == ("import ajug\nfrom ajug.io import NoLoad\n@ajug.TaskGenerator\n"
                    "from jug.tests.jugfiles.exceptions import FailingTask\n")


@pytest.mark.timeout(60)
def test_slice_task_a_few_runs(tmp_path: Path) -> None:
    """The one of them whose Tasklet index is a Task (issue 10, bug 4)."""
    assert J.check_jugfile("slice_task.py", tmp_path, 3) == []


RUNS = int(os.environ.get("AJUG_JUG_OWN_RUNS", "10"))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", J.names())
def test_many_runs_each(name: str, tmp_path: Path) -> None:
    assert J.check_jugfile(name, tmp_path, RUNS) == []
