"""Generated jugfiles (tests/fuzz_jugfiles.py) run every way ajug runs them, against the
in-process executor and jug 2.7.

The fast run covers two fixed seeds whose jugfiles use every construct the generator has
(one of them mutates its inputs, so its values are compared with the executor only), split
between the variants to stay within CI's budget; ``-m slow`` runs 30 more (``AJUG_FUZZ_SEEDS``).
``python -m tests.fuzz_jugfiles --seeds N`` runs any number by hand.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import fuzz_jugfiles as F
import pytest
from fuzz_checks import VARIANTS, Outcome, compare, compare_jug


def _check(seed: int, root: Path, variants: list[str]) -> None:
    problems, _ = F.check_seed(seed, root, variants)
    assert not problems, (
        "\n".join(problems) + f"\nproject kept in {root}\nreproduce: "
        + F.reproducer(seed, variants)
    )


def test_the_generator_is_reproducible_and_covers_every_construct() -> None:
    a, b = F.generate(0, "ajug"), F.generate(0, "ajug")
    assert a.files == b.files
    jug = F.generate(0, "jug")
    assert jug.files["jf.py"].replace("from jug", "from ajug").replace(
        "package jug", "package ajug") == a.files["jf.py"]
    assert a.files != F.generate(1, "ajug").files
    # seeds that are multiples of 4 hold every block; multiples of 8 mutate their inputs too
    assert a.mutates and not F.generate(4, "ajug").mutates
    every = {b.removeprefix("b_") for b in F.BLOCKS}
    assert len(a.constructs) >= len(every)
    for construct in ("return_tuple", "iteratetask", "CachedFunction", "identity",
                      "barrier()", "bvalue() in a loop", "functools.partial",
                      "tasks that mutate their inputs", "a task whose only product is a file"):
        assert construct in a.constructs, construct


def test_the_comparison_sees_wrong_values_missing_tasks_and_double_runs() -> None:
    ref = Outcome({"k1": ["jf.f", "1"], "k2": ["jf.g", "2"]}, Counter({"f a": 1, "g b": 1}))
    assert compare("same", ref, Outcome(dict(ref.values), Counter(ref.runs))) == []
    wrong = Outcome({"k1": ["jf.f", "1"], "k2": ["jf.g", "3"]}, Counter(ref.runs))
    assert "!= reference" in compare("v", ref, wrong)[0]
    missing = Outcome({"k1": ["jf.f", "1"]}, Counter(ref.runs))
    assert "task sets differ" in compare("v", ref, missing)[0]
    twice = Outcome(dict(ref.values), Counter({"f a": 2, "g b": 1}))
    assert "computed again" in compare("v", ref, twice)[0]
    assert "not by the killed worker" in compare("v", ref, twice, extra_runs_allowed=1)[0]
    twice.killed, twice.runners = 7, {"f a": {7, 8}}
    assert compare("v", ref, twice, extra_runs_allowed=1) == []
    assert "executions missing" in compare("v", ref, Outcome(dict(ref.values), Counter()))[0]
    jug = Outcome({"k1": ["jf.f", "1"], "k2": ["jf.g", "9"]}, Counter())
    assert "jug 9" in compare_jug(ref, jug, mutates=False)[0]
    assert compare_jug(ref, jug, mutates=True) == []
    assert "identities differ" in compare_jug(ref, missing, mutates=True)[0]


# seed 0 mutates its inputs (jug: identities only); seed 4 does not (jug: values too)
@pytest.mark.timeout(110)
@pytest.mark.parametrize(("seed", "variants"), [
    (0, ["j2", "spawn", "serve", "restart"]),
    (4, ["j1", "j3", "kill-worker", "rerun"]),
])
def test_fixed_seeds(seed: int, variants: list[str], tmp_path: Path) -> None:
    _check(seed, tmp_path, variants)


#: seeds of the slow step (CI); hundreds: AJUG_FUZZ_SEEDS=300, or python -m tests.fuzz_jugfiles
SLOW_SEEDS = int(os.environ.get("AJUG_FUZZ_SEEDS", "30"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(100, 100 + SLOW_SEEDS))
def test_more_seeds(seed: int, tmp_path: Path) -> None:
    """Each seed: one plain variant (in turn) and one fault, with jug."""
    faults = ("kill-worker", "restart", "crash")
    plain = [v for v in VARIANTS if v not in faults]  # rerun included
    _check(seed, tmp_path, [plain[seed % len(plain)], faults[seed % len(faults)]])
