"""The worker's conversation with the coordinator (ajug/worksession.py), with a clock moved by
hand and no socket: renewals, the two request slots, reports in flight across a reconnection,
resume, lost leases, follow-on leases, and how many leases to ask for."""

from __future__ import annotations

from typing import Any

import pytest

from ajug.protocol import messages as m
from ajug.worksession import Lease, WorkerSession, leases_wanted

TTL = 30.0
K = [c * 40 for c in "abcdef"]  # task keys


def sent(session: WorkerSession, now: float, want: int = 0) -> list[dict[str, Any]]:
    """What the session sends now; each message is one the coordinator would accept."""
    return [m.validate(msg, "client") for msg in session.due_messages(now, want)]


def grant(session: WorkerSession, req: dict[str, Any], now: float, *keys: str,
          state: str = "run", after: dict[str, list[str]] | None = None) -> list[Lease]:
    """Answer the lease request ``req`` with leases of ``keys`` (tokens 1, 2, ...)."""
    items = [m.lease_item(k, i + 1, 7, b"args", (after or {}).get(k, ())) for i, k in
             enumerate(keys)]
    reply = m.leases(req["id"], state=state, leases=items,
                     funcs=[m.func_item(7, "jf.f", "src", b"code")])
    return session.on_reply(m.validate(reply, "server"), now).new


def holding(*keys: str, now: float = 0.0) -> tuple[WorkerSession, list[Lease]]:
    """A session on its first connection holding leases of ``keys``, granted at ``now``."""
    s = WorkerSession(TTL)
    s.on_reconnect(now, resume=False)
    [req] = sent(s, now, want=len(keys))
    return s, grant(s, req, now, *keys)


def done(key: str, tok: int) -> tuple[str, list[Any]]:
    return ("done", m.done_item(key, tok, rt=0.1, size=10))


def test_a_lease_request_asks_for_work_and_the_leases_come_with_their_function() -> None:
    s = WorkerSession(TTL)
    s.on_reconnect(5.0, resume=False)
    [req] = sent(s, 5.0, want=2)
    assert req["op"] == "lease" and req["want"] == 2 and req["wait_ms"] > 0
    assert req["follow"] is True and req["done"] == [] and req["failed"] == []
    assert sent(s, 5.0, want=2) == []  # one poll at a time
    a, b = grant(s, req, 6.0, K[0], K[1])
    assert (a.key, a.tok, a.func_blob, a.func_name, a.args) == (K[0], 1, b"code", "jf.f", b"args")
    # valid for a TTL from when the request was sent (the coordinator's deadline is later)
    assert a.valid_until == b.valid_until == 5.0 + TTL
    assert list(s.queued) == [K[0], K[1]]
    assert sent(s, 6.0, want=0) == []  # nothing wanted, nothing to report: quiet


def test_leases_are_renewed_every_third_of_the_ttl() -> None:
    s, (a, b) = holding(K[0], K[1])
    assert sent(s, TTL / 3 - 0.01) == []
    assert s.next_wakeup(TTL / 3 - 1) == pytest.approx(1.0)
    [renew] = sent(s, TTL / 3)
    assert renew["op"] == "renew" and renew["leases"] == [[K[0], 1], [K[1], 2]]
    assert sent(s, TTL) == []  # not again while one is unanswered
    up = s.on_reply(m.renewed(renew["id"], []), TTL / 3 + 0.5)
    assert up.renewed and not up.lost
    # confirmed from when the renewal was sent, not when its answer came
    assert a.valid_until == b.valid_until == TTL / 3 + TTL
    assert sent(s, TTL / 3 + 1) == []
    [again] = sent(s, 2 * TTL / 3)
    assert again["op"] == "renew" and again["id"] != renew["id"]


def test_a_renewal_asked_for_goes_at_once_and_nothing_is_renewed_when_nothing_is_held() -> None:
    s, _ = holding(K[0])
    s.renew_soon()
    [renew] = sent(s, 0.1)
    assert renew["op"] == "renew"
    s.on_reply(m.renewed(renew["id"]), 0.2)
    assert sent(s, 0.3) == []  # asked once, renewed once
    s.add_reports([done(K[0], 1)])
    [req] = sent(s, 20.0)
    assert req["op"] == "lease"  # the report, and no renewal: nothing is held
    empty = WorkerSession(TTL)
    empty.on_reconnect(0.0, resume=False)
    empty.renew_soon()
    assert sent(empty, 100.0) == []


