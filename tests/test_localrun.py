"""``ajug run``'s local run as a library call (``ajug.localrun.run_local``), without click: it
returns the exit status, the final counts and the failures that the command prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from ajug.coordinator import Settings
from ajug.localrun import LocalRun, run_local
from ajug.runreport import RunContext

JUGFILE = """\
from ajug import TaskGenerator

@TaskGenerator
def double(x):
    if x == 3:
        raise ValueError("three")
    return 2 * x

xs = [double(i) for i in range(5)]
"""


@pytest.mark.timeout(60)
def test_run_local_returns_the_status_counts_and_failures(tmp_path: Path) -> None:
    jugfile = tmp_path / "doubles.py"
    jugfile.write_text(JUGFILE)
    store = str(tmp_path / "doubles.ajugdata")
    settings = Settings(jugfile=str(jugfile), store_url=store, port=0, token=b"t" * 32)
    summary = run_local(LocalRun(settings, RunContext(str(jugfile), None, store), jobs=1,
                                 progress=False))  # spawned workers: no fork_main
    assert summary.code == 1 and summary.reason is None
    assert summary.counts["done"] == 4 and summary.counts["failed"] == 1
    [failure] = summary.failures
    assert failure["type"] == "ValueError" and failure["msg"] == "three"

    again = run_local(LocalRun(settings, RunContext(str(jugfile), None, store), jobs=1,
                               progress=False))  # the four results are reused, 3 runs again
    assert again.code == 1 and again.counts["done"] == 4 and len(again.failures) == 1
