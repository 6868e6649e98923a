"""Ready order by priority, and the per-host resource bookkeeping (decisions only)."""

from __future__ import annotations

import pytest

from ajug.hostpool import HostPools, describe
from ajug.readyqueue import ReadyQueue

GiB = 1024 ** 3


def drain(q: ReadyQueue) -> list[int]:
    out = []
    while q:
        out.append(q.popleft())
    return out


def test_without_priorities_it_is_a_deque() -> None:
    q = ReadyQueue()
    q.extend([3, 4, 5])
    q.appendleft(2)
    q.append(6)
    q.extendleft(reversed([0, 1]))  # dependents of a finished task go first, in order
    assert len(q) == 7 and list(q) == [0, 1, 2, 3, 4, 5, 6]
    assert drain(q) == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(IndexError):
        q.popleft()


def test_higher_priority_first_ties_in_graph_order() -> None:
    # buckets: 0 (priority 0), 1 (priority 5), 2 (priority -1), 3 (priority 10), 4 (priority 0)
    bucket_of = [0, 4, 1, 0, 1, 2, 3]
    q = ReadyQueue(bucket_of, priority=[0, 5, -1, 10, 0])
    q.extend(range(7))
    assert drain(q) == [6, 2, 4, 0, 1, 3, 5]


def test_front_insertions_stay_within_their_priority() -> None:
    q = ReadyQueue([0, 0, 0, 1, 1], priority=[0, 3])
    q.extend([0, 1, 3])
    q.extendleft(reversed([2, 4]))  # newly ready: to the front of their own bucket
    assert drain(q) == [4, 3, 2, 0, 1]


def test_a_bucket_the_asker_cannot_hold_is_skipped_whole() -> None:
    # bucket 1 needs a GPU and has the higher priority; the asker has none
    q = ReadyQueue([1, 0, 1, 0], priority=[0, 9])
    q.extend(range(4))
    no_gpu = lambda k: k != 1  # noqa: E731
    assert q.pop(no_gpu) == 1 and q.pop(no_gpu) == 3 and q.pop(no_gpu) is None
    assert len(q) == 2 and q.waiting_buckets() == [1]
    assert drain(q) == [0, 2]


def test_a_host_never_holds_more_than_it_offers() -> None:
    p = HostPools()
    p.join("a", {"gpus": 1, "cpus": 4})
    p.join("a", {"gpus": 1, "cpus": 4})  # a second process of the same host: same offer
    gpu = {"gpus": 1.0}
    assert p.fits("a", gpu)
    p.take("a", gpu)
    assert not p.fits("a", gpu) and p.can_hold("a", gpu)
    assert p.fits("a", {})  # a plain task still runs beside it
    p.release("a", gpu)
    assert p.fits("a", gpu)
    p.leave("a")
    assert p.can_hold("a", gpu)  # one process of the host is still there
    p.leave("a")
    assert not p.can_hold("a", gpu) and p.offers == {}
    p.release("a", gpu)  # a report after the host left changes nothing


def test_needs_no_host_can_hold_are_described() -> None:
    p = HostPools()
    p.join("small", {"cpus": 2, "memory": 8 * GiB})
    big = {"memory": 1024 ** 4}
    assert not p.anyone_can_hold(big)
    assert p.unplaceable([big, {"cpus": 1}, {}, big]) == ["memory>=1 TiB"]
    assert describe({"gpus": 1, "memory": 64 * GiB}) == "gpus>=1, memory>=64 GiB"


# -- in the Scheduler: method calls, a fake clock ----------------------------------------------

from array import array  # noqa: E402

from ajug.graph import Function, Graph  # noqa: E402
from ajug.scheduler import FAILED, READY, Outcome, Scheduler  # noqa: E402
from ajug.taskopts import NO_OPTIONS, make_options  # noqa: E402


def graph_with(opts: list[dict[str, object]]) -> Graph:
    """Independent tasks; task i has options ``opts[i]`` (make_options keywords)."""
    g = Graph()
    g.functions = [Function(0, "m.f", "src", b"")]
    distinct: list[object] = [NO_OPTIONS]
    of = array("I")
    for i, o in enumerate(opts):
        g.keys.append(f"{i:040x}")
        g.index[g.keys[-1]] = i
        g.fn.append(0)
        g.dep_start.append(len(g.dep_idx))
        g.args.append(b"")
        to = make_options(**o) if o else NO_OPTIONS  # type: ignore[arg-type]
        if to not in distinct:
            distinct.append(to)
        of.append(distinct.index(to))
    g.options = distinct  # type: ignore[assignment]
    g.opt_of = of
    return g


def sched(opts: list[dict[str, object]], **kw: object) -> Scheduler:
    s = Scheduler(graph_with(opts), clock=lambda: 1000.0, **kw)  # type: ignore[arg-type]
    s.start([False] * len(opts))
    return s


def keys(s: Scheduler, out: list[tuple[int, int]]) -> list[int]:
    return [i for i, _ in out]


def test_with_one_worker_a_later_high_priority_task_runs_first() -> None:
    s = sched([{}, {}, {}, {"priority": 5}, {"priority": -1}, {}])
    s.add_worker("w")
    order = []
    while True:
        got = s.lease("w", 1)
        if not got:
            break
        order += keys(s, got)
        s.complete("w", *got[0])
    assert order == [3, 0, 1, 2, 5, 4]


