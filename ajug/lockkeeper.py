"""The coordinator's hold on its store's owner lock: one coordinator hands out work at a time.

A coordinator grants or extends a lease only while its lock is *fresh*: renewed less than a
renewal period (a third of the lock's TTL) ago. When it is older — the coordinator was frozen
(SIGSTOP, swapping), its store was unreachable, or it simply has not renewed yet — the lock is
renewed first, and whatever asked for a lease waits. A renewal that finds the lock taken, or
that keeps failing for a whole TTL, means the lock is lost: ``lost`` says so in one line and the
coordinator stops.

Why that is enough: a lease granted or renewed at time t lives until t + lease TTL, and t is at
most a renewal period after the last renewal R. Another coordinator can take the lock only once
it expires, at R + lock TTL. With the lock TTL at least twice the lease TTL (``lock_ttl_for``),
every lease of the old coordinator has expired by then. What this cannot cover: a store that
loses the lock itself (redis restarted without persistence) lets a second coordinator start at
once, and the first one finds out at its next renewal (within a renewal period); and the clocks
of two hosts must roughly agree (the lock's expiry is wall-clock time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .errors import StoreError, StoreLocked
from .stores.base import OwnerLock

log = logging.getLogger(__name__)

#: A lock lives at least this long (seconds), whatever the lease TTL.
MIN_LOCK_TTL_S = 10.0
#: After a failed renewal (store unreachable), wait this long before the next try.
RETRY_S = 0.2


def lock_ttl_for(lease_ttl_s: float) -> float:
    """The owner lock's TTL: at least twice the lease TTL (see the module docstring)."""
    return max(2 * lease_ttl_s, MIN_LOCK_TTL_S)


class LockKeeper:
    """Renews ``lock`` and tells whether the coordinator may hand out work now."""

    def __init__(self, lock: OwnerLock, ttl_s: float, where: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = lock
        self.ttl_s = ttl_s
        self.period_s = max(ttl_s / 3, 0.5)
        self.where = where  # the store, for messages
        self.clock = clock
        self.renewed_at = float("-inf")
        #: one line saying why the lock is lost, once it is
        self.lost: str | None = None
        self._renewing: asyncio.Future[bool] | None = None

    async def acquire(self) -> None:
        t0 = self.clock()
        await asyncio.get_running_loop().run_in_executor(None, self.lock.acquire)
        self.renewed_at = t0

    def fresh(self) -> bool:
        return self.lost is None and self.clock() - self.renewed_at < self.period_s

    async def ensure(self) -> bool:
        """Fresh now, renewing first if need be (waiting while the store is unreachable);
        False once the lock is lost."""
        while not self.fresh():
            if self.lost is not None:
                return False
            if not await self.renew():
                await asyncio.sleep(RETRY_S)
        return True

    async def tick(self) -> None:
        """From the coordinator's main loop: renew once half the renewal period has passed,
        so that lease requests rarely wait for a renewal."""
        if self.lost is None and self.clock() - self.renewed_at >= self.period_s / 2:
            await self.renew()

    async def renew(self) -> bool:
        """One renewal at a time (callers share the one in flight); True if it succeeded."""
        if self._renewing is None:
            self._renewing = asyncio.ensure_future(self._renew())
        fut = self._renewing
        try:
            await asyncio.shield(fut)
        finally:
            if self._renewing is fut and fut.done():
                self._renewing = None
        return self.lost is None and bool(fut.result())

    async def _renew(self) -> bool:
        t0 = self.clock()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.lock.renew)
        except StoreLocked as e:
            holder = e.holder or "another process"
            self.lost = (f"lost the owner lock of store {self.where}: {holder} serves it now, so "
                         "this coordinator stops (its workers exit, or follow the new one if it "
                         "listens on the same address)")
            return False
        except StoreError as e:
            if self.clock() - self.renewed_at >= self.ttl_s:
                self.lost = (f"could not renew the owner lock of store {self.where} for "
                             f"{self.ttl_s:g}s ({e}): another coordinator may serve it now, so "
                             "this coordinator stops")
            else:
                log.warning("cannot renew the owner lock of store %s (%s): handing out no work "
                            "until it is renewed", self.where, e)
            return False
        self.renewed_at = max(self.renewed_at, t0)
        return True

    async def release(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.lock.release)
        except StoreError as e:
            log.warning("%s", e)
