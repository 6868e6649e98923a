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
    prio = [0, 0, 5, 0, 5, -1, 10]
    q = ReadyQueue(prio)
    q.extend(range(7))
    assert drain(q) == [6, 2, 4, 0, 1, 3, 5]


def test_front_insertions_stay_within_their_priority() -> None:
    prio = [0, 0, 0, 3, 3]
    q = ReadyQueue(prio)
    q.extend([0, 1, 3])
    q.extendleft(reversed([2, 4]))  # newly ready: to the front of their own priority
    assert drain(q) == [4, 3, 2, 0, 1]


def test_for_priorities_uses_the_plain_queue_when_all_are_zero() -> None:
    assert ReadyQueue.for_priorities([0, 0], [0, 1, 1]).prio_of is None
    assert ReadyQueue.for_priorities([0, 7], None).prio_of is None
    q = ReadyQueue.for_priorities([0, 7], [0, 1, 0])
    q.extend([0, 1, 2])
    assert drain(q) == [1, 0, 2]


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
