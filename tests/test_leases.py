"""The coordinator's decisions, driven by method calls and a fake clock: no socket, no sleep."""

from __future__ import annotations

from array import array

import pytest

from ajug.graph import Function, Graph
from ajug.scheduler import BLOCKED, DONE, FAILED, READY, RUNNING, WAITING, Scheduler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_graph(deps: list[list[int]], nfuncs: int = 1) -> Graph:
    g = Graph()
    g.functions = [Function(i, f"m.f{i}", "src", b"") for i in range(nfuncs)]
    for i, ds in enumerate(deps):
        g.keys.append(f"{i:040x}")
        g.index[g.keys[-1]] = i
        g.fn.append(i % nfuncs)
        g.dep_idx.extend(ds)
        g.dep_start.append(len(g.dep_idx))
        g.args.append(b"")
    return g


def sched_for(deps: list[list[int]], **kw: object) -> tuple[Scheduler, Clock]:
    clock = Clock()
    s = Scheduler(make_graph(deps), clock=clock, lease_ttl_s=30, **kw)  # type: ignore[arg-type]
    s.start([False] * len(deps))
    s.add_worker("w1")
    s.add_worker("w2")
    return s, clock


def test_ready_in_graph_order_and_dependents_follow() -> None:
    s, _ = sched_for([[], [], [0, 1], [2]])
    assert [i for i, _ in s.lease("w1", 10)] == [0, 1]
    assert s.state[2] == WAITING
    leases = dict(s.lease("w2", 1) or [])
    assert leases == {}
    assert s.complete("w1", 0, 1)
    assert s.state[2] == WAITING
    assert s.complete("w1", 1, 2)
    assert s.state[2] == READY
    (i, tok), = s.lease("w1", 5)
    assert i == 2
    s.complete("w1", 2, tok)
    (i, tok), = s.lease("w1", 5)
    assert i == 3
    s.complete("w1", 3, tok)
    assert s.finished() and s.all_done()


def test_start_uses_existing_results() -> None:
    clock = Clock()
    s = Scheduler(make_graph([[], [0], [1]]), clock=clock)
    s.start([True, True, False])
    assert s.state[:] == bytearray([DONE, DONE, READY])
    assert s.totals()[DONE] == 2


def test_expired_lease_is_reclaimed_without_sleeping() -> None:
    s, clock = sched_for([[]])
    (i, tok), = s.lease("w1", 1)
    clock.t += 29
    assert s.expire() == []
    assert s.renew("w1", [(i, tok)]) == []
    clock.t += 29
    assert s.expire() == []  # renewed
    clock.t += 31
    assert s.expire() == [i]
    assert s.state[i] == READY
    (j, tok2), = s.lease("w2", 1)
    assert j == i and tok2 != tok
    # the frozen worker wakes up: its renew says lost, its done is not current
    assert s.renew("w1", [(i, tok)]) == [i]
    assert not s.complete("w1", i, tok)
    assert s.accept_late("w1", i)  # the caller verified the result is in the store
    assert s.state[i] == DONE
    assert not s.complete("w2", i, tok2)  # the second runner's done is a duplicate
    assert not s.accept_late("w2", i)
    assert s.duplicates == 1


def test_disconnect_returns_leases_at_once() -> None:
    s, _ = sched_for([[], [], []])
    got = s.lease("w1", 2)
    assert len(got) == 2
    assert sorted(s.remove_worker("w1")) == [0, 1]
    assert s.state[0] == READY and s.state[1] == READY
    assert s.reclaimed == 2


def test_task_that_kills_workers_fails_after_max_attempts() -> None:
    s, _ = sched_for([[], [0]], max_attempts=3)
    for n in range(3):
        wid = f"k{n}"
        s.add_worker(wid)
        (i, _), = s.lease(wid, 1)
        assert i == 0
        s.remove_worker(wid)
    assert s.state[0] == FAILED
    assert s.state[1] == BLOCKED
    assert s.failures[0].kind == "worker-lost"
    assert "suspected of killing workers" in s.failures[0].msg
    assert s.finished() and not s.all_done()


def test_exception_retries_then_blocks_dependents_only() -> None:
    s, _ = sched_for([[], [0], [1], []], retries=1)
    err = {"type": "ValueError", "msg": "boom", "tb": "Traceback...", "kind": "exception"}
    (i, tok), (j, tok_j) = s.lease("w1", 2)
    assert (i, j) == (0, 3)
    assert s.fail("w1", 0, tok, err) == "retry"
    assert s.state[0] == READY
    (i, tok), = s.lease("w1", 1)
    assert s.fail("w1", 0, tok, err) == "failed"
    assert s.state[0] == FAILED and s.state[1] == BLOCKED and s.state[2] == BLOCKED
    assert s.complete("w1", 3, tok_j)
    assert s.finished()
    t = s.totals()
    assert (t[DONE], t[FAILED], t[BLOCKED]) == (1, 1, 2)
    assert s.failures[0].tb == "Traceback..."


