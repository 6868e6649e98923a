"""Follow-on leases (in this process, and with real processes where a step kills its
worker): a chain runs ahead on one worker, and a step that
fails or kills its worker gives the rest of the chain back without losing or counting it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from inproc import Engine
from procs import ajug_cmd, copy_jugfile, env, values, wait_for

from ajug.protocol import messages as m
from ajug.protocol.connection import open_connection


def run_chain(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              **settings: Any) -> tuple[Path, int, dict[str, Any]]:
    """The chain served here with two workers (as ``ajug run -j 2``): its jugfile, the
    coordinator's exit status and its last status."""
    jugfile = copy_jugfile(tmp_path, "longchain.py")
    monkeypatch.setenv("AJUG_TEST_MARKS", str(tmp_path))
    coord = engine.make_coordinator(jugfile, **settings)
    workers = [engine.run_worker(coord.port) for _ in range(2)]
    rc = coord.wait(100)
    for w in workers:
        assert w.wait(30) == 0
    assert coord.coord is not None
    return jugfile, rc, coord.coord.status(False)


@pytest.mark.timeout(120)
def test_chain_with_a_step_that_raises_once(engine: Engine, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (tests/inproc.py): the step is retried on the chain's way."""
    monkeypatch.setenv("AJUG_TEST_N", "400")
    monkeypatch.setenv("AJUG_TEST_BAD", "150")
    jugfile, rc, st = run_chain(engine, tmp_path, monkeypatch, retries=1)
    assert rc == 0
    assert st["tasks"] == 401 and st["totals"]["done"] == 401
    assert st["totals"]["failed"] == 0 and st["failures"] == []
    assert (tmp_path / "bad.attempts").read_text() == "2"
    got = values(jugfile, ["last"], AJUG_TEST_MARKS=str(tmp_path))
    assert got["last"][0] == 400


@pytest.mark.timeout(120)
def test_chain_with_a_step_that_raises_fails_and_blocks_the_rest(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (tests/inproc.py); the summary line ``ajug run`` prints for it is
    tested in tests/test_failures.py."""
    monkeypatch.setenv("AJUG_TEST_N", "300")
    monkeypatch.setenv("AJUG_TEST_BAD", "100")
    _, rc, st = run_chain(engine, tmp_path, monkeypatch)
    assert rc == 1
    assert st["tasks"] == 301
    tot = st["totals"]
    assert (tot["done"], tot["failed"], tot["blocked"]) == (100, 1, 200), tot


@pytest.mark.timeout(120)
def test_chain_with_a_step_that_kills_its_worker(tmp_path: Path) -> None:
    """Processes: the step kills the worker that runs it."""
    jugfile = copy_jugfile(tmp_path, "longchain.py")
    out = subprocess.run(ajug_cmd("-v", "run", str(jugfile), "-j", "2", "--no-progress"),
                         env=env(AJUG_TEST_MARKS=str(tmp_path), AJUG_TEST_N="400",
                                 AJUG_TEST_BAD="200", AJUG_TEST_HOW="kill"),
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "401/401 done" in out.stderr
    assert (tmp_path / "bad.attempts").read_text() == "2"
    got = values(jugfile, ["last"], AJUG_TEST_MARKS=str(tmp_path))
    assert got["last"][0] == 400


@pytest.mark.timeout(60)
def test_follow_on_leases_on_the_wire(engine: Engine, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that asks with ``follow`` gets the chain ahead of the step it holds, each step
    naming its input in ``after``; another worker gets nothing of it. (The coordinator runs in
    this process: tests/inproc.py.)"""
    jugfile = copy_jugfile(tmp_path, "longchain.py")
    monkeypatch.setenv("AJUG_TEST_N", "10")
    port = engine.make_coordinator(jugfile, stay=True).port

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        a = await open_connection("127.0.0.1", port, token=b"test-token", role="worker")
        b = await open_connection("127.0.0.1", port, token=b"test-token", role="worker")
        try:
            async def ask(conn: Any, rid: int, follow: bool, want: int = 5) -> list[dict[str, Any]]:
                conn.send(m.lease(rid, want=want, wait_ms=0, follow=follow))
                await conn.drain()
                rep = await asyncio.wait_for(conn.recv(), 10)
                return rep["leases"]

            plain = await ask(a, 1, True, want=1)  # the start, alone: it is all that is ready
            other = await ask(b, 1, False)  # the chain waits on a's lease: nothing for b
            ahead = await ask(a, 2, True)  # a holds the start: the next 5 steps follow it
            return plain, other, ahead
        finally:
            a.close()
            b.close()

    plain, other, ahead = asyncio.run(scenario())
    assert len(plain) == 1 and "after" not in plain[0]
    assert other == []
    assert len(ahead) == 5
    chain = [plain[0]["key"]] + [lz["key"] for lz in ahead]
    assert [lz["after"] for lz in ahead] == [[k] for k in chain[:5]]

@pytest.mark.timeout(90)
def test_a_long_follow_on_does_not_hold_back_the_reports_before_it(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quick steps, then their reduce leased ahead to the same worker: while the reduce runs
    (here: until the test opens its gate) every step must already be reported done. (In this
    process: tests/inproc.py.)"""
    jugfile = copy_jugfile(tmp_path, "steady.py")
    gate = tmp_path / "gate"
    monkeypatch.setenv("AJUG_TEST_STEADY_S", "0.005")
    monkeypatch.setenv("AJUG_TEST_GATE", str(gate))
    coord = engine.make_coordinator(jugfile)
    engine.run_worker(coord.port)
    st = wait_for(lambda: (s := coord.status())["totals"]["done"] == 40 and s, 30,
                  what="every step reported while the reduce runs")
    assert st["totals"]["running"] == 1
    gate.touch()
    assert coord.wait(30) == 0


def test_a_large_result_is_kept_here_only_for_a_follow_on_waiting_on_it() -> None:
    """A small result stays in the worker's cache (it may wait in the save batch, where a
    follow-on run meanwhile finds it only there); a large one (saved before the next task
    starts) only when a follow-on lease queued on this worker waits on it."""
    from ajug.inbox import Inbox
    from ajug.stores import encoding
    from ajug.workresults import ResultCache, SaveBatch
    from ajug.worksession import Lease

    inbox, cache = Inbox(), ResultCache()
    small = encoding.pickle_value(b"x" * 1000)
    large = encoding.pickle_value(bytes(SaveBatch.MAX_BYTES))
    a, b, c, d = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)
    inbox.put(Lease(c, 1, 0, b"", b"", "m.f", "", after=(b,)), None)
    for key, p in ((a, small), (b, large), (d, large)):
        cache.put_produced(key, p, inbox.waits_on)
    assert cache.get(a) is small and cache.get(b) is large
    assert cache.get(d) is None  # nothing here waits on it: its dependents load it
    assert inbox.waits_on(b) and not inbox.waits_on(d) and not inbox.waits_on(c)
