"""Jug's other commands against real runs: invalidate, cleanup, check, sleep-until, shell, graph,
config. Every command runs as its own `ajug` process; results come from real `ajug run`/`serve`."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from inproc import Engine
from procs import Procs, ajug_cmd, env, offline_status, read_log, wait_for

HERE = Path(__file__).parent
N = 6  # items in tests/jugfiles/pipeline.py
TOTAL = sum(2 * i for i in range(N))


def ajug(*args: str, cwd: Path | None = None, input: str | None = None,
         timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ajug_cmd(*args), capture_output=True, text=True, env=env(**extra_env),
                          cwd=cwd, input=input, timeout=timeout)


def ok(*args: str, **kw: Any) -> str:
    out = ajug(*args, **kw)
    assert out.returncode == 0, f"ajug {' '.join(args)}: {out.stdout}\n{out.stderr}"
    return out.stdout


def stored(jugfile: Path) -> dict[str, tuple[str, float]]:
    """key -> (function, time written) of every result in the jugfile's default store."""
    from ajug.stores import open_store

    with open_store(jugfile.with_name(jugfile.stem + ".ajugdata")) as s:
        keys = sorted(s.list())
        return {k: (m["func"], m["ts"]) for k, m in zip(keys, s.metadata(keys)) if m}


def graph_of(jugfile: Path) -> dict[str, Any]:
    return json.loads(ok("graph", str(jugfile), "--format", "json"))


