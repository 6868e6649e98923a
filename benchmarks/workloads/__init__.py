"""The benchmark workloads: one ``Workload`` entry each, in ``REGISTRY``.

A workload is a jugfile in this directory (run by both engines: it imports jug's
``TaskGenerator`` when ``BENCH_ENGINE=jug``, ajug's otherwise, and reads its size from
``BENCH_N``) plus one entry below that tells the runner (benchmarks/run.py) its sizes, its size
option, how to check its results and how to read its measurements. Adding a workload is writing
the jugfile and adding the entry; benchmarks/README.md says how. Nothing here imports the runner:
a workload with a runner of its own names it as ``"module:function"``, resolved when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: the fan-in of the map-reduce workload's reduce tree (also its jugfile's default)
FANIN = 10

#: a command-line option of a workload's own: ``(flags, argparse keyword arguments)``
Option = tuple[tuple[str, ...], dict[str, Any]]

#: ``verify(ns, value, picks)``: the names of wrong results among sampled indices ``picks``
Verify = Callable[[dict[str, Any], Callable[[Any], Any], list[int]], list[str]]


def fmt(v: Any, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


@dataclass(frozen=True)
class Workload:
    """What the runner needs to know about one workload.

    ``systems``: ``"all"`` runs on every system chosen (ajug, the floor and jug, so the ratios
    to jug and to the floor are computed); ``"ajug+jug"`` on ajug's and jug's (no floor);
    ``"ajug"`` only on ajug's systems; ``"ajug-memory"`` once, on a ``memory:`` store
    (simulated workers). ``runner``: ``"module:function"`` with the signature of
    ``run.run_ajug`` for a workload that is not one ``ajug run`` per measurement (``{engine}``
    in the function's name: one function per engine). ``summarize(row, median, good_runs)`` and ``notes(row)`` replace the default
    tasks/s and table note for such a workload. ``options``: its own options besides its size
    (read from the parsed options by ``env`` or by its runner). ``result_mib``: the size of
    each result (from the parsed options); the runner then also runs each system once with
    ``BENCH_MIB=0`` and reports the workers' peak RSS above that run's, per result size."""

    name: str
    what: str
    size: int
    quick_size: int
    size_flag: str
    size_help: str
    jugfile: str = ""
    systems: str = "all"
    default: bool = True
    repeat_option: str = "repeat"
    env: Callable[[argparse.Namespace], dict[str, str]] = field(default=lambda o: {})
    verify: Verify | None = None
    tasks: Callable[[int], int] = field(default=lambda n: n)
    runner: str = ""
    summarize: Callable[[dict[str, Any], dict[str, float], list[dict[str, Any]]], None] | None = None
    notes: Callable[[dict[str, Any]], str] | None = None
    options: tuple[Option, ...] = ()
    result_mib: Callable[[argparse.Namespace], float] | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute of the size option (``--chain-n`` -> ``chain_n``)."""
        return self.size_flag.lstrip("-").replace("-", "_")

    @property
    def source(self) -> str:
        """The jugfile's stem in this directory."""
        return self.jugfile or self.name


# -- checks --------------------------------------------------------------------------------------
def _verify_inc(name: str) -> Verify:
    def verify(ns: dict[str, Any], value: Callable[[Any], Any], picks: list[int]) -> list[str]:
        return [f"{name}[{i}]" for i in picks if value(ns[name][i]) != i + 1]
    return verify


def _verify_mapreduce(ns: dict[str, Any], value: Callable[[Any], Any], picks: list[int]) -> list[str]:
    bad = [f"maps[{i}]" for i in picks if value(ns["maps"][i]) != i * i]
    if value(ns["total"]) != sum(i * i for i in range(len(ns["maps"]))):
        bad.append("total")
    return bad


def _verify_bulk(ns: dict[str, Any], value: Callable[[Any], Any], picks: list[int]) -> list[str]:
    bad = []
    for i in picks[:: max(1, len(picks) // 8)]:
        a = value(ns["arrays"][i])
        if a.shape != (ns["ITEMS"],) or a[0] != i or a[-1] != i:
            bad.append(f"arrays[{i}]")
    return bad


def _mapreduce_tasks(n: int) -> int:
    total, level = n, n
    while level > 1:
        level = -(-level // FANIN)
        total += level
    return total


# -- the workloads with a runner of their own: their summaries and table notes -------------------
def _scale_summary(row: dict[str, Any], med: dict[str, float], good: list[dict[str, Any]]) -> None:
    row["tasks"] = row["n"]
    row["tasks_per_s"] = med.get("serving_rate")


def _scale_notes(r: dict[str, Any]) -> str:
    m = r.get("median", {})
    return (f"serving after {fmt(m.get('load_s'), '.1f')} s; RSS loaded "
            f"{fmt(m.get('rss_loaded_mib'), '.0f')} MiB, serving {fmt(m.get('rss_serving_mib'), '.0f')}"
            f" MiB; {fmt(m.get('peak_b_per_task'), '.0f')} B/task peak, "
            f"{fmt(m.get('steady_b_per_task'), '.0f')} steady (above an empty coordinator: "
            f"{fmt(m.get('net_peak_b_per_task'), '.0f')}, {fmt(m.get('net_steady_b_per_task'), '.0f')}"
            f"); status {fmt(m.get('status_ms'), '.1f')} ms (max {fmt(m.get('status_ms_max'), '.1f')});"
            f" CPU while serving: coordinator {fmt(m.get('coord_cpu_pct'), '.0f')}%, workers "
            f"{fmt(m.get('workers_cpu_pct'), '.0f')}%")


def _coordinator_summary(row: dict[str, Any], med: dict[str, float], good: list[dict[str, Any]]) -> None:
    row["tasks"] = int(med.get("done_in_window", 0))
    row["tasks_per_s"] = med.get("tasks_per_s")
    prof = next((r["profile"] for r in good if "profile" in r), None)
    if prof:
        row["profile"] = prof


def _coordinator_notes(r: dict[str, Any]) -> str:
    m = r.get("median", {})
    top = ", ".join(f"{t['function']} {100 * t['share']:.0f}%"
                    for t in r.get("profile", {}).get("top", [])[:4])
    return (f"{fmt(m.get('tasks_per_core_s'), ',.0f')} tasks per coordinator core-second, "
            f"{fmt(m.get('us_per_task'), '.1f')} µs/task, coordinator CPU "
            f"{fmt(m.get('coord_cpu_pct'), '.0f')}%, {fmt(m.get('connections'), '.0f')} conns"
            + (f"; profile: {top}" if top else ""))


def _connections_summary(row: dict[str, Any], med: dict[str, float], good: list[dict[str, Any]]) -> None:
    row["tasks"] = int(med.get("leases", 0))
    row["tasks_per_s"] = med["leases"] / med["lease_s"] if med.get("lease_s") else None


def _connections_notes(r: dict[str, Any]) -> str:
    m = r.get("median", {})
    return (f"{r['n']} conns, {fmt(m.get('errors'), '.0f')} errors, {fmt(m.get('workers_seen'), '.0f')}"
            f" seen; handshakes {fmt(m.get('connect_s'))} s; {fmt(m.get('leases'), '.0f')} leases "
            f"in {fmt(m.get('lease_s'))} s")


# -- the registry ------------------------------------------------------------------------------------
_ENTRIES = [
    Workload("independent", "`inc(i)`, no dependencies", 20_000, 2_000, "--n",
             "independent: tasks (default 20,000; try 100000, 1000000)",
             verify=_verify_inc("results")),
    Workload("chain", "`inc(previous)`: each task needs the one before", 2_000, 500, "--chain-n",
             "chain: length (default 2,000)", verify=_verify_inc("steps")),
    Workload("mapreduce", "`square(i)` maps, then a tree of `add(10 results)` reduces", 10_000,
             1_000, "--maps", "mapreduce: maps (default 10,000)",
             env=lambda o: {"BENCH_FANIN": str(FANIN)}, verify=_verify_mapreduce,
             tasks=_mapreduce_tasks),
    Workload("bulk", "tasks returning a numpy array of `--bulk-mib` MiB", 1_000, 100, "--bulk-n",
             "bulk: tasks (default 1,000)", env=lambda o: {"BENCH_MIB": str(o.bulk_mib)},
             verify=_verify_bulk, result_mib=lambda o: o.bulk_mib,
             options=((("--bulk-mib",), {"type": float, "default": 1.0,
                                         "help": "bulk: MiB per result (default 1)"}),)),
    Workload("bulk64", "`bulk` with big results: `--bulk64-mib` MiB each", 24, 4, "--bulk64-n",
             "bulk64: tasks (default 24)", jugfile="bulk",
             env=lambda o: {"BENCH_MIB": str(o.bulk64_mib)}, verify=_verify_bulk,
             result_mib=lambda o: o.bulk64_mib,
             options=((("--bulk64-mib",), {"type": float, "default": 64.0,
                                           "help": "bulk64: MiB per result (default 64)"}),)),
    Workload("scale", "`independent` with a million tasks, served by `ajug serve` + 2 × "
             "`ajug work`", 1_000_000, 100_000, "--scale-n",
             "scale: tasks (default 1,000,000; --quick: 100,000)", jugfile="independent",
             systems="ajug", repeat_option="scale_repeat", verify=_verify_inc("results"),
             runner="benchmarks.run:run_scale", summarize=_scale_summary, notes=_scale_notes),
    Workload("connections", "256 simulated light workers at once against `ajug serve`", 256, 256,
             "--conns", "connections: concurrent connections (default 256)",
             jugfile="independent", systems="ajug", runner="benchmarks.run:run_connections",
             summarize=_connections_summary, notes=_connections_notes,
             options=((("--rounds",), {"type": int, "default": 4,
                                       "help": "connections: leases per connection"}),)),
    Workload("status", "`ajug status JUGFILE` / `jug status` on `independent` with a million "
             "tasks and a fresh store (no coordinator)", 1_000_000, 100_000, "--status-n",
             "status: tasks (default 1,000,000; --quick: 100,000)", jugfile="independent",
             systems="ajug+jug", repeat_option="scale_repeat",
             runner="benchmarks.status_load:run_{engine}"),
    Workload("coordinator", "the coordinator at its ceiling: simulated workers against `ajug "
             "serve` on a `memory:` store", 1_000_000, 500_000, "--coord-n",
             "coordinator: tasks in the graph (default 1,000,000)", jugfile="independent",
             systems="ajug-memory", default=False,
             runner="benchmarks.coordinator_load:run_coordinator",
             summarize=_coordinator_summary, notes=_coordinator_notes,
             options=((("--coord-conns",), {"type": int, "default": 8, "help":
                                            "coordinator: simulated worker connections (default 8)"}),
                      (("--no-coord-profile",), {"dest": "coord_profile", "action": "store_false",
                                                 "help": "coordinator: skip the profiled run"}))),
]

REGISTRY: dict[str, Workload] = {w.name: w for w in _ENTRIES}
