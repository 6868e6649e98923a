"""Unreachable things: said at once, in one line, then one line when connected or given up;
retries with backoff (in one line too) for what was reachable once. Workers of a stopped
`ajug serve --stay` exit cleanly, in one line. A worker and its coordinator run in this process
(tests/inproc.py) unless what the command prints is the subject."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from inproc import Engine
from procs import Procs, ajug_cmd, copy_jugfile, env, read_log, status, wait_for
from store_helpers import hexkey

pytestmark = pytest.mark.timeout(90)


class Lines:
    """A process's stderr, line by line as it comes, with the time each line arrived."""

    def __init__(self, args: list[str], cwd: Path, **e: str) -> None:
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(ajug_cmd(*args), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=env(**e), cwd=cwd,
                                  start_new_session=True)
        self.q: queue.Queue[tuple[float, str]] = queue.Queue()
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.q.put((time.monotonic() - self.t0, line.rstrip("\n")))

    def next(self, timeout_s: float) -> tuple[float, str]:
        got = self.q.get(timeout=timeout_s)
        self.lines.append(got)
        return got

    def rest(self, timeout_s: float) -> list[str]:
        rc = self.p.wait(timeout_s)
        self.p.stderr.close() if self.p.stderr else None
        time.sleep(0.1)
        while not self.q.empty():
            self.lines.append(self.q.get())
        self.rc = rc
        return [ln for _, ln in self.lines]

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def test_a_worker_says_at_once_that_nothing_listens(tmp_path: Path, free_tcp_port: int) -> None:
    w = Lines(["work", f"127.0.0.1:{free_tcp_port}", "--connect-timeout", "4"], tmp_path)
    try:
        t, first = w.next(10)
        assert t < 3, (t, first)  # not after a minute of silence
        assert first == (f"ajug: waiting for the coordinator at 127.0.0.1:{free_tcp_port} "
                         "(connection refused); retrying for 4 s")
        lines = w.rest(30)
    finally:
        w.kill()
    assert w.rc == 2
    assert len(lines) == 2, lines  # then one line: it gave up
    assert lines[1].startswith(f"ajug: error: cannot reach the coordinator at 127.0.0.1:"
                               f"{free_tcp_port} after 4 s (connection refused)"), lines
    assert lines[1].count("cannot reach") == 1 and lines[1].count("refused") == 1, lines


def test_a_worker_started_first_says_when_it_connects(engine: Engine, tmp_path: Path,
                                                      free_tcp_port: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (tests/inproc.py): what the worker says, as ``ajug work`` would print it
    (the line it ends with, from worker.ran, is checked on processes below)."""
    jug = copy_jugfile(tmp_path, "taskraise.py")
    monkeypatch.setenv("AJUG_TEST_FIXED", "1")
    said: list[str] = []
    w = engine.run_worker(free_tcp_port, connect_timeout_s=60, say=said.append)
    wait_for(lambda: said, 10, what="the worker to say it waits")
    assert said[0].startswith(f"waiting for the coordinator at 127.0.0.1:{free_tcp_port} "), said
    coord = engine.make_coordinator(jug, port=free_tcp_port)
    wait_for(lambda: len(said) > 1, 30, what="the worker to say it connected")
    assert said[1].startswith(f"connected to the coordinator at 127.0.0.1:{free_tcp_port}"
                              " after "), said
    assert w.wait(60) == 0, said
    assert w.worker.ran == 5
    assert len(said) == 2, said  # nothing else said on the way
    assert coord.wait(30) == 0


def test_an_unreachable_redis_at_start_is_said_once(tmp_path: Path, free_tcp_port: int) -> None:
    copy_jugfile(tmp_path, "taskraise.py")
    url = f"redis://127.0.0.1:{free_tcp_port}/0?retry_s=3"
    r = Lines(["run", "taskraise.py", "--store", url, "--no-progress"], tmp_path)
    try:
        t, first = r.next(10)
        assert t < 3 and "waiting for redis at 127.0.0.1:" in first, (t, first)
        assert "(connection refused); retrying for 3 s" in first
        lines = r.rest(60)
    finally:
        r.kill()
    assert r.rc == 2, lines
    assert len(lines) == 2, lines  # not a warning per retry
    assert lines[1] == (f"ajug: error: cannot reach redis at 127.0.0.1:{free_tcp_port} after "
                        "3 s (connection refused): is redis-server running?"), lines


@pytest.mark.redis
def test_a_redis_outage_is_one_line_each_way(make_redis_server: object,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Once reachable, redis is retried with backoff (a restart is survived), said in one line
    when it goes and one when it answers again."""
    from ajug.stores.redis import RedisStore

    server = make_redis_server()  # type: ignore[operator]
    store = RedisStore(server.url, namespace="outage:", retry_s=30)
    try:
        store.save(hexkey(1), "kept")
        server.stop()
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(store.exists([hexkey(1)])))
        with caplog.at_level("DEBUG", logger="ajug.stores.redis"):
            t.start()
            wait_for(lambda: "lost redis" in caplog.text, 10, what="the outage line")
            time.sleep(1.0)  # a few retries meanwhile
            server.start()
            t.join(30)
        assert got == [[False]]  # no persistence: the restarted redis is empty
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 2, warnings
        assert warnings[0].startswith(f"lost redis at 127.0.0.1:{server.port} (") \
            and warnings[0].endswith("retrying for 30 s"), warnings
        assert warnings[1].startswith(f"redis at 127.0.0.1:{server.port} answers again after ")
        retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(retries) >= 2 and all(r.levelname == "DEBUG" for r in retries)
    finally:
        store.close()


