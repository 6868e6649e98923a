"""A coordinator that cannot renew its store's owner lock, or finds it taken, stops handing out
leases at once and exits with one line: never two coordinators leasing the same task."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from procs import (
    Procs,
    copy_jugfile,
    env,
    executions,
    overlapping,
    read_log,
    status,
    values,
    wait_for,
)

from ajug.errors import StoreUnreachable
from ajug.lockkeeper import LockKeeper, lock_ttl_for
from ajug.stores.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lock_outlives_every_lease_it_covered() -> None:
    for lease_ttl in (1, 3, 30, 300):
        ttl = lock_ttl_for(lease_ttl)
        assert ttl >= ttl / 3 + lease_ttl  # a renewal period of grants, then a lease's life


async def test_stale_lock_is_renewed_before_leasing_and_lost_when_taken() -> None:
    store = MemoryStore()
    clock = Clock()
    mine = store.owner_lock(ttl_s=10)
    keeper = LockKeeper(mine, 10, store.url, clock=clock)
    await keeper.acquire()
    assert keeper.fresh() and await keeper.ensure()
    clock.t += 3.4  # older than its renewal period (10/3 s): renewed before anything is leased
    assert not keeper.fresh()
    assert await keeper.ensure() and keeper.fresh()
    # frozen past the lock's expiry; another coordinator took the lock meanwhile
    store._lock.expires_at = time.time() - 1  # type: ignore[union-attr]
    store.owner_lock(ttl_s=10).acquire()
    clock.t += 30
    assert not keeper.fresh()
    assert await keeper.ensure() is False
    assert keeper.lost is not None and "another coordinator" in keeper.lost
    assert "lost the owner lock" in keeper.lost
    clock.t -= 29  # never fresh again, whatever the clock says
    assert not keeper.fresh()


async def test_lock_that_cannot_be_renewed_for_a_whole_ttl_is_lost() -> None:
    clock = Clock()

    class Flaky:
        took_over = False
        fail = False

        def acquire(self) -> None:
            pass

        def renew(self) -> None:
            if self.fail:
                raise StoreUnreachable("cannot reach redis")

        def release(self) -> None:
            pass

    lock = Flaky()
    keeper = LockKeeper(lock, 10, "redis://x", clock=clock)  # type: ignore[arg-type]
    await keeper.acquire()
    lock.fail = True
    clock.t += 4
    assert await keeper.renew() is False and keeper.lost is None  # not yet: keep trying
    clock.t += 6
    assert await keeper.renew() is False
    assert keeper.lost is not None and "could not renew" in keeper.lost


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_frozen_coordinator_that_lost_its_lock_exits_without_leasing(
        procs: Procs, tmp_path: Path) -> None:
    """A is frozen past its lock; B takes the store over and serves; A wakes: it leases
    nothing more and exits with one line. No task runs twice at the same time."""
    jugfile = copy_jugfile(tmp_path, "recorded.py")
    runlog = tmp_path / "runs.jsonl"
    e = env(AJUG_TEST_RUNLOG=str(runlog), AJUG_TEST_N="150", AJUG_TEST_TASK_S="0.1")
    a, port_a = procs.serve(jugfile, "--lease-ttl", "3", env=e)
    workers_a = [procs.work(port_a, "--connect-timeout", "3", env=e) for _ in range(2)]
    wait_for(lambda: status(port_a)["totals"]["done"] >= 10, 60, what="10 tasks done")
    os.kill(a.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # B is refused while A's lock lives (10 s), then takes the store over
        b = None
        while b is None and time.monotonic() - stopped < 60:
            try:
                b, port_b = procs.serve(jugfile, "--lease-ttl", "3", env=e)
            except AssertionError as err:
                assert "served by another coordinator" in str(err), err
                time.sleep(0.5)
        assert b is not None, "B never took over A's expired lock"
        workers_b = [procs.work(port_b, env=e) for _ in range(2)]
        wait_for(lambda: status(port_b)["totals"]["running"] >= 1, 30, what="B leasing")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert a.wait(20) == 2, read_log(a)[-3000:]
    last = read_log(a).strip().splitlines()[-1]
    assert "lost the owner lock" in last and f"pid {b.pid}" in last, last
    assert b.wait(90) == 0, read_log(b)[-3000:]
    for w in workers_b:
        assert w.wait(30) == 0, read_log(w)[-2000:]
    for w in workers_a:  # their coordinator is gone and nobody listens there: they give up
        assert w.wait(30) != 0
    runs = executions(runlog)
    assert overlapping(runs) == []
    # nothing A's workers ran started after B had taken over
    a_pids = {w.pid for w in workers_a}
    b_start = min(r["start"] for r in runs if r["pid"] not in a_pids)
    assert all(r["start"] < b_start for r in runs if r["pid"] in a_pids)
    got = values(jugfile, ["total"], AJUG_TEST_N="150", AJUG_TEST_TASK_S="0.1")
    assert got["total"] == sum(i * i for i in range(150))
