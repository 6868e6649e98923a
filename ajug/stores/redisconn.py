"""The redis store's boundary: its two clients, and one place where every exchange is retried
and redis's errors become ajug's.

Every operation goes through ``_call``: connection errors and timeouts are retried with backoff
for up to ``retry_s`` seconds (a redis restart is survived), then become ``StoreUnreachable``;
redis's OOM becomes ``StoreFull``. An outage is said in one line when it begins and one when it
ends, not once per retry.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import StoreError, StoreFull, StoreUnreachable, UsageError

log = logging.getLogger("ajug.stores.redis")
T = TypeVar("T")

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
_RETRYABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
)


_REDIS_PY_OPTIONS = set(inspect.signature(redis.Redis.__init__).parameters) - {"self"}


class Parts:
    """One redis argument sent as the buffers it is made of, one after the other, never joined
    into one ``bytes`` (an encoded result: its header, its pickle stream, the array's own
    memory). Only the zero-copy client (``r_bulk``) can send it."""

    __slots__ = ("views", "nbytes")

    def __init__(self, pieces: Any) -> None:
        self.views = [v for v in (memoryview(p).cast("B") for p in pieces) if len(v)]
        self.nbytes = sum(len(v) for v in self.views)

    def __len__(self) -> int:
        return self.nbytes

    def join(self) -> bytes:
        return b"".join(self.views)


def _zero_copy_packer() -> Any:
    """redis-py's pure-Python command packer, which sends a large argument (a chunk: a view of
    the caller's array) as is, and a ``Parts`` argument as its buffers; hiredis's packer copies
    every command into one new ``bytes``, which makes saving big values about three times
    slower. Replies are still parsed by hiredis.
    """
    try:
        from redis.connection import AbstractConnection, Encoder, PythonRespSerializer

        if "command_packer" not in inspect.signature(AbstractConnection.__init__).parameters:
            return None

        class PartsSerializer(PythonRespSerializer):
            def pack(self, *args: Any) -> list[Any]:
                if not any(type(a) is Parts for a in args):
                    return super().pack(*args)
                if isinstance(args[0], str):  # "CONFIG GET" is two arguments (as redis-py)
                    args = tuple(args[0].encode().split()) + args[1:]
                out: list[Any] = []
                buff = b"*%d\r\n" % len(args)
                for arg in args:
                    if type(arg) is Parts:
                        out.append(buff + b"$%d\r\n" % arg.nbytes)
                        out += arg.views
                        buff = b"\r\n"
                    else:
                        a = self.encode(arg)
                        buff = b"".join((buff, b"$%d\r\n" % len(a), a, b"\r\n"))
                out.append(buff)
                return out

        return PartsSerializer(6000, Encoder("utf-8", "strict", False).encode)
    except (ImportError, TypeError, ValueError):  # another redis-py: its default packer is fine
        return None


def _reason(e: BaseException) -> str:
    """A connection error in a few words: "connection refused", "timed out"..."""
    text = str(e)
    low = text.lower()
    for words in ("connection refused", "timed out", "name or service not known",
                  "no route to host", "connection reset"):
        if words in low:
            return words
    return text.rstrip(".") or type(e).__name__


class RedisBoundary:
    """Mixed into RedisStore: the clients (``r``: hiredis's fast packer for the many small
    commands; ``r_bulk``: a zero-copy packer for commands that carry big values) and ``_call``."""

    retry_s: float
    url: str

    def _open_clients(self, url: str, socket_timeout_s: float,
                      redis_options: dict[str, Any]) -> None:
        unknown = set(redis_options) - _REDIS_PY_OPTIONS
        if unknown:
            raise UsageError(f"unknown redis store option(s): {', '.join(sorted(unknown))}")
        opts: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),  # retries are ours: bounded by retry_s
            "socket_connect_timeout": min(5.0, socket_timeout_s),
            "socket_timeout": socket_timeout_s,
        }
        opts.update(redis_options)
        packer = _zero_copy_packer()
        # typed Any: redis-py's replies are bytes or str by a constructor flag mypy cannot see
        self.r: Any
        self.r_bulk: Any
        try:
            self.r = redis.Redis.from_url(url, **opts)
            self.r_bulk = (
                redis.Redis.from_url(url, **{**opts, "command_packer": packer})
                if packer is not None and "command_packer" not in redis_options
                else self.r
            )
        except ValueError as e:
            raise UsageError(f"bad redis address {url!r}: {e}") from e
        #: ``r_bulk`` sends ``Parts`` (else they must be joined first)
        self.parts_ok = self.r_bulk is not self.r
        kw = self.r.connection_pool.connection_kwargs
        self.addr = kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', 6379)}"
        self._reached = False  # answered once: later failures are an outage, not start-up
        self._outage: float | None = None  # when the current outage began
        self._outage_lock = threading.Lock()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one redis exchange, retrying connection trouble with backoff up to ``retry_s``;
        translate redis errors into ajug's."""
        deadline = time.monotonic() + self.retry_s
        delay = BACKOFF_FIRST_S
        while True:
            try:
                out = fn()
            except _RETRYABLE as e:
                left = deadline - time.monotonic()
                reason = _reason(e)
                if left <= 0:
                    raise StoreUnreachable(
                        f"cannot reach redis at {self.addr} after {self.retry_s:g} s ({reason}): "
                        "is redis-server running?"
                    ) from e
                self._outage_begins(reason)
                log.debug("redis at %s: %s; retrying in %.2fs", self.addr, e, min(delay, left))
                time.sleep(min(delay, left))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            except redis.exceptions.ResponseError as e:
                if isinstance(e, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(e):
                    raise StoreFull(
                        f"redis at {self.addr} is full (maxmemory): {e}; free memory or raise "
                        "maxmemory and resume"
                    ) from e
                raise StoreError(f"redis at {self.addr}: {e}") from e
            except redis.exceptions.RedisError as e:
                raise StoreError(f"redis at {self.addr}: {e}") from e
            if self._outage is not None or not self._reached:
                self._outage_ends()
            return out

    def _outage_begins(self, reason: str) -> None:
        """The first failure of an outage is said at once, in one line (not one per retry)."""
        with self._outage_lock:
            if self._outage is not None:
                return
            self._outage = time.monotonic()
        what = "lost redis" if self._reached else "waiting for redis"
        log.warning("%s at %s (%s); retrying for %g s", what, self.addr, reason, self.retry_s)

    def _outage_ends(self) -> None:
        with self._outage_lock:
            began, self._outage = self._outage, None
            self._reached = True
        if began is not None:
            log.warning("redis at %s answers again after %.1f s", self.addr,
                        time.monotonic() - began)