def test_reports_go_beside_a_poll_that_waits_on_the_coordinator() -> None:
    s, (a, b) = holding(K[0], K[1])
    [poll] = sent(s, 1.0, want=1)  # the long poll for more work
    assert poll["want"] == 1 and poll["done"] == []
    s.add_reports([done(K[0], 1)])
    assert K[0] not in s.queued
    [report] = sent(s, 1.1, want=1)  # at once, in the second slot, not behind the poll
    assert report["want"] == 0 and report["wait_ms"] == 0
    assert report["done"] == [[K[0], 1, {"rt": 0.1, "size": 10}]]
    s.add_reports([done(K[1], 2)])
    assert sent(s, 1.2, want=1) == []  # both slots taken: the report waits
    assert not s.slots_free() and not s.quiet()
    grant(s, report, 1.3)
    [next_report] = sent(s, 1.4, want=1)  # the report slot is free again
    assert next_report["want"] == 0 and [d[0] for d in next_report["done"]] == [K[1]]
    grant(s, poll, 1.5)
    [next_poll] = sent(s, 1.6, want=3)
    assert next_poll["want"] == 3 and next_poll["done"] == []


def test_with_the_poll_slot_free_reports_ride_on_the_poll() -> None:
    s, _ = holding(K[0], K[1])
    s.add_reports([done(K[0], 1)])
    [req] = sent(s, 1.0, want=1)
    assert req["want"] == 1 and [d[0] for d in req["done"]] == [K[0]]
    assert sent(s, 1.1, want=1) == []  # the report went with it: no second request


def test_reports_in_flight_when_the_connection_drops_go_again_once() -> None:
    s, (a, b) = holding(K[0], K[1])
    s.add_reports([done(K[0], 1)])
    failed = ("failed", m.failed_item(K[1], 2, m.task_error("ValueError", "no", "", "exception")))
    s.add_reports([failed])
    [req] = sent(s, 1.0)
    assert len(req["done"]) == 1 and len(req["failed"]) == 1
    s.on_reconnect(2.0)  # the connection dropped before the answer
    # the new coordinator hears first which tasks this worker still has, reports included
    [resume] = sent(s, 2.0, want=4)
    assert resume["op"] == "resume" and sorted(resume["running"]) == [K[0], K[1]]
    assert sent(s, 2.1, want=4) == []  # nothing else until it answers
    # a late answer to the old connection's request changes nothing
    assert not s.on_reply(m.leases(req["id"], state="run"), 2.2).new
    s.on_reply(m.resumed(resume["id"], kept=[(K[0], 5), (K[1], 6)]), 2.3)
    [again] = sent(s, 2.4, want=0)
    # re-sent once, with the tokens the new coordinator gave back
    assert again["done"] == [[K[0], 5, {"rt": 0.1, "size": 10}]]
    assert [f[:2] for f in again["failed"]] == [[K[1], 6]]
    assert sent(s, 2.5, want=0) == []
    grant(s, again, 2.6)
    s.on_reconnect(3.0)  # answered: a later drop sends nothing again
    assert sent(s, 3.0, want=0) == [] and s.quiet()


def test_resume_keeps_held_leases_and_drops_those_reported_lost() -> None:
    s, (a, b, c) = holding(K[0], K[1], K[2])
    s.on_reconnect(40.0)
    [resume] = sent(s, 40.0)
    assert resume["running"] == [K[0], K[1], K[2]]
    up = s.on_reply(m.resumed(resume["id"], kept=[(K[0], 9), (K[2], 3)], lost=[K[1]]), 41.0)
    assert up.renewed and up.lost == [b] and up.lost_keys == 1
    assert (a.lost, b.lost, c.lost) == (False, True, False)
    assert a.tok == 9 and a.valid_until == 40.0 + TTL  # from when the resume was sent
    assert list(s.queued) == [K[0], K[2]]
    # the renewal clock restarts at the answer
    assert sent(s, 41.0 + TTL / 3 - 0.1) == []
    [renew] = sent(s, 41.0 + TTL / 3)
    assert renew["leases"] == [[K[0], 9], [K[2], 3]]