def test_stale_failure_is_ignored() -> None:
    s, _ = sched_for([[]])
    (i, tok), = s.lease("w1", 1)
    assert s.fail("w1", i, tok + 99, {"type": "E"}) == "stale"
    assert s.state[i] == RUNNING


def test_resume_keeps_ready_tasks_and_refuses_taken_ones() -> None:
    s, _ = sched_for([[], []])
    (i, tok), = s.lease("w2", 1)
    s.add_worker("w3")
    kept, lost = s.resume("w3", [0, 1])
    assert lost == [i]
    assert [k for k, _ in kept] == [1]
    assert s.state[1] == RUNNING


def test_counts_by_function_track_transitions() -> None:
    clock = Clock()
    s = Scheduler(make_graph([[], [], [0]], nfuncs=2), clock=clock)
    s.start([False, False, False])
    s.add_worker("w")
    assert s.counts[0][READY] == 1 and s.counts[1][READY] == 1 and s.counts[0][WAITING] == 1
    (i, tok), = s.lease("w", 1)
    assert s.counts[0][RUNNING] == 1
    s.complete("w", i, tok)
    assert s.counts[0][DONE] == 1 and s.counts[0][READY] == 1


def test_invalidate_reruns_downstream() -> None:
    s, _ = sched_for([[], [0], [1]])
    for _ in range(3):
        (i, tok), = s.lease("w1", 1)
        s.complete("w1", i, tok)
    assert s.all_done()
    assert s.invalidate([1]) == 2
    assert s.state[0] == DONE and s.state[1] == READY and s.state[2] == WAITING
    assert not s.finished()


@pytest.mark.parametrize("n", [1, 1000])
def test_dependents_csr(n: int) -> None:
    deps = [[]] + [[0] for _ in range(n)]
    s, _ = sched_for(deps)
    assert s.rdep_start[1] - s.rdep_start[0] == n
    assert array("I", s.rdep_idx[: n]) == array("I", range(1, n + 1))


# -- follow-on leases -------------------------------------------------------------------------


def follow_sched(deps: list[list[int]], **kw: object) -> tuple[Scheduler, Clock]:
    s, clock = sched_for(deps, **kw)
    s.workers["w1"].follow = True
    return s, clock


def chain(n: int) -> list[list[int]]:
    return [[]] + [[i] for i in range(n - 1)]


def test_chain_is_leased_ahead_to_the_worker_that_holds_its_start() -> None:
    s, _ = follow_sched(chain(6))
    got = s.lease("w1", 4)
    assert [i for i, _ in got] == [0, 1, 2, 3]
    assert [s.after(i) for i, _ in got] == [[], [0], [1], [2]]
    assert s.state[1] == RUNNING and s.remaining[1] == 1
    assert s.lease("w2", 4) == []  # nothing another worker could run yet
    toks = dict(got)
    for i in range(4):
        assert s.complete("w1", i, toks[i])
    rest = s.lease("w1", 4)
    assert [i for i, _ in rest] == [4, 5]
    for i, tok in rest:
        assert s.complete("w1", i, tok)
    assert s.all_done() and s.completed == 6


def test_a_worker_without_follow_gets_only_ready_tasks() -> None:
    s, _ = sched_for(chain(3))
    assert [i for i, _ in s.lease("w1", 4)] == [0]


def test_follow_on_needs_every_unfinished_input_on_the_same_worker() -> None:
    # 2 depends on 0 and 1; 3 depends on 0 only
    s, _ = follow_sched([[], [], [0, 1], [0]])
    s.workers["w2"].follow = True
    (a, _), = s.lease("w1", 1)  # 0, and its follow-on 3 does not fit in n=1
    assert a == 0
    (b, _), = s.lease("w2", 1)
    assert b == 1
    got = [i for i, _ in s.lease("w1", 5)]
    assert got == [3]  # 2 needs 1, held by w2
    assert s.state[2] == WAITING


def test_done_in_the_reverse_order_still_counts_once() -> None:
    s, _ = follow_sched(chain(3))
    toks = dict(s.lease("w1", 3))
    assert s.complete("w1", 1, toks[1])  # reported before its input (another batch)
    assert s.complete("w1", 0, toks[0])
    assert s.complete("w1", 2, toks[2])
    assert s.all_done() and s.completed == 3