def keys_of(g: dict[str, Any], func: str) -> list[str]:
    return [t["key"] for t in g["tasks"] if t["function"] == f"pipeline.{func}"]


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pipeline.py computed once by a real `ajug run`; tests work on copies of it."""
    d = tmp_path_factory.mktemp("computed")
    shutil.copy(HERE / "jugfiles" / "pipeline.py", d / "pipeline.py")
    ok("run", str(d / "pipeline.py"), "-j", "1", "--no-progress")
    return d


@pytest.fixture
def proj(computed: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "p"
    shutil.copytree(computed, dst)
    return dst / "pipeline.py"


@pytest.mark.timeout(60)
def test_invalidate_by_prefix_and_name_with_downstream_and_dry_run(proj: Path) -> None:
    before = stored(proj)
    assert len(before) == 2 * N + 2
    assert ajug("check", str(proj)).returncode == 0
    g = graph_of(proj)

    dry = ok("invalidate", str(proj), "--target", "double", "--dry-run", "--keys")
    assert re.search(rf"^\s+{N}\s+pipeline\.double$", dry, re.M)
    assert re.search(r"^\s+1\s+pipeline\.total$", dry, re.M)
    assert re.search(r"^\s+1\s+pipeline\.report$", dry, re.M)
    assert "pipeline.load" not in dry
    assert all(k in dry for k in keys_of(g, "double"))  # --keys lists each one
    assert f"would remove {N + 2} result(s)" in dry
    assert stored(proj) == before  # --dry-run removed nothing

    # by identity prefix: one `double` task, the sum and the report; nothing else
    victim = keys_of(g, "double")[2]
    out = ok("invalidate", str(proj), "--target", victim[:8])
    assert "removed 3 result(s)" in out
    left = stored(proj)
    assert set(before) - set(left) == {victim, *keys_of(g, "total"), *keys_of(g, "report")}
    assert all(left[k] == before[k] for k in left)  # the rest untouched
    chk = ajug("check", str(proj))
    assert chk.returncode == 1 and f"{2 * N - 1}/{2 * N + 2} tasks done" in chk.stdout

    # by function name (module-qualified or not): everything downstream of `load` goes
    dry = ok("invalidate", str(proj), "--target", "load", "--dry-run")
    assert f"would remove {2 * N - 1} result(s) ({2 * N + 2} task(s) affected)" in dry
    out = ok("invalidate", str(proj), "--target", "pipeline.load")
    assert f"removed {2 * N - 1} result(s)" in out
    assert stored(proj) == {}
    assert f"0/{2 * N + 2} tasks done" in ajug("check", str(proj)).stdout

    bad = ajug("invalidate", str(proj), "--target", "nosuchthing")
    assert bad.returncode == 2
    assert "no function or task matches 'nosuchthing'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.timeout(60)
def test_stale_code_listed_by_status_and_redone_by_invalidate_stale(proj: Path) -> None:
    assert offline_status(proj)["stale"] == []
    src = proj.read_text()
    proj.write_text(src.replace("    return 2 * x\n", "    return x + x  # same value, new code\n"))
    st = offline_status(proj)
    assert [(s["name"], s["stale"], s["stored"]) for s in st["stale"]] == [("pipeline.double", N, N)]
    text = ok("status", str(proj))
    assert "stale" in text and "pipeline.double" in text

    dry = ok("invalidate", str(proj), "--stale", "--dry-run")
    assert f"would remove {N + 2} result(s)" in dry
    out = ok("invalidate", str(proj), "--stale")
    assert f"removed {N + 2} result(s)" in out
    assert {f for f, _ in stored(proj).values()} == {"pipeline.load"}
    st = offline_status(proj)
    assert st["stale"] == [] and st["totals"]["done"] == N and st["totals"]["ready"] == N


@pytest.mark.timeout(60)
def test_invalidate_tells_a_live_coordinator_which_runs_them_again(
        proj: Path, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """The commands are processes; the coordinator and its worker run in this one (inproc)."""
    caplog.set_level(logging.INFO, logger="ajug")
    before = stored(proj)
    coord = engine.make_coordinator(proj, stay=True)
    port = coord.port
    engine.run_worker(port)
    addr = f"127.0.0.1:{port}"
    assert ok("check", addr).strip().endswith(f"{2 * N + 2}/{2 * N + 2} tasks done")
    g = graph_of(proj)
    out = ok("invalidate", str(proj), "--target", "total", "--coordinator", addr)
    assert "removed 2 result(s)" in out and "runs them again" in out
    wait_for(lambda: coord.status()["totals"]["done"] == 2 * N + 2, 30,
             what="re-run after invalidate")
    ok("sleep-until", addr, "--interval", "0.2", timeout=30)
    after = stored(proj)
    assert set(after) == set(before)
    for k in keys_of(g, "total") + keys_of(g, "report"):
        assert after[k][1] > before[k][1]  # computed again
    for k in keys_of(g, "double"):
        assert after[k] == before[k]
    assert "invalidated" in caplog.text


@pytest.mark.timeout(60)
def test_cleanup_dry_run_bytes_freed_and_barrier_refusal(proj: Path, tmp_path: Path) -> None:
    from ajug.stores import open_store

    proj.write_text(proj.read_text().replace("N_ITEMS = 6", "N_ITEMS = 4"))
    store_dir = proj.with_name("pipeline.ajugdata")
    keep = {t["key"] for t in graph_of(proj)["tasks"]}
    assert len(keep) == 2 * 4 + 2
    before = stored(proj)
    orphans = sorted(set(before) - keep)
    assert len(orphans) == 2 + 2 + 2  # two loads, two doubles, the old total and report
    with open_store(store_dir) as s:
        result_bytes = sum(m["size"] for m in s.metadata(orphans))
    # a temporary file whose writer (this host, a pid that cannot exist) is dead
    stray = store_dir / "tmp" / f"{socket.gethostname()}.99999999.00ff00ff00ff00ff.tmp"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"x" * 1000)
    total_bytes = result_bytes + 1000

    dry = ok("cleanup", str(proj), "--dry-run")
    assert f"would remove {len(orphans)} result(s)" in dry
    assert f"would free {total_bytes} bytes" in dry
    assert stray.exists() and set(orphans) <= set(stored(proj))

    out = ok("cleanup", str(proj))
    assert f"freed {total_bytes} bytes" in out
    assert not stray.exists()
    assert set(stored(proj)) == set(before) - set(orphans)
    assert set(stored(proj)) <= keep
    assert "freed 0 bytes" in ok("cleanup", str(proj))

    # a jugfile stopped at a barrier: the tasks after it are unknown, so cleanup refuses
    bar = tmp_path / "bar" / "mr_barrier.py"
    bar.parent.mkdir()
    shutil.copy(HERE / "jugfiles" / "mr_barrier.py", bar)
    refused = ajug("cleanup", str(bar))
    assert refused.returncode == 2 and "barrier" in refused.stderr and "--partial" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "counting only the tasks before the barrier" in ok("cleanup", str(bar), "--partial",
                                                               "--dry-run")


@pytest.mark.timeout(60)
def test_check_exit_codes_and_sleep_until_a_background_run(procs: Procs, tmp_path: Path) -> None:
    slow = tmp_path / "slow.py"
    shutil.copy(HERE / "jugfiles" / "slow.py", slow)
    e = env(AJUG_TEST_SLOW_S="0.3")
    chk = ajug("check", str(slow), AJUG_TEST_SLOW_S="0.3")
    assert chk.returncode == 1 and "0/4 tasks done" in chk.stdout
    timed_out = ajug("sleep-until", str(slow), "--interval", "0.1", "--timeout", "0.3",
                     AJUG_TEST_SLOW_S="0.3")
    assert timed_out.returncode == 1 and "timed out" in timed_out.stdout
    run = procs.start(["run", str(slow), "-j", "1", "--no-progress"], "run", env=e)
    out = ok("sleep-until", str(slow), "--interval", "0.2", timeout=50, AJUG_TEST_SLOW_S="0.3")
    assert "all 4 tasks done" in out
    assert run.wait(30) == 0, read_log(run)
    assert ajug("check", str(slow), AJUG_TEST_SLOW_S="0.3").returncode == 0


@pytest.mark.timeout(60)
def test_shell_runs_a_piped_script_with_value_store_tasks_invalidate(proj: Path) -> None:
    script = ("print('V', value(tot))\n"
              "print('N', len(tasks), type(store).__name__)\n"
              "print('I', invalidate(summary))\n"
              "print('E', store.exists([summary.key]))\n")
    out = ajug("shell", str(proj), "--plain", input=script)
    assert out.returncode == 0, out.stderr
    assert f"V {TOTAL}" in out.stdout
    assert f"N {2 * N + 2} FileStore" in out.stdout
    assert "I 1" in out.stdout and "E [False]" in out.stdout
    # the plain console is also what AJUG_SHELL_PLAIN=1 (the configuration layer) selects
    out = ajug("shell", str(proj), input="print('R', value(tot) * 2)\n", AJUG_SHELL_PLAIN="1")
    assert out.returncode == 0 and f"R {2 * TOTAL}" in out.stdout


@pytest.mark.timeout(60)
def test_graph_dot_and_json(proj: Path) -> None:
    g = graph_of(proj)
    assert [(f["name"], f["tasks"], f["done"]) for f in g["functions"]] == [
        ("pipeline.load", N, N), ("pipeline.double", N, N), ("pipeline.total", 1, 1),
        ("pipeline.report", 1, 1)]
    by_key = {t["key"]: t for t in g["tasks"]}
    (tot,) = [t for t in g["tasks"] if t["function"] == "pipeline.total"]
    assert sorted(tot["deps"]) == sorted(keys_of(g, "double"))
    assert all(by_key[d]["function"] == "pipeline.load"
               for k in keys_of(g, "double") for d in by_key[k]["deps"])
    assert {(e["from"], e["to"], e["count"]) for e in g["edges"]} == {
        ("pipeline.load", "pipeline.double", N), ("pipeline.double", "pipeline.total", N),
        ("pipeline.total", "pipeline.report", 1)}

    dot = ok("graph", str(proj), "--format", "dot")
    assert dot.startswith("digraph ajug {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    clusters = re.findall(r'subgraph cluster_\d+ \{\n    label="([^"]+)";', dot)
    assert clusters == [f"pipeline.load ({N})", f"pipeline.double ({N})", "pipeline.total (1)",
                        "pipeline.report (1)"]
    nodes = re.findall(r'^    "([0-9a-f]{40})" \[label=', dot, re.M)
    assert sorted(nodes) == sorted(by_key)
    edges = re.findall(r'^  "([0-9a-f]{40})" -> "([0-9a-f]{40})";$', dot, re.M)
    assert len(edges) == N + N + 1 and all(a in by_key[b]["deps"] for a, b in edges)
    small = ok("graph", str(proj), "--by-function")
    assert small.count(" -> ") == 3 and f'\\n{N}/{N} done' in small


@pytest.mark.timeout(60)
def test_config_precedence_flag_env_file_default_and_masking(tmp_path: Path) -> None:
    d = tmp_path / "proj"
    d.mkdir()
    jug = d / "pipeline.py"
    shutil.copy(HERE / "jugfiles" / "pipeline.py", jug)
    (d / "ajug.toml").write_text('lease-ttl = 7\nretries = 2\nstore = "data/results"\n'
                                 "[serve]\nport = 6001\n")

    def cfg(*args: str, **e: str) -> dict[str, Any]:
        return json.loads(ok("config", "--json", str(jug), *args, **e))["settings"]

    s = cfg("serve")["serve"]
    assert s["lease-ttl"] == {"value": 7.0, "source": f"ajug.toml ({d / 'ajug.toml'})"}
    assert s["port"]["value"] == 6001 and "[serve]" in s["port"]["source"]
    assert s["max-attempts"] == {"value": 3, "source": "default"}
    assert s["store"]["value"] == str(d / "data" / "results")  # relative to the file
    s = cfg("serve", AJUG_LEASE_TTL="9")["serve"]
    assert s["lease-ttl"] == {"value": 9.0, "source": "env AJUG_LEASE_TTL"}
    assert s["retries"]["value"] == 2  # the file still counts for what env does not set
    s = cfg("serve", "--lease-ttl", "11", AJUG_LEASE_TTL="9")["serve"]
    assert s["lease-ttl"] == {"value": 11.0, "source": "flag"}

    # tokens and a redis password never appear
    text = ok("config", str(jug), "serve", AJUG_TOKEN="sekrit-token-1",
              AJUG_STORE="redis://:hunter2pw@db:6379/0")
    assert "sekrit-token-1" not in text and "hunter2pw" not in text
    assert re.search(r'^token = "\*+"  # env AJUG_TOKEN$', text, re.M)
    assert 'store = "redis://:********@db:6379/0"  # env AJUG_STORE' in text

    # the layers reach real commands: the store from the file, --json from the environment
    st = json.loads(ok("status", str(jug), AJUG_STATUS_JSON="1"))
    assert st["store"] == str(d / "data" / "results")
    st = json.loads(ok("status", str(jug), "--store", str(d / "other"), AJUG_STATUS_JSON="1"))
    assert st["store"] == str(d / "other")

    # [tool.ajug] in a pyproject.toml, found from a jugfile in a subdirectory
    (d / "ajug.toml").unlink()
    (d / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.ajug]\nretries = 4\n')
    sub = d / "sub"
    sub.mkdir()
    shutil.copy(jug, sub / "pipeline.py")
    s = json.loads(ok("config", "--json", str(sub / "pipeline.py"), "run"))["settings"]["run"]
    assert s["retries"] == {"value": 4, "source": f"pyproject.toml ({d / 'pyproject.toml'})"}

    # mistakes are one line, naming the file and what to do
    (d / "pyproject.toml").write_text("[tool.ajug]\nlease_tll = 3\n")
    bad = ajug("status", str(jug))
    assert bad.returncode == 2 and "unknown setting 'lease_tll'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    (d / "pyproject.toml").write_text('[tool.ajug]\ntoken = "abc"\n')
    bad = ajug("status", str(jug))
    assert bad.returncode == 2 and "token-file" in bad.stderr
    bad = ajug("run", str(tmp_path / "none.py"), AJUG_RETRIES="lots")
    assert bad.returncode == 2 and "AJUG_RETRIES" in bad.stderr


@pytest.mark.timeout(60)
def test_shell_value_of_a_task_not_computed_yet_is_one_line(proj: Path) -> None:
    ok("invalidate", str(proj), "--target", "total")
    script = "x = value(tot)\nprint('after', 1 + 1)\n"
    out = ajug("shell", str(proj), "--plain", input=script)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    said = [ln for ln in (out.stdout + out.stderr).splitlines() if "not computed" in ln]
    assert said == [f"ajug: pipeline.total {keys_of(graph_of(proj), 'total')[0][:12]} is not "
                    f"computed yet: `ajug run {proj}` computes it (`ajug status {proj} --failed` "
                    "says if it failed)"], out.stdout + out.stderr
    assert "after 2" in out.stdout  # the shell goes on


BIG = """
import os
from ajug import TaskGenerator

@TaskGenerator
def inc(i):
    return i + 1

results = [inc(i) for i in range(int(os.environ.get("AJUG_TEST_N", "120000")))]
"""


def test_commands_on_a_big_graph_end_with_their_whole_output_and_status(tmp_path: Path) -> None:
    """Past ``BIG_GRAPH`` tasks a command that keeps the Task objects to its end exits without
    freeing them one by one: its output still arrives whole, with its exit status."""
    from ajug.jugfile import BIG_GRAPH

    n = BIG_GRAPH + 20_000
    jf = tmp_path / "big.py"
    jf.write_text(BIG)
    st = ajug("status", str(jf), "--json", cwd=tmp_path, AJUG_TEST_N=str(n))
    assert st.returncode == 0, st.stderr
    got = json.loads(st.stdout)
    assert got["tasks"] == n and got["totals"]["ready"] == n
    check = ajug("check", str(jf), cwd=tmp_path, AJUG_TEST_N=str(n))
    assert check.returncode == 1 and f"0/{n} tasks done" in check.stderr + check.stdout
