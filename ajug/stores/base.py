"""The store interface that every backend implements.

Keys are task identities: 40-character lowercase hex strings (jug's SHA-1 digests). A store
holds, per key, one result (any picklable Python value, ``None`` included) and its metadata
(a small dict; see ``META_FIELDS``). Everything that can be batched is batched: ``exists`` and
``metadata`` take thousands of keys in one call, because the coordinator asks about a whole
graph at once and a round trip per task would dominate on redis or NFS.

What callers can rely on, whatever the backend:

- ``save`` is atomic: a concurrent or later ``load`` sees the whole new value or the old state,
  never a partial one, whatever crashes when.
- A damaged result (wrong length or checksum) reads as missing (``load`` raises
  ``ResultMissing``), never as a wrong value. ``exists`` only checks presence, so it may say
  True for a damaged result until a ``load`` has found the damage (the file store then moves
  the file aside, so ``exists`` turns False); ``intact`` adds a cheap look for damage (a result
  cut short), ``verify`` reads everything.
- Errors are from ``ajug.errors``: ``StoreFull``, ``StoreUnreachable``, ``ResultMissing``,
  ``StoreLocked``; never a bare ``OSError`` or redis exception.
"""

from __future__ import annotations

import abc
import os
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ResultMissing, UsageError

#: Metadata fields written with every result (all optional on read: jug-written results have
#: none). ``func`` function name (module.name), ``src`` hash of the function's source, ``rt``
#: run time in seconds, ``worker`` "host:pid", ``size`` encoded bytes, ``ts`` unix time written.
META_FIELDS = ("func", "src", "rt", "worker", "size", "ts")

#: Fields of a failure record (``Store.save_failure``): ``func`` function name, ``kind``
#: ("exception", "worker-lost", "store", ...), ``type`` and ``msg`` of the exception, ``tb``
#: its traceback as Python prints it, ``worker`` where it ran (name, or host:pid), ``ts`` unix
#: time it was marked failed, ``attempts`` how many times it was tried.
FAILURE_FIELDS = ("func", "kind", "type", "msg", "tb", "worker", "ts", "attempts")

#: What a key may look like: jug's hex digests, and anything else that is safe as a file name
#: and a redis key segment (no ``/``, ``:``, ``.`` or glob characters).
KEY_RE = re.compile(r"[0-9A-Za-z_-]{3,200}")


#: this machine's name, as writers and lock holders record it
HOST = socket.gethostname()


def is_key(key: str) -> bool:
    return KEY_RE.fullmatch(key) is not None


