"""The lease decisions that used to live in the coordinator, now the Scheduler's, on its clock:
resume grace, serving order, the follow flag, the carry-over past a barrier, fail-fast and
failure kinds, lease expiry. Method calls and a fake clock: no socket, no sleep."""

from __future__ import annotations

from ajug.graph import Function, Graph
from ajug.scheduler import (
    DONE,
    FAILED,
    READY,
    RUNNING,
    WAITING,
    FailureKind,
    LeaseRequest,
    Outcome,
    Scheduler,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_graph(deps: list[list[int]], keys: list[str] | None = None) -> Graph:
    g = Graph()
    g.functions = [Function(0, "m.f", "src", b"")]
    for i, ds in enumerate(deps):
        g.keys.append(keys[i] if keys else f"{i:040x}")
        g.index[g.keys[-1]] = i
        g.fn.append(0)
        g.dep_idx.extend(ds)
        g.dep_start.append(len(g.dep_idx))
        g.args.append(b"")
    return g


def sched_for(deps: list[list[int]], clock: Clock | None = None, **kw: object) -> Scheduler:
    s = Scheduler(make_graph(deps), clock=clock or Clock(), lease_ttl_s=30, **kw)  # type: ignore[arg-type]
    s.start([False] * len(deps))
    s.add_worker("w1")
    s.add_worker("w2")
    return s


ERR = {"type": "ValueError", "msg": "boom", "tb": "", "kind": "exception"}


# -- resume grace ------------------------------------------------------------------------------
def test_resume_grace_holds_leases_but_not_resumes_until_the_clock_passes_it() -> None:
    clock = Clock()
    s = sched_for([[], [], []], clock)
    assert not s.resuming()  # a coordinator that did not take over leases at once
    s.hold_for_resume(5.0)
    assert s.resuming()
    kept, lost = s.resume("w1", [1])  # a worker of the previous coordinator says it runs 1
    assert [i for i, _ in kept] == [1] and lost == []
    waiting = [LeaseRequest("w2", 3)]
    assert s.serve_reporter("w2", waiting) == [] and waiting[0].leases == []
    clock.t += 4.9
    assert s.resuming()
    clock.t += 0.2
    assert not s.resuming()
    served = s.serve_reporter("w2", waiting)
    assert served == waiting and sorted(i for i, _ in waiting[0].leases) == [0, 2]  # not 1


def test_the_grace_is_carried_past_a_barrier() -> None:
    clock = Clock()
    old = sched_for([[]], clock)
    old.hold_for_resume(5.0)
    new = Scheduler(make_graph([[], []]), clock=clock)
    new.start_after_barrier([False, False], old)
    assert new.resuming()
    clock.t += 6
    assert not new.resuming()


# -- serving order -----------------------------------------------------------------------------
def test_the_reporting_worker_is_served_first_with_what_its_report_made_ready() -> None:
    s = sched_for([[], [0], [0]])  # 1 and 2 need 0
    (i, tok), = s.lease("w1", 1)
    other, mine, mine_too = LeaseRequest("w2", 5), LeaseRequest("w1", 1), LeaseRequest("w1", 5)
    assert s.lease("w2", 5) == []  # nothing ready while 0 runs: w2 would wait
    assert s.complete("w1", i, tok)
    served = s.serve_reporter("w1", [other, mine, mine_too])
    assert served == [mine, mine_too]
    assert [j for j, _ in mine.leases] == [1] and [j for j, _ in mine_too.leases] == [2]
    assert other.leases == []  # woken afterwards for what is left: nothing
    assert s.lease("w2", 5) == []


def test_a_request_already_served_is_not_served_twice() -> None:
    s = sched_for([[], []])
    req = LeaseRequest("w1", 1, leases=[(0, 99)])
    assert s.serve_reporter("w1", [req]) == [] and req.leases == [(0, 99)]


# -- the follow flag ---------------------------------------------------------------------------
def test_the_follow_flag_of_the_latest_request_counts() -> None:
    s = sched_for([[], [0], [1]])
    s.set_follow("w1", True)
    assert [i for i, _ in s.lease("w1", 3)] == [0, 1, 2]  # the chain, leased ahead
    assert s.after(2) == [1] and s.state[2] == RUNNING
    s.set_follow("w2", False)
    s.set_follow("gone", True)  # a worker that left meanwhile: nothing to set
    assert not s.workers["w2"].follow
    s2 = sched_for([[], [0], [1]])
    s2.set_follow("w1", True)
    s2.set_follow("w1", False)
    assert [i for i, _ in s2.lease("w1", 3)] == [0]


# -- barrier carry-over ------------------------------------------------------------------------
def test_past_a_barrier_workers_counters_and_vanished_counts_carry_over() -> None:
    keys = [f"{i:040x}" for i in range(4)]
    old = Scheduler(make_graph([[], [], []], keys[:3]), clock=Clock())
    old.start([False] * 3)
    old.add_worker("w1", "h", 7, "local0")
    for i, tok in old.lease("w1", 3):
        assert old.complete("w1", i, tok)
    old.lost_results([2])  # vanished once, then done again
    (i, tok), = old.lease("w1", 1)
    assert old.complete("w1", i, tok)
    assert (old.completed, old.vanished, old.recomputed) == (4, 1, 1)
    # the new graph: the same three tasks, in another order, and one more past the barrier;
    # the store lost task 0's result between the two loads
    new = Scheduler(make_graph([[], [], [], [1]], [keys[2], keys[0], keys[1], keys[3]]),
                    clock=Clock())
    done = [True, False, True, False]
    gone = new.start_after_barrier(done, old)
    assert gone == [1]  # old task 0, done before the barrier, missing now: computed again
    assert new.state[1] == READY and new.state[0] == DONE and new.state[2] == DONE
    assert new.state[3] == WAITING  # it waits for the vanished one
    assert new.workers is old.workers and new.workers["w1"].leases == set()
    assert (new.completed, new.vanished) == (4, 2)
    assert new.vanish_count[0] == 1 and new.vanish_count[1] == 1  # by key, not by index


def test_a_restart_confirms_what_the_store_holds_before_calling_it_done() -> None:
    s = Scheduler(make_graph([[], [], []]), clock=Clock())
    s.start([True, False, True], confirm=True)
    assert list(s.unverified) == [0, 2]
    t = Scheduler(make_graph([[], [], []]), clock=Clock())
    t.start([True, False, True])
    assert list(t.unverified) == []


# -- fail-fast and failure kinds ---------------------------------------------------------------
def test_fail_fast_halts_at_the_first_task_failed_for_good_not_at_a_retry() -> None:
    s = sched_for([[]], retries=1, fail_fast=True)
    (i, tok), = s.lease("w1", 1)
    assert s.fail("w1", i, tok, ERR) is Outcome.RETRY and not s.halted
    (j, tok), = s.lease("w1", 1)
    assert j == i
    assert s.fail("w1", j, tok, ERR) is Outcome.FAILED and s.halted
    assert s.failures[j].kind == FailureKind.EXCEPTION and type(s.failures[j].kind) is str


def test_without_fail_fast_a_failure_does_not_halt() -> None:
    s = sched_for([[], []])
    (i, tok), = s.lease("w1", 1)
    assert s.fail("w1", i, tok, ERR) == "failed" and not s.halted
    assert s.fail("w1", i, tok, ERR) is Outcome.STALE


def test_a_skipped_follow_on_is_no_failure_and_no_halt() -> None:
    s = sched_for([[], [0]], fail_fast=True)
    s.set_follow("w1", True)
    ((a, ta), (b, tb)) = s.lease("w1", 2)
    skip = {"type": "Skipped", "msg": "", "tb": "", "kind": FailureKind.SKIPPED.value}
    assert s.fail("w1", b, tb, skip) is Outcome.RETRY
    assert s.state[b] == WAITING and not s.halted and b not in s.error_count


# -- lease expiry ------------------------------------------------------------------------------
def test_a_lease_expires_on_the_clock_and_renewal_pushes_the_deadline() -> None:
    clock = Clock()
    s = sched_for([[]], clock, max_attempts=2)
    (i, tok), = s.lease("w1", 1)
    clock.t += 20
    assert s.renew("w1", [(i, tok)]) == []
    clock.t += 29
    assert s.expire() == []  # 49 s after the lease, 29 after the renewal
    clock.t += 2
    assert s.expire() == [i]
    assert s.state[i] == READY and s.reclaimed == 1
    assert s.renew("w1", [(i, tok)]) == [i]  # the worker hears it lost it
    (j, tok2), = s.lease("w2", 1)
    assert j == i  # a suspect goes alone to a worker holding nothing
    clock.t += 31
    assert s.expire() == [i]
    assert s.state[i] == FAILED and s.failures[i].kind == FailureKind.WORKER_LOST
