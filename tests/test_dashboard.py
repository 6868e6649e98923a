"""The dashboard of a real `ajug serve --dashboard` (and `ajug run --dashboard`): its JSON and
Prometheus metrics against `ajug status --json`, and the page itself in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from inproc import TOKEN
from procs import Procs, env, read_log, wait_for

from ajug.protocol.client import query_status

HERE = Path(__file__).parent
STATES = ("waiting", "ready", "running", "done", "failed", "blocked")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def fetch(port: int, path: str, timeout: float = 10) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def fetch_json(port: int, path: str) -> dict[str, Any]:
    code, ctype, body = fetch(port, path)
    assert code == 200 and ctype == "application/json", (code, body)
    return json.loads(body)


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value; checks every sample line is well formed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) ajug_\w+ ", line) or not line, line
            continue
        m = re.fullmatch(r'(ajug_\w+(?:\{[^}]*\})?) (\S+)', line)
        assert m, line
        out[m.group(1)] = float(m.group(2))
    return out


def stable(st: dict[str, Any]) -> dict[str, Any]:
    """The parts of a status that do not change while nothing runs."""
    return {k: st[k] for k in ("tasks", "totals", "functions", "state", "reclaimed",
                               "barrier", "failures", "jugfile", "store")}


def check_metrics_match(metrics: dict[str, float], st: dict[str, Any]) -> None:
    for f in st["functions"]:
        for s in STATES:
            assert metrics[f'ajug_tasks{{function="{f["name"]}",state="{s}"}}'] == f[s]
    assert metrics["ajug_tasks_total"] == st["tasks"]
    assert metrics["ajug_workers_connected"] == len(st["workers"])
    assert metrics["ajug_reclaimed_total"] == st["reclaimed"]
    assert metrics["ajug_leases_active"] == st["totals"]["running"]


class IdText(HTMLParser):
    """The text inside every element that has an id (the page's numbers have stable ids)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.text: dict[str, str] = {}
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "link", "br", "img", "input", "line", "polyline"):
            return
        i = dict(attrs).get("id")
        self.stack.append(i)
        if i:
            self.ids.append(i)
            self.text.setdefault(i, "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("meta", "link", "br", "img", "input", "line", "polyline"):
            return
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for i in self.stack:
            if i:
                self.text[i] += data


def chromium() -> str:
    for c in CHROMIUM_CANDIDATES:
        path = shutil.which(c)
        if path:
            return path
    reason = "chromium not installed (Debian: apt-get install chromium)"
    if os.environ.get("AJUG_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{reason}; AJUG_REQUIRE_CHROMIUM=1")
    pytest.skip(reason)


def dump_dom(browser: str, url: str, tmp_path: Path) -> str:
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def page_text(browser: str, url: str, tmp_path: Path) -> dict[str, str]:
    """The text of every element with an id, as Chromium renders the page."""
    p = IdText()
    p.feed(dump_dom(browser, url, tmp_path))
    return {k: v.strip() for k, v in p.text.items()}


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_dashboard_json_metrics_and_page_match_status(
        engine: Any, tmp_path: Path, free_tcp_port: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The coordinator with its dashboard and a worker in this process (tests/inproc.py); the
    browser is a process."""
    jug = tmp_path / "dashboard.py"
    shutil.copy(HERE / "jugfiles" / "dashboard.py", jug)
    monkeypatch.setenv("AJUG_TEST_SLOW_S", "3")
    dash = free_tcp_port
    coord = engine.make_coordinator(jug, stay=True, dashboard=dash)
    port = coord.port
    assert f"dashboard on http://127.0.0.1:{dash}/" in capsys.readouterr().out
    code, ctype, page = fetch(dash, "/")
    assert code == 200 and ctype.startswith("text/html")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no CDN: all inline
    for i in ("total-done", "total-tasks", "functions", "workers", "failures", "chart", "legend"):
        assert f'id="{i}"' in page
    # the chart keeps its proportions (a stretched one distorts the line and its labels)
    assert 'preserveAspectRatio="none"' not in page
    assert fetch(dash, "/nope")[0] == 404

    engine.run_worker(port)
    # while it runs: the same graph, a worker, a lease
    live = wait_for(lambda: (s := fetch_json(dash, "/api/status"))["totals"]["running"] and s,
                    20, what="a running task on the dashboard")
    assert live["tasks"] == status_of(port)["tasks"] == 6
    assert len(live["workers"]) == 1 and live["workers"][0]["n_running"] >= 1
    assert live["workers"][0]["running"]  # its current task is listed, with its function
    assert live["workers"][0]["running_functions"][0] == "dashboard.slow_square"
    browser = chromium()
    t = page_text(browser, f"http://127.0.0.1:{dash}/", tmp_path)  # while a task runs
    assert t["loaded"] == "yes", "the page's script did not fetch /api/status"
    assert "slow_square" in t["worker-0-tasks"], t["worker-0-tasks"]  # a name, not a hash
    assert re.search(r"slow_square [0-9a-f]{8}", t["worker-0-tasks"]), t["worker-0-tasks"]
    for label in ("done", "running", "ready", "waiting", "failed", "blocked"):
        assert label in t["legend"], t["legend"]  # what each colour of the bars means
    m = parse_metrics(fetch(dash, "/metrics")[2])
    assert m["ajug_workers_connected"] == 1 and m["ajug_tasks_total"] == 6
    assert sum(v for k, v in m.items() if k.startswith("ajug_tasks{")) == 6

    # finished (--stay keeps it serving): nothing changes any more, so everything must match
    wait_for(lambda: status_of(port)["state"] == "finished", 40, what="the run to finish")
    st = status_of(port, detail=True)  # `ajug status 127.0.0.1:PORT --failed --json`
    assert st["totals"] == {"waiting": 0, "ready": 0, "running": 0, "done": 4, "failed": 1,
                            "blocked": 1}
    api = fetch_json(dash, "/api/status")
    assert stable(api) == stable(st)
    assert [w["pid"] for w in api["workers"]] == [w["pid"] for w in st["workers"]]
    metrics_text = fetch(dash, "/metrics")
    assert metrics_text[1].startswith("text/plain; version=0.0.4")
    metrics = parse_metrics(metrics_text[2])
    check_metrics_match(metrics, st)
    assert metrics["ajug_completed_total"] == 4
    if "ajug_task_duration_seconds_count" in metrics:  # the coordinator's duration hook
        assert metrics["ajug_task_duration_seconds_count"] >= 4
        assert metrics['ajug_task_duration_seconds_bucket{le="+Inf"}'] >= 4
    # one sample per coordinator tick: the last one catches up within a second
    wait_for(lambda: (h := fetch_json(dash, "/api/history")["history"]) and h[-1][1] == 4, 5,
             what="the history to reach 4 done")

    t = page_text(browser, f"http://127.0.0.1:{dash}/", tmp_path)
    assert t["loaded"] == "yes", "the page's script did not fetch /api/status"
    # a time axis under the throughput chart: the last two minutes up to now
    assert re.fullmatch(r"-120 s\s*-90 s\s*-60 s\s*-30 s\s*now", t["chart-axis"]), t["chart-axis"]
    assert t["state"] == "finished"
    assert int(t["total-tasks"]) == st["tasks"]
    for s in STATES:
        assert int(t[f"total-{s}"]) == st["totals"][s], s
    assert int(t["total-reclaimed"]) == st["reclaimed"]
    assert int(t["workers-count"]) == len(st["workers"])
    for f in st["functions"]:
        for s in STATES:
            assert int(t[f"fn-{f['name']}-{s}"]) == f[s], (f["name"], s)
        assert int(t[f"fn-{f['name']}-total"]) == sum(f[s] for s in STATES)
    assert int(t["worker-0-done"]) == st["workers"][0]["done"]
    assert int(t["failures-count"]) == len(st["failures"]) == 1
    (f,) = st["failures"]
    assert f["func"] == "dashboard.boom" and f["type"] == "ValueError"
    assert "Traceback" in f["tb"] and "ValueError: bad input 1" in f["tb"]
    assert "dashboard.boom" in t["failures"] and "bad input 1" in t["failures"]
    assert "ValueError: bad input 1" in t["failures"].split("Traceback", 1)[1]  # the <pre>
    assert stable(fetch_json(dash, "/api/status")) == stable(st)  # still the same moment


@pytest.mark.timeout(60)
def test_run_dashboard_serves_while_the_run_lasts(procs: Procs, tmp_path: Path,
                                                  free_tcp_port: int) -> None:
    slow = tmp_path / "slow.py"
    shutil.copy(HERE / "jugfiles" / "slow.py", slow)
    dash = free_tcp_port
    run = procs.start(["run", str(slow), "-j", "1", "--no-progress", "--dashboard", str(dash)],
                      "run", env=env(AJUG_TEST_SLOW_S="0.5"))
    st = wait_for(lambda: _try_json(dash), 20, what="the dashboard of `ajug run`")
    assert st["tasks"] == 4 and st["jugfile"] == str(slow)
    assert "ajug_tasks_total 4" in fetch(dash, "/metrics")[2]
    assert run.wait(30) == 0, read_log(run)
    assert f"dashboard on http://127.0.0.1:{dash}/" in read_log(run)


def status_of(port: int, detail: bool = False) -> dict[str, Any]:
    """What ``ajug status 127.0.0.1:PORT --json [--failed]`` prints, over the protocol."""
    return asyncio.run(query_status("127.0.0.1", port, TOKEN, None, detail=detail))


def _try_json(port: int) -> dict[str, Any] | None:
    try:
        code, _, body = fetch(port, "/api/status", timeout=2)
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


def test_metrics_histogram_and_label_escaping_from_the_coordinator_hooks() -> None:
    """The exposition format of the duration histogram, against a stand-in coordinator (the real
    one fills ``durations`` from the run times that workers report)."""
    from types import SimpleNamespace

    from ajug.dashboard import metrics_text

    st = {"tasks": 3, "functions": [{"name": 'odd"name\\x', "done": 3}], "workers": [],
          "reclaimed": 0, "duplicates": 0, "barrier": False, "uptime_s": 1.0,
          "totals": {"done": 3}}
    coord = SimpleNamespace(status=lambda detail=False: st,
                            sched=SimpleNamespace(leases={}, completed=3),
                            DURATION_BUCKETS_S=(0.1, 1.0), durations=[1, 0, 2], duration_sum_s=9.5)
    m = parse_metrics(metrics_text(coord))
    assert m['ajug_tasks{function="odd\\"name\\\\x",state="done"}'] == 3
    assert m['ajug_task_duration_seconds_bucket{le="0.1"}'] == 1
    assert m['ajug_task_duration_seconds_bucket{le="1.0"}'] == 1
    assert m['ajug_task_duration_seconds_bucket{le="+Inf"}'] == 3
    assert m["ajug_task_duration_seconds_sum"] == 9.5
    assert m["ajug_task_duration_seconds_count"] == 3
    coord.durations = None
    assert "ajug_task_duration_seconds" not in metrics_text(coord)


async def test_status_says_how_long_each_running_task_has_run(tmp_path: Path) -> None:
    """A hung task shows with its running time (status and /api/status share this map): the
    longest first; a follow-on lease waiting for its inputs has none yet."""
    from ajug.coordinator import Coordinator, Settings
    from ajug.stores.memory import MemoryStore

    jugfile = tmp_path / "chain.py"
    jugfile.write_text("from ajug import TaskGenerator\n\n@TaskGenerator\ndef inc(x):\n"
                       "    return x + 1\n\na = inc(0)\nb = inc(a)\nc = inc(10)\n")
    now = [1000.0]
    coord = Coordinator(Settings(jugfile=str(jugfile), store_url="memory:"), clock=lambda: now[0])
    coord.store = MemoryStore()
    await coord.load()
    sched = coord.sched
    assert sched is not None
    sched.add_worker("w1", "h", 1).follow = True
    sched.add_worker("w2", "h", 2)
    first = sched.lease("w1", 1)  # a
    assert len(sched.lease("w1", 1)) == 1 and sched.after(1) == [0]  # b, a follow-on of a
    now[0] += 60
    sched.lease("w2", 1)  # c
    now[0] += 5
    w1, w2 = coord.status()["workers"]
    assert w1["running_s"] == [65.0, None] and len(w1["running"]) == 2
    assert w2["running_s"] == [5.0]
    sched.complete("w1", first[0][0], first[0][1])  # a done: b may start now
    now[0] += 3
    assert coord.status()["workers"][0]["running_s"] == [3.0]
    await coord.close()


@pytest.mark.timeout(120)
def test_dashboard_says_which_tasks_no_worker_can_hold(engine: Any, tmp_path: Path,
                                                      free_tcp_port: int) -> None:
    """The coordinator with its dashboard and a worker in this process (tests/inproc.py)."""
    jug = tmp_path / "needs.py"
    jug.write_text("from ajug import TaskGenerator\n\n"
                   "@TaskGenerator(resources={'gpus': 2})\ndef train(i):\n    return i\n\n"
                   "@TaskGenerator\ndef prep(i):\n    return i\n\n"
                   "trained = [train(i) for i in range(3)]\nprepped = [prep(i) for i in range(3)]\n")
    dash = free_tcp_port
    coord = engine.make_coordinator(jug, stay=True, dashboard=dash)
    port = coord.port
    # offers CPUs and memory, no GPU (as `ajug work` on this machine would)
    engine.run_worker(port, offer={"group": "hostA", "resources": {"cpus": 4,
                                                                    "memory": 8 << 30}})
    st = wait_for(lambda: (s := fetch_json(dash, "/api/status"))["totals"]["done"] == 3 and s,
                  30, what="the tasks a worker can hold to be done")
    assert st["totals"]["ready"] == 3
    assert st["unplaceable"] == [{"needs": "gpus>=2", "tasks": 3}]
    t = page_text(chromium(), f"http://127.0.0.1:{dash}/", tmp_path)
    assert t["loaded"] == "yes"
    assert "3 task(s) waiting for a worker with gpus>=2" in t["unplaceable"], t["unplaceable"]
    out = status_of(port)
    assert out["unplaceable"] == st["unplaceable"]
