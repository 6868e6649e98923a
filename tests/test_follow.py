"""Follow-on leases with real processes: a chain runs ahead on one worker, and a step that
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


def run_chain(tmp_path: Path, *extra: str, **e: str) -> subprocess.CompletedProcess[str]:
    jugfile = copy_jugfile(tmp_path, "longchain.py")
    out = subprocess.run(ajug_cmd("-v", "run", str(jugfile), "-j", "2", "--no-progress", *extra),
                         env=env(AJUG_TEST_MARKS=str(tmp_path), **e), capture_output=True,
                         text=True, timeout=100)
    out.jugfile = jugfile  # type: ignore[attr-defined]
    return out


@pytest.mark.timeout(120)
def test_chain_with_a_step_that_raises_once(tmp_path: Path) -> None:
    out = run_chain(tmp_path, "--retries", "1", AJUG_TEST_N="400", AJUG_TEST_BAD="150")
    assert out.returncode == 0, out.stderr
    assert "401/401 done" in out.stderr
    assert (tmp_path / "bad.attempts").read_text() == "2"
    got = values(out.jugfile, ["last"], AJUG_TEST_MARKS=str(tmp_path))  # type: ignore[attr-defined]
    assert got["last"][0] == 400
    assert "failed" not in out.stderr.split("ajug: [finished]")[-1]


@pytest.mark.timeout(120)
def test_chain_with_a_step_that_raises_fails_and_blocks_the_rest(tmp_path: Path) -> None:
    out = run_chain(tmp_path, AJUG_TEST_N="300", AJUG_TEST_BAD="100")
    assert out.returncode == 1
    summary = out.stderr.split("ajug: [finished]")[-1]
    assert "100/301 done" in summary and "1 failed" in summary and "200 blocked" in summary, summary


@pytest.mark.timeout(120)
def test_chain_with_a_step_that_kills_its_worker(tmp_path: Path) -> None:
    out = run_chain(tmp_path, AJUG_TEST_N="400", AJUG_TEST_BAD="200", AJUG_TEST_HOW="kill")
    assert out.returncode == 0, out.stderr
    assert "401/401 done" in out.stderr
    assert (tmp_path / "bad.attempts").read_text() == "2"
    got = values(out.jugfile, ["last"], AJUG_TEST_MARKS=str(tmp_path))  # type: ignore[attr-defined]
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
