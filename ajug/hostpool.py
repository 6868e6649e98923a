"""What each worker host offers, what its tasks hold, and whether a task fits.

``ajug work --resources gpus=2,memory=64GiB`` declares what one host (one ``ajug work``
invocation: all its ``-j`` processes together) offers; a task's resources (``ajug.taskopts``)
are held on its host from its lease until its report. Names a task does not mention are not
held: a plain task takes one of the host's worker processes and nothing else, as in dask.
Pure bookkeeping: the Scheduler asks, the coordinator tells it who connected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def describe(needs: Mapping[str, float]) -> str:
    """``gpus>=1, memory>=64 GiB`` for the status line of a task no host can hold."""
    return ", ".join(f"{k}>={_amount(k, v)}" for k, v in sorted(needs.items()))


def _amount(name: str, v: float) -> str:
    if name == "memory" and v >= 1024:
        for unit, size in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2),
                           ("KiB", 1024)):
            if v >= size:
                return f"{v / size:g} {unit}"
    return f"{v:g}"


class HostPools:
    """Offers and holdings per host group (the id a worker gives in its hello)."""

    def __init__(self) -> None:
        self.offers: dict[str, dict[str, float]] = {}
        self.held: dict[str, dict[str, float]] = {}
        self.members: dict[str, int] = {}  # connected workers per group

    def join(self, group: str, offers: Mapping[str, float]) -> None:
        """A worker of ``group`` connected. The group's offer is the latest one declared."""
        self.offers[group] = dict(offers)
        self.held.setdefault(group, {})
        self.members[group] = self.members.get(group, 0) + 1

    def leave(self, group: str) -> None:
        n = self.members.get(group, 0) - 1
        if n > 0:
            self.members[group] = n
            return
        self.members.pop(group, None)
        self.offers.pop(group, None)
        self.held.pop(group, None)

    def can_hold(self, group: str, needs: Mapping[str, float]) -> bool:
        """Could the host ever run this task (with nothing else held)?"""
        offer = self.offers.get(group, {})
        return all(offer.get(k, 0.0) >= v for k, v in needs.items())

    def fits(self, group: str, needs: Mapping[str, float]) -> bool:
        """Can the host run it now, beside what its running tasks hold?"""
        offer = self.offers.get(group, {})
        held = self.held.get(group, {})
        return all(offer.get(k, 0.0) - held.get(k, 0.0) >= v - 1e-9 for k, v in needs.items())

    def room(self, group: str, needs: Mapping[str, float]) -> int:
        """How many tasks needing this the host could start now, beside what it holds."""
        offer = self.offers.get(group, {})
        held = self.held.get(group, {})
        n = min((int((offer.get(k, 0.0) - held.get(k, 0.0) + 1e-9) // v)
                 for k, v in needs.items() if v > 0), default=0)
        return max(0, n)

    def take(self, group: str, needs: Mapping[str, float]) -> None:
        held = self.held.setdefault(group, {})
        for k, v in needs.items():
            held[k] = held.get(k, 0.0) + v

    def release(self, group: str, needs: Mapping[str, float]) -> None:
        held = self.held.get(group)
        if held is None:  # the host left: nothing of it is held any more
            return
        for k, v in needs.items():
            left = held.get(k, 0.0) - v
            if left > 1e-9:
                held[k] = left
            else:
                held.pop(k, None)

    def anyone_can_hold(self, needs: Mapping[str, float]) -> bool:
        return any(self.can_hold(g, needs) for g in self.offers)

    def unplaceable(self, needs_list: Iterable[Mapping[str, float]]) -> list[str]:
        """Descriptions of the needs no connected host can ever hold (for ``status``)."""
        out = {describe(n) for n in needs_list if n and not self.anyone_can_hold(n)}
        return sorted(out)