def test_losing_the_worker_puts_follow_ons_back_to_waiting_without_an_attempt() -> None:
    s, _ = follow_sched(chain(4), max_attempts=2)
    s.lease("w1", 4)
    s.remove_worker("w1")
    assert list(s.state) == [READY, WAITING, WAITING, WAITING]
    assert s.lost_count == {0: 1}
    assert s.reclaimed == 1
    assert s.totals()[RUNNING] == 0


def test_an_expired_input_revokes_its_follow_ons() -> None:
    s, clock = follow_sched(chain(3))
    s.lease("w1", 3)
    clock.t += 31
    s.expire()
    assert list(s.state) == [READY, WAITING, WAITING]
    assert not s.leases and not s.workers["w1"].leases
    # w2 picks up the start, alone (it lost a worker); the rest follows it there
    s.workers["w2"].follow = True
    (i, tok), = s.lease("w2", 3)
    assert i == 0
    assert s.complete("w2", 0, tok)
    assert [i for i, _ in s.lease("w2", 3)] == [1, 2]


def test_a_failed_input_revokes_and_then_blocks_its_follow_ons() -> None:
    s, _ = follow_sched(chain(3), retries=1)
    toks = dict(s.lease("w1", 3))
    err = {"type": "E", "msg": "m", "tb": "", "kind": "exception"}
    assert s.fail("w1", 0, toks[0], err) == "retry"
    assert list(s.state) == [READY, WAITING, WAITING]
    # the worker then finds the follow-ons' input missing and gives them back: stale now
    skip = {"type": "Skipped", "msg": "", "tb": "", "kind": "skipped"}
    assert s.fail("w1", 1, toks[1], skip) == "stale"
    toks = dict(s.lease("w1", 3))
    assert s.fail("w1", 0, toks[0], err) == "failed"
    assert list(s.state) == [FAILED, BLOCKED, BLOCKED]
    assert s.finished()


def test_a_skipped_follow_on_is_not_an_attempt() -> None:
    s, _ = follow_sched(chain(2), retries=0)
    toks = dict(s.lease("w1", 2))
    assert s.complete("w1", 0, toks[0])
    skip = {"type": "Skipped", "msg": "", "tb": "", "kind": "skipped"}
    assert s.fail("w1", 1, toks[1], skip) == "retry"
    assert s.state[1] == READY and not s.error_count and not s.failures
    (i, tok), = s.lease("w2", 1)
    assert i == 1 and s.complete("w2", 1, tok) and s.all_done()


def test_a_late_done_of_a_revoked_follow_on_counts() -> None:
    s, clock = follow_sched(chain(2))
    toks = dict(s.lease("w1", 2))
    clock.t += 31
    s.expire()
    assert s.complete("w1", 0, toks[0]) is False  # verified in the store by the caller
    assert s.accept_late("w1", 0)
    assert s.complete("w1", 1, toks[1]) is False
    assert s.accept_late("w1", 1)
    assert s.all_done() and s.completed == 2


def test_fan_out_is_leased_ahead_in_slices() -> None:
    s, _ = follow_sched([[]] + [[0]] * 10)
    first = [i for i, _ in s.lease("w1", 4)]
    assert first == [0, 1, 2, 3]
    assert [i for i, _ in s.lease("w1", 4)] == [4, 5, 6, 7]
    assert [i for i, _ in s.lease("w1", 4)] == [8, 9, 10]


def test_a_task_that_lost_its_worker_runs_alone_next_time() -> None:
    s, _ = sched_for([[]] * 6, max_attempts=2)
    assert [i for i, _ in s.lease("w1", 3)] == [0, 1, 2]
    s.remove_worker("w1")  # one of 0, 1, 2 killed it; nobody knows which
    s.add_worker("w3")
    # w2 gets the innocent rest first, the suspects only one at a time while it holds nothing
    got = s.lease("w2", 5)
    assert [i for i, _ in got] == [3, 4, 5]
    (a, ta), = s.lease("w3", 5)  # w3 holds nothing: one suspect, alone
    assert a in (0, 1, 2)
    assert s.lease("w3", 5) == []  # nothing more while it runs it
    for i, tok in got:
        s.complete("w2", i, tok)
    (b, tb), = s.lease("w2", 5)
    assert b in (0, 1, 2) and b != a
    s.remove_worker("w3")  # a was the killer: it alone is failed
    assert s.state[a] == FAILED and s.state[b] == RUNNING
    s.complete("w2", b, tb)
    s.add_worker("w4")
    (c, tc), = s.lease("w4", 5)
    assert s.complete("w4", c, tc)
    assert s.totals()[DONE] == 5 and s.totals()[FAILED] == 1