def test_a_first_connection_or_one_with_nothing_held_does_not_resume() -> None:
    s = WorkerSession(TTL)
    s.on_reconnect(0.0, resume=False)
    assert sent(s, 0.0, want=1)[0]["op"] == "lease"
    s2, _ = holding(K[0])
    s2.add_reports([done(K[0], 1)])
    [req] = sent(s2, 1.0)
    grant(s2, req, 1.1)
    s2.on_reconnect(2.0)
    assert [x["op"] for x in sent(s2, 2.0, want=1)] == ["lease"]


def test_leases_reported_lost_by_a_renewal_are_dropped_and_not_extended() -> None:
    s, (a, b, c) = holding(K[0], K[1], K[2])
    [renew] = sent(s, TTL / 3)
    s.add_reports([done(K[2], 3)])  # finished meanwhile: no longer held
    up = s.on_reply(m.renewed(renew["id"], [K[1], K[2], K[5]]), TTL / 3 + 1)
    assert up.lost == [b] and up.lost_keys == 3 and b.lost and not c.lost
    assert list(s.queued) == [K[0]]
    assert a.valid_until == TTL / 3 + TTL and b.valid_until == TTL


def test_a_lease_replaced_during_a_renewal_is_not_extended_by_it() -> None:
    s, (a,) = holding(K[0])
    [renew] = sent(s, TTL / 3)
    a.tok = 99  # the lease was granted anew meanwhile (another token): not what was renewed
    s.on_reply(m.renewed(renew["id"], []), TTL / 3 + 1)
    assert a.valid_until == TTL


def test_follow_on_leases_carry_what_they_follow() -> None:
    s = WorkerSession(TTL)
    s.on_reconnect(0.0, resume=False)
    [req] = sent(s, 0.0, want=2)
    first, then = grant(s, req, 0.1, K[0], K[1], after={K[1]: [K[0]]})
    assert first.after == () and then.after == (K[0],)


def test_the_run_is_over_for_this_worker_only_when_it_holds_nothing() -> None:
    s, _ = holding(K[0])
    s.add_reports([done(K[0], 1)])
    [req] = sent(s, 1.0, want=1)
    up = s.on_reply(m.leases(req["id"], state="finished"), 1.1)
    assert up.finished
    s2, _ = holding(K[0])
    [req2] = sent(s2, 1.0, want=1)
    assert not s2.on_reply(m.leases(req2["id"], state="finished"), 1.1).finished


def test_idle_time_counts_from_the_first_moment_with_nothing_held_or_to_report() -> None:
    s = WorkerSession(TTL)
    s.on_reconnect(0.0, resume=False)
    assert s.idle_for(1.0) == 0.0
    [poll] = sent(s, 1.0, want=1)
    assert s.idle_for(5.0) is None  # a poll in flight: not looked at
    grant(s, poll, 6.0)  # answered empty
    assert s.idle_for(7.0) == 6.0  # still from the first moment
    [poll] = sent(s, 7.0, want=1)
    grant(s, poll, 7.5, K[0])
    assert s.idle_for(8.0) is None  # holds a lease
    s.add_reports([done(K[0], 1)])
    [req] = sent(s, 9.0)
    grant(s, req, 9.5)
    assert s.idle_for(10.0) == 0.0  # idle afresh


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        (dict(held=0, unstarted=0, ran=0, avg_task_s=0.0), 1),  # first tasks: one at a time
        (dict(held=1, unstarted=0, ran=5, avg_task_s=1.0), 1),  # slow tasks: hold two
        (dict(held=0, unstarted=0, ran=5, avg_task_s=0.001), 50),  # tiny: ~50 ms of work
        (dict(held=60, unstarted=10, ran=5, avg_task_s=0.001), 40),  # ... counting unstarted
        (dict(held=200, unstarted=0, ran=5, avg_task_s=0.001), 0),  # ... up to 4x held
        (dict(held=1, unstarted=0, ran=5, avg_task_s=0.001, prefetch=3), 3),
        (dict(held=0, unstarted=0, ran=0, avg_task_s=0.0, prefetch=3, max_tasks=2), 2),
        (dict(held=1, unstarted=0, ran=1, avg_task_s=0.0, max_tasks=2), 0),
    ],
)
def test_how_many_leases_to_ask_for(kw: dict[str, Any], want: int) -> None:
    assert leases_wanted(**kw) == want