BAD = ("Traceback", "Future exception", "never retrieved", "lost the coordinator", "reconnect")


def test_idle_workers_of_a_stopped_serve_stay_exit_cleanly(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """In this process (tests/inproc.py): three idle workers of a finished ``--stay``
    coordinator, stopped as Ctrl-C stops ``ajug serve``, end at once and quietly."""
    caplog.set_level("DEBUG")
    jug = copy_jugfile(tmp_path, "taskraise.py")
    monkeypatch.setenv("AJUG_TEST_FIXED", "1")
    coord = engine.make_coordinator(jug, stay=True)
    said: list[str] = []
    workers = [engine.run_worker(coord.port, say=said.append) for _ in range(3)]
    wait_for(lambda: (s := coord.status())["state"] == "finished" and len(s["workers"]) == 3,
             30, what="all done, three idle workers")
    assert all(w.alive for w in workers)  # --stay: the workers wait for more
    coord.stop()
    assert coord.wait(30) == 0  # stopped after the end: the run's own status
    t0 = time.monotonic()
    for w in workers:
        assert w.wait(15) == 0
    assert time.monotonic() - t0 < 10  # not a minute of trying to reconnect
    assert sum(w.worker.ran for w in workers) == 5
    for bad in BAD:
        assert bad not in caplog.text and not any(bad in line for line in said), \
            (bad, said, caplog.text)


def test_a_stopped_serve_stay_and_its_work_j2_exit_0_in_one_line(procs: Procs,
                                                                  tmp_path: Path) -> None:
    """The processes: ``ajug serve --stay`` stopped by SIGINT after the end exits 0, and
    ``ajug work -j 2`` says in one line that its worker processes ended."""
    jug = copy_jugfile(tmp_path, "taskraise.py")
    coord, port = procs.serve(jug, "--stay", env=env(AJUG_TEST_FIXED="1"))
    many = procs.start(["work", f"127.0.0.1:{port}", "-j", "2"], "work-j2")
    wait_for(lambda: (s := status(port))["state"] == "finished" and len(s["workers"]) == 2, 30,
             what="all done, two idle workers")
    coord.send_signal(signal.SIGINT)
    assert coord.wait(30) == 0, read_log(coord)  # stopped after the end: the run's own status
    t0 = time.monotonic()
    assert many.wait(15) == 0, read_log(many)
    assert time.monotonic() - t0 < 10  # not a minute of trying to reconnect
    log = read_log(many)
    for bad in BAD:
        assert bad not in log, log
    assert log.strip().splitlines()[-1] == \
        "ajug: the coordinator says all is done; 2 worker processes ended", log
