# ruff: noqa: F811  (the make_coordinator fixture is imported from tests/inproc_async.py)
"""A coordinator in the test's own process and event loop (``tests/inproc.py``), driven over
real TCP on 127.0.0.1: what needs no worker processes is tested here in milliseconds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ajug.protocol import messages as m
from ajug.protocol.connection import Connection, open_connection
from ajug.taskstate import READY, RUNNING
from tests.inproc_async import TOKEN, MakeCoordinator, connect, make_coordinator  # noqa: F401

DOUBLE = """
from ajug import TaskGenerator

@TaskGenerator
def double(x):
    return 2 * x
"""
INDEPENDENT = DOUBLE + "xs = [double(i) for i in range(3)]\n"


async def ask(conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
    conn.send(msg)
    await conn.drain()
    return await asyncio.wait_for(conn.recv(), 10)


async def test_a_worker_leases_reports_and_hears_finished(make_coordinator: MakeCoordinator) -> None:
    coord = await make_coordinator(INDEPENDENT)
    assert coord.store is not None
    w = await connect(coord)
    reply = await ask(w, m.lease(1, want=10))
    assert reply["state"] == "run" and len(reply["leases"]) == 3 and len(reply["funcs"]) == 1
    done = []
    for item in reply["leases"]:
        coord.store.save(item["key"], 0)
        done.append((item["key"], item["tok"], {"rt": 0.5, "size": 1}))
    reply = await ask(w, m.lease(2, want=10, done=done))
    assert reply["state"] == "finished" and reply["leases"] == []
    assert coord.state == "finished" and coord.exit_status() == 0
    assert sum(coord.durations) == 3 and coord.duration_sum_s == 1.5
    w.close()


async def test_a_read_only_client_reads_status_but_may_not_shut_down(
        make_coordinator: MakeCoordinator) -> None:
    coord = await make_coordinator(INDEPENDENT, read_token=b"read-only-token-0123456789")
    c = await connect(coord, role="client", access="read", token=b"read-only-token-0123456789")
    st = (await ask(c, m.status(1)))["status"]
    assert st["tasks"] == 3 and st["totals"]["ready"] == 3 and st["state"] == "running"
    denied = await ask(c, m.shutdown(2))
    assert denied["op"] == "error" and denied["code"] == "access"
    assert (await ask(c, m.status(3)))["op"] == "status"  # the connection carries on
    assert not coord._stop.is_set()
    c.close()


async def test_fail_fast_stops_the_coordinator_at_the_first_failure(
        make_coordinator: MakeCoordinator) -> None:
    """At the first failure nothing more is handed out; workers hear "finished" at their next
    request (they exit 0 rather than reconnect until --connect-timeout), and the coordinator
    stops with exit status 1 once they hung up."""
    coord = await make_coordinator(INDEPENDENT, fail_fast=True)
    running = asyncio.ensure_future(coord.run())
    w = await connect(coord)
    (first,) = (await ask(w, m.lease(1, want=1)))["leases"]
    err = m.task_error("ValueError", "boom", "", "exception")
    reply = await ask(w, m.lease(2, want=3, failed=[(first["key"], first["tok"], err)]))
    assert reply["state"] == "finished" and reply["leases"] == []
    other = await connect(coord)
    reply = await ask(other, m.lease(1, want=3, wait_ms=20_000))
    assert reply["state"] == "finished" and reply["leases"] == []
    st = coord.status()
    assert st["totals"]["failed"] == 1 and st["failures"][0]["kind"] == "exception"
    assert st["totals"]["ready"] == 2  # never handed out
    assert not running.done()  # it waits for its workers to hang up
    other.close()
    w.close()
    assert await asyncio.wait_for(running, 10) == 1


async def test_serve_connection_takes_any_stream_pair(make_coordinator: MakeCoordinator) -> None:
    """The public entry for one connection: a second listener on port 0 hands its
    connections to ``serve_connection``, as the coordinator's own does."""
    coord = await make_coordinator(INDEPENDENT)
    server = await asyncio.start_server(coord.serve_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        c = await open_connection("127.0.0.1", port, token=TOKEN, role="client")
        st = (await ask(c, m.status(1)))["status"]
        assert st["tasks"] == 3
        c.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("took_over", [False, True])
async def test_resume_grace_holds_leases_on_the_coordinators_clock(
        make_coordinator: MakeCoordinator, took_over: bool) -> None:
    now = [1000.0]
    coord = await make_coordinator(INDEPENDENT, clock=lambda: now[0], resume_grace_s=5.0)
    assert coord.sched is not None
    if took_over:  # as ``load`` does after taking over a dead coordinator's store
        coord.sched.hold_for_resume(coord.s.resume_grace_s)
    w = await connect(coord)
    reply = await ask(w, m.lease(1, want=3))
    assert len(reply["leases"]) == (0 if took_over else 3)
    now[0] += 6
    reply = await ask(w, m.lease(2, want=3))
    assert len(reply["leases"]) == (3 if took_over else 0)
    w.close()


BARRIER_SLOW_RELOAD = """
import time
from ajug import TaskGenerator, barrier, bvalue

@TaskGenerator
def double(x):
    return 2 * x

first = double(1)
barrier()
time.sleep(0.5)  # the load past the barrier takes a while
second = double(bvalue(first))
"""


async def test_a_worker_gone_while_the_barrier_reload_runs_does_not_stop_it(
        make_coordinator: MakeCoordinator) -> None:
    """The request that completes the last task before a barrier starts the load past it; its
    connection closing meanwhile (the worker was killed) must not leave the run 'loading'
    for ever (found by the jugfile fuzzer, seed 1058)."""
    coord = await make_coordinator(BARRIER_SLOW_RELOAD)
    assert coord.store is not None and len(coord.graph or []) == 1
    w = await connect(coord)
    (item,) = (await ask(w, m.lease(1, want=1)))["leases"]
    coord.store.save(item["key"], 2)
    w.send(m.lease(2, want=1, done=[(item["key"], item["tok"], {"rt": 0.1, "size": 1})]))
    await w.drain()
    for _ in range(500):  # its handler is now in the reload: the worker dies
        if coord.state == "loading":
            break
        await asyncio.sleep(0.01)
    assert coord.state == "loading"
    w.close()
    for _ in range(500):
        if coord.state != "loading":
            break
        await asyncio.sleep(0.01)
    assert coord.state == "running" and len(coord.graph or []) == 2
    w2 = await connect(coord)
    (item2,) = (await ask(w2, m.lease(1, want=1)))["leases"]  # the task past the barrier
    assert item2["key"] != item["key"]
    w2.close()


GROWN = INDEPENDENT + "later = double(10)\n"


@pytest.fixture(params=["file", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that outlives one coordinator (set up before ``make_coordinator``, so the
    redis server is stopped after the coordinators are closed)."""
    if request.param == "file":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("make_redis_server")().url) + "?namespace=lost:"


async def test_a_result_found_at_start_and_lost_during_the_run_is_computed_again(
        store_url: str, make_coordinator: MakeCoordinator) -> None:
    """The run is called finished only when every result of the graph is confirmed present,
    not only those computed in this run: a redis restarted without persistence (or a result
    deleted) after the start-up scan loses results nobody will load again (the chaos test
    found it with redis restarted under a second coordinator)."""
    url = store_url
    first = await make_coordinator(INDEPENDENT, store_url=url)
    assert first.store is not None
    w = await connect(first)
    items = (await ask(w, m.lease(1, want=10)))["leases"]
    for item in items:
        first.store.save(item["key"], 0)
    done = [(it["key"], it["tok"], {"rt": 0.1, "size": 1}) for it in items]
    assert (await ask(w, m.lease(2, want=10, done=done)))["state"] == "finished"
    w.close()
    await first.close()
    second = await make_coordinator(GROWN, store_url=url)
    assert second.store is not None and second.sched is not None
    w = await connect(second)
    (item,) = (await ask(w, m.lease(1, want=10)))["leases"]  # only the new task
    lost = items[0]["key"]
    second.store.remove([lost])  # gone after the start-up scan found it
    second.store.save(item["key"], 20)
    reply = await ask(w, m.lease(2, want=10, done=[(item["key"], item["tok"],
                                                    {"rt": 0.1, "size": 1})]))
    assert reply["state"] == "run" and [it["key"] for it in reply["leases"]] == [lost]
    again = reply["leases"][0]
    second.store.save(lost, 0)
    reply = await ask(w, m.lease(3, want=10, done=[(lost, again["tok"], {"rt": 0.1, "size": 1})]))
    assert reply["state"] == "finished" and second.exit_status() == 0
    assert second.sched.vanished == 1 and second.sched.recomputed == 1
    w.close()


CHAIN = DOUBLE + "a = double(1)\nb = double(a)\nc = double(b)\n"


async def run_one(coord: Any, w: Connection, rid: int, value: Any = 0) -> tuple[str, int]:
    """Lease one task, store a result for it, report it done; returns (key, the next id)."""
    (item,) = (await ask(w, m.lease(rid, want=1)))["leases"]
    coord.store.save(item["key"], value)
    w.send(m.lease(rid + 1, want=0, done=[m.done_item(item["key"], item["tok"], rt=0.1, size=1)]))
    await w.drain()
    assert (await asyncio.wait_for(w.recv(), 10))["op"] == "leases"
    return item["key"], rid + 2


async def test_invalidate_makes_a_task_and_what_follows_it_ready_again(
        make_coordinator: MakeCoordinator) -> None:
    coord = await make_coordinator(CHAIN, stay=True)
    assert coord.sched is not None and coord.graph is not None
    w = await connect(coord)
    keys, rid = [], 1
    for _ in range(3):
        key, rid = await run_one(coord, w, rid)
        keys.append(key)
    assert coord.status()["totals"]["done"] == 3
    c = await connect(coord, role="client")
    reply = await ask(c, m.invalidate(1, [keys[1]]))  # b: c follows it, a does not
    assert reply["op"] != "error", reply
    t = coord.status()["totals"]
    assert (t["done"], t["ready"], t["waiting"]) == (1, 1, 1)
    (item,) = (await ask(w, m.lease(rid, want=3)))["leases"]
    assert item["key"] == keys[1]  # b first, then c once b is done again
    c.close()
    w.close()


async def test_a_report_for_an_unknown_key_changes_nothing_and_a_result_counts_once(
        make_coordinator: MakeCoordinator) -> None:
    """A report naming no task of the graph is ignored; a report whose lease is not current
    completes its task if the result is in the store (results are pure: SPEC 6), and the same
    report again (re-sent after a reconnect) counts nothing more."""
    coord = await make_coordinator(INDEPENDENT)
    assert coord.sched is not None
    w = await connect(coord)
    first, _, _ = (await ask(w, m.lease(1, want=3)))["leases"]
    await ask(w, m.lease(2, want=0, done=[m.done_item("f" * 40, 1, rt=0.1, size=1)]))
    t = coord.status()["totals"]
    assert (t["done"], t["running"]) == (0, 3)
    coord.store.save(first["key"], 0)
    stale = m.done_item(first["key"], first["tok"] + 1000, rt=0.1, size=1)
    await ask(w, m.lease(3, want=0, done=[stale]))
    current = m.done_item(first["key"], first["tok"], rt=0.1, size=1)
    await ask(w, m.lease(4, want=0, done=[current]))
    await ask(w, m.lease(5, want=0, done=[current]))
    t = coord.status()["totals"]
    assert (t["done"], t["running"]) == (1, 2) and coord.sched.completed == 1
    w.close()


async def test_a_missing_input_sends_it_back_to_be_computed_without_counting_an_attempt(
        make_coordinator: MakeCoordinator) -> None:
    coord = await make_coordinator(CHAIN, max_attempts=1)
    w = await connect(coord)
    key_a, rid = await run_one(coord, w, 1)
    (item_b,) = (await ask(w, m.lease(rid, want=1)))["leases"]
    coord.store.remove([key_a])  # gone before b could load it
    err = m.task_error("ResultMissing", "gone", "", "input-missing", input=key_a)
    reply = await ask(w, m.lease(rid + 1, want=1, failed=[m.failed_item(item_b["key"],
                                                                         item_b["tok"], err)]))
    assert [it["key"] for it in reply["leases"]] == [key_a]  # a again, b waits for it
    st = coord.status()
    assert st["totals"]["failed"] == 0 and st["totals"]["waiting"] == 2
    assert coord.sched is not None and coord.sched.error_count == {}  # not an attempt
    w.close()


async def test_a_renewed_lease_outlives_its_ttl_and_an_unrenewed_one_is_reclaimed(
        make_coordinator: MakeCoordinator) -> None:
    now = [1000.0]
    coord = await make_coordinator(INDEPENDENT, clock=lambda: now[0], lease_ttl_s=10.0)
    assert coord.sched is not None
    w = await connect(coord)
    kept, dropped, _ = (await ask(w, m.lease(1, want=3)))["leases"]
    for step in range(3):  # 24 s in all: past the TTL, renewing one every 8 s
        now[0] += 8
        reply = await ask(w, m.renew(10 + step, [(kept["key"], kept["tok"])]))
        assert reply["op"] == "renewed" and reply["lost"] == []
        coord.sched.expire()
    t = coord.status()["totals"]
    assert (t["running"], t["ready"]) == (1, 2)  # the unrenewed two went back
    st, index = coord.sched.state, coord.sched.graph.index
    assert st[index[kept["key"]]] == RUNNING and st[index[dropped["key"]]] == READY
    reply = await ask(w, m.renew(20, [(dropped["key"], dropped["tok"])]))
    assert reply["lost"] == [dropped["key"]]  # its first holder hears it is not its own
    other = await connect(coord)  # a worker holding nothing is given a reclaimed task
    (item,) = (await ask(other, m.lease(1, want=3)))["leases"]
    assert item["key"] != kept["key"]
    other.close()
    w.close()
