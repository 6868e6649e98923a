"""The benchmark runner still runs: a tiny run end to end, and its JSON has sane rows."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402


@pytest.mark.timeout(90)
def test_quick_run_writes_sane_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--n", "300", "--chain-n", "10",
           "--repeat", "1", "--workloads", "independent,chain", "--systems", "ajug-file,floor",
           "--json", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=75)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {(r["workload"], r["system"]): r for r in data["rows"]}
    assert set(rows) == {("independent", "ajug-file"), ("independent", "floor-file"),
                         ("chain", "ajug-file"), ("chain", "floor-file")}
    for (wl, system), r in rows.items():
        assert "error" not in r, (wl, system, r["error"])
        assert r["tasks"] == (300 if wl == "independent" else 10)
        assert 0 < r["wall_s"] < 60 and r["tasks_per_s"] > 0
        m = r["median"]
        assert 5 < m["main_rss_mib"] < 2000  # the coordinator / floor process, not its children
        assert all(run.get("check") is None for run in r["runs"])  # results verified
    ajug = rows[("independent", "ajug-file")]
    assert ajug["median"]["done"] == 300 and ajug["median"]["worker_rss_mib"] > 5
    assert ajug["vs_floor"] > 0
    assert rows[("independent", "floor-file")]["median"]["tasks"] == 300
    assert data["meta"]["sizes"]["independent"] == 300
    assert {t["target"] for t in data["targets"]} >= {"independent, ajug-file: tasks/s"}
    assert "independent" in p.stdout and "floor-file" in p.stdout  # the table was printed


def test_sizes_and_system_names() -> None:
    assert bench.tasks_of("mapreduce", 10_000) == 11_111
    assert bench.tasks_of("chain", 2_000) == 2_000
    p = argparse.ArgumentParser()
    assert bench.expand_systems("ajug-file,floor,jug", p) == ["ajug-file", "floor-file", "jug-file"]
    assert bench.expand_systems("floor", p) == ["floor-file", "floor-redis"]
    assert bench.expand_systems(bench.DEFAULT_SYSTEMS, p) == list(bench.SYSTEMS)
    o = bench.parse_args(["--quick", "--workloads", "scale"])
    assert o.scale_n == 100_000 and o.repeat == 1 and o.workloads == ["scale"]


@pytest.mark.timeout(120)
def test_wire_benchmark_runs_all_three_parts(tmp_path: Path) -> None:
    """benchmarks/wire.py (the MAC's cost): codec, loopback round trips, a real ajug serve."""
    out = tmp_path / "wire.json"
    cmd = [sys.executable, "-m", "benchmarks.wire", "--tasks", "3000", "--seconds", "0.5",
           "--repeat", "1", "--json", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["mac"] is True and Path(data["ajug"]) == ROOT / "ajug"
    assert {r["frame"] for r in data["codec"]} == {"lease+report", "leases", "renew", "renewed"}
    assert all(r["mac_us"] > 0 and r["plain_us"] > 0 for r in data["codec"])
    assert data["loop"]["mac_us"] > 0 and data["loop"]["plain_us"] > 0
    (run,) = data["wire"]
    assert run["leases"] == run["reports"] > 0  # every lease is reported back
    assert run["leases_per_s"] > 0 and run["coordinator_cpu_us"] > 0


def test_every_workload_is_one_registry_entry_and_one_jugfile() -> None:
    from benchmarks.workloads import REGISTRY

    flags = [w.size_flag for w in REGISTRY.values()]
    assert len(set(flags)) == len(flags)
    for w in REGISTRY.values():
        assert (bench.WORKLOAD_DIR / f"{w.source}.py").is_file(), w.name
        assert w.systems in ("all", "ajug+jug", "ajug", "ajug-memory")
        assert w.size >= w.quick_size > 0
        assert w.systems != "all" or w.verify is not None, f"{w.name}: results never checked"
    o = bench.parse_args(["--workloads", ",".join(REGISTRY)])
    assert o.sizes == {name: w.size for name, w in REGISTRY.items()}
    assert bench.runner_of(REGISTRY["chain"], "jug") is bench.run_jug
    assert bench.runner_of(REGISTRY["scale"], "ajug") is bench.run_scale
    from benchmarks import status_load
    assert bench.runner_of(REGISTRY["status"], "jug") is status_load.run_jug


def test_workload_checks_find_wrong_results() -> None:
    from benchmarks.workloads import REGISTRY

    def value(x: object) -> object:
        return x

    ns = {"maps": [i * i for i in range(5)], "total": 30, "steps": [1, 2, 3, 5]}
    assert REGISTRY["mapreduce"].verify(ns, value, [0, 4]) == []  # type: ignore[misc]
    ns["maps"][4], ns["total"] = 0, 14
    assert REGISTRY["mapreduce"].verify(ns, value, [0, 4]) == ["maps[4]", "total"]  # type: ignore[misc]
    assert REGISTRY["chain"].verify(ns, value, [0, 2, 3]) == ["steps[3]"]  # type: ignore[misc]