def check_key(key: str) -> str:
    """Refuse a key that could escape the store's layout (``../x``, ``a/b``, ``*``)."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise UsageError(f"invalid result key {key!r}: expected a hex digest")
    return key


_KEY_CHARS = re.compile(r"[0-9A-Za-z_\n-]*")


def check_keys(keys: Sequence[str]) -> None:
    """``check_key`` for many keys at C speed (a million-task graph's at every load)."""
    try:
        joined = "\n".join(keys)
    except TypeError:
        joined = ""
    if (joined and _KEY_CHARS.fullmatch(joined) is not None
            and joined.count("\n") == len(keys) - 1
            and 3 <= min(map(len, keys)) and max(map(len, keys)) <= 200):
        return
    for key in keys:
        check_key(key)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a lock or temp file's writer)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class LockInfo:
    """Who holds a store's owner lock; shown to a second coordinator that is refused."""

    owner: str  # an id unique to the holder (uuid)
    host: str
    pid: int
    expires_at: float  # unix time


class OwnerLock(abc.ABC):
    """One coordinator at a time per store. Expires unless renewed, so a dead owner's lock goes."""

    #: set by ``acquire`` when it took the lock over from a dead or expired owner: the
    #: coordinator then knows it is a restart and lets reconnecting workers resume first
    took_over: bool = False

    @abc.abstractmethod
    def acquire(self) -> None:
        """Take the lock, or raise ``StoreLocked`` naming the live holder's host and pid."""

    @abc.abstractmethod
    def renew(self) -> None:
        """Push the expiry forward. Raises ``StoreLocked`` if another owner took it meanwhile."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock up (only if still ours)."""


class Store(abc.ABC):
    """A place where results live, shared by the coordinator and every worker."""

    url: str

    @abc.abstractmethod
    def save(self, key: str, value: Any, meta: dict[str, Any] | None = None) -> int:
        """Store ``value`` under ``key`` atomically with ``meta``; return the encoded size."""

    def save_many(self, items: Sequence[tuple[str, Any, dict[str, Any] | None]]) -> list[int]:
        """Save several results; the sizes, in order. Backends batch round trips where they can
        (a worker running many tiny tasks saves them together before reporting them done)."""
        return [self.save(k, v, m) for k, v, m in items]

    @abc.abstractmethod
    def load(self, key: str) -> Any:
        """Return the value, or raise ``ResultMissing`` (missing or damaged)."""

    @abc.abstractmethod
    def exists(self, keys: Sequence[str]) -> list[bool]:
        """One answer per key, in order; batched (one round trip for many keys)."""

    def contains(self, key: str) -> bool:
        return self.exists([key])[0]

    def intact(self, keys: Sequence[str], sizes: Sequence[int] | None = None) -> list[bool]:
        """Like ``exists``, plus whatever cheap look for damage the backend can afford (the
        file store reads each header and compares the length it states with the file's).
        ``sizes``: each result's encoded size as its writer reported it (0: unknown), which
        a backend may compare instead. The coordinator's start-up scan and its end-of-run
        check use this; ``verify`` reads all."""
        return self.exists(keys)

    def intact_sizes(self, keys: Sequence[str]) -> list[int | None]:
        """``intact`` with each result's encoded length where the backend knows it at no extra
        cost (0: not known; None: missing or damaged). The coordinator's start-up scan keeps
        them for its end-of-run check."""
        return [0 if ok else None for ok in self.intact(keys)]

    def verify(self, keys: Sequence[str], set_aside: bool = False) -> list[str | None]:
        """Read each result whole and check every checksum (``ajug check --verify``): None per
        result that is whole or missing, else why it is damaged. ``set_aside``: a damaged
        result is made missing (moved aside or removed), so that a run computes it again."""
        out: list[str | None] = []
        for key in keys:
            try:
                self.load(key)
                out.append(None)
            except ResultMissing as e:
                damaged = "damaged" in str(e)
                out.append(str(e) if damaged else None)
                if damaged and set_aside:
                    self.remove([key])
        return out

    @abc.abstractmethod
    def remove(self, keys: Sequence[str]) -> int:
        """Remove results (and their metadata); return how many existed."""

    @abc.abstractmethod
    def metadata(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """Metadata per key without loading results; ``None`` where there is no result."""

    @abc.abstractmethod
    def owner_lock(self, ttl_s: float = 30.0) -> OwnerLock:
        """A lock object for this store; the caller acquires, renews every ttl/3, releases."""

    def cleanup(self, dry_run: bool = False) -> int:
        """Remove stray temporary files / partial chunks; return bytes freed (or to be)."""
        return 0

    # -- failure records: why a task failed, readable after its coordinator has exited -------
    # A record is a small JSON-able dict (``FAILURE_FIELDS``). The coordinator saves one when a
    # task is marked failed and clears it when the task later succeeds or is invalidated;
    # ``ajug status JUGFILE --failed`` reads them on any machine that sees the store.

    @abc.abstractmethod
    def save_failure(self, key: str, record: dict[str, Any]) -> None:
        """Record why task ``key`` failed, replacing any earlier record, atomically."""

    @abc.abstractmethod
    def failures(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """The records of ``keys`` (None: every record), by key; keys without one are absent."""

    @abc.abstractmethod
    def failure_keys(self) -> list[str]:
        """The keys that have a record, without reading the records (cheap: the coordinator
        asks at start, to know whose records a success must clear)."""

    @abc.abstractmethod
    def clear_failures(self, keys: Sequence[str]) -> int:
        """Remove the records of ``keys``; return how many there were."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and file handles."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def list(self) -> Iterator[str]:
        """Every key that holds a result (order unspecified)."""