def test_a_host_with_one_gpu_never_holds_two_gpu_tasks() -> None:
    gpu = {"resources": {"gpus": 1}}
    s = sched([gpu, gpu, {}, {}, gpu])
    for w in ("a1", "a2", "a3", "a4"):  # one host, -j 4
        s.add_worker(w)
        s.set_offer(w, "hostA", {"gpus": 1, "cpus": 4})
    got = {w: s.lease(w, 1) for w in ("a1", "a2", "a3", "a4")}
    gpu_tasks = [i for w in got for i, _ in got[w] if i in (0, 1, 4)]
    assert len(gpu_tasks) == 1  # one GPU: one GPU task at a time
    assert sorted(i for w in got for i, _ in got[w]) == sorted([gpu_tasks[0], 2, 3])
    holder = next(w for w in got if got[w] and got[w][0][0] == gpu_tasks[0])
    idle = next(w for w in got if not got[w])
    assert s.lease(idle, 1) == []  # the GPU is held: the other GPU tasks wait
    s.complete(holder, *got[holder][0])
    assert keys(s, s.lease(idle, 1))[0] in (0, 1, 4)  # released on the report


def test_resources_are_released_when_the_holder_is_lost() -> None:
    s = sched([{"resources": {"gpus": 1}}, {"resources": {"gpus": 1}}])
    for w in ("a", "b"):
        s.add_worker(w)
        s.set_offer(w, "host", {"gpus": 1})
    assert len(s.lease("a", 2)) == 1
    assert s.lease("b", 1) == []
    s.remove_worker("a")
    assert len(s.lease("b", 1)) == 1


def test_a_task_no_worker_can_hold_is_reported_and_the_rest_runs() -> None:
    tib = {"resources": {"memory": "1TiB"}}
    s = sched([tib, {}, {}])
    s.add_worker("w")
    s.set_offer("w", "small", {"memory": 16 * GiB, "cpus": 2})
    done = []
    while (got := s.lease("w", 1)):
        done += keys(s, got)
        s.complete("w", *got[0])
    assert done == [1, 2]
    assert s.state[0] == READY
    assert s.unplaceable() == [{"needs": "memory>=1 TiB", "tasks": 1}]
    s.add_worker("big")
    s.set_offer("big", "bighost", {"memory": 2 * 1024 ** 4})
    assert s.unplaceable() == []
    assert keys(s, s.lease("big", 1)) == [0]


def test_a_worker_that_offers_nothing_gets_only_tasks_that_need_nothing() -> None:
    s = sched([{"resources": {"gpus": 1}}, {}])
    s.add_worker("old")  # no offer (an older worker, or before its first request)
    assert keys(s, s.lease("old", 5)) == [1]


def test_retries_per_task_over_the_run_default() -> None:
    err = {"type": "E", "msg": "x", "tb": "", "kind": "timeout"}
    s = sched([{"retries": 1}, {}], retries=0)
    s.add_worker("w")
    (a, ta), (b, tb) = s.lease("w", 2)
    assert s.fail("w", a, ta, err) == Outcome.RETRY  # its own retries=1
    assert s.fail("w", b, tb, err) == Outcome.FAILED  # the run's default: none
    (a2, ta2), = s.lease("w", 1)
    assert a2 == a and s.fail("w", a, ta2, err) == Outcome.FAILED
    assert s.state[a] == FAILED and s.failures[a].kind == "timeout"


def test_timeouts_per_task_over_the_run_default() -> None:
    s = sched([{"timeout": 2}, {}], task_timeout_s=60.0)
    assert s.timeout_of(0) == 2 and s.timeout_of(1) == 60.0
    assert sched([{}]).timeout_of(0) is None


def test_waiting_shapes_count_ready_tasks_per_need_and_what_connected_hosts_can_start() -> None:
    gpu, two = {"resources": {"gpus": 1}}, {"resources": {"cpus": 2}}
    s = sched([gpu, gpu, {"resources": {"gpus": 1}, "priority": 3}, two, two, two, {}])
    assert sorted(s.waiting_shapes(), key=str) == [({"cpus": 2.0}, 3, 0), ({"gpus": 1.0}, 3, 0)]
    # a host of three processes offering 4 CPUs: two cpus=2 tasks at once, no GPU task
    for w in ("a", "b", "c"):
        s.add_worker(w)
        s.set_offer(w, "host", {"cpus": 4})
    assert dict((tuple(n), (r, f)) for n, r, f in s.waiting_shapes()) == {
        ("cpus",): (3, 2), ("gpus",): (3, 0)}
    assert keys(s, s.lease("a", 1)) == [3]  # holds 2 CPUs, and a is no longer idle
    assert dict((tuple(n), (r, f)) for n, r, f in s.waiting_shapes()) == {
        ("cpus",): (2, 1), ("gpus",): (3, 0)}
    # three idle processes but one GPU: one GPU task startable
    s.add_worker("g1")
    s.add_worker("g2")
    s.set_offer("g1", "gpuhost", {"gpus": 1})
    s.set_offer("g2", "gpuhost", {"gpus": 1})
    assert dict((tuple(n), (r, f)) for n, r, f in s.waiting_shapes())[("gpus",)] == (3, 1)
    assert sched([{}, {}]).waiting_shapes() == []
