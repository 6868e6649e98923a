"""An in-process store for unit tests: the same semantics as the others, nothing on disk.

Values are kept encoded (ajug's encoding, checksums included), so mutating a value after
``save`` or after ``load`` never changes what the store holds, and whatever would not survive
a real store (an unpicklable value) fails here too. ``memory:`` opens a fresh store;
``memory:<name>`` the store of that name shared within the process.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from ..errors import ResultDamaged, ResultMissing, StoreLocked
from . import decoding, encoding
from .base import LockInfo, OwnerLock, Store, check_key

_NAMED: dict[str, MemoryStore] = {}
_NAMED_LOCK = threading.Lock()


class MemoryStore(Store):
    def __init__(self, name: str = "", compress: bool = False) -> None:
        self.url = f"memory:{name}"
        self.compress = compress
        self._data: dict[str, bytes] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, str] = {}
        self._mutex = threading.Lock()
        self._lock: LockInfo | None = None

    @classmethod
    def named(cls, name: str) -> MemoryStore:
        """The process-wide store called ``name`` (a fresh one if ``name`` is empty)."""
        if not name:
            return cls()
        with _NAMED_LOCK:
            if name not in _NAMED:
                _NAMED[name] = cls(name)
            return _NAMED[name]

    def save(self, key: str, value: Any, meta: dict[str, Any] | None = None) -> int:
        check_key(key)
        enc = encoding.as_encoded(value, meta, self.compress)
        blob = encoding.join(enc)
        with self._mutex:
            self._data[key] = blob
            self._meta[key] = enc.meta
        return enc.size

    def load(self, key: str) -> Any:
        with self._mutex:
            blob = self._data.get(check_key(key))
        if blob is None:
            raise ResultMissing(f"no result for {key} in {self.url}", key=key)
        try:
            return decoding.decode(blob)
        except ResultDamaged as e:  # only if a test damaged it on purpose
            raise ResultMissing(f"result {key} in {self.url} is damaged ({e})", key=key) from e

    def intact(self, keys: Sequence[str], sizes: Sequence[int] | None = None) -> list[bool]:
        """Present, with a header that states the blob's length (as the file store checks)."""
        return [n is not None for n in self.intact_sizes(keys)]

    def intact_sizes(self, keys: Sequence[str]) -> list[int | None]:
        with self._mutex:
            blobs = [self._data.get(check_key(k)) for k in keys]
        out: list[int | None] = []
        for blob in blobs:
            try:
                ok = blob is not None and decoding.stated_length(partial(_slice, blob)) == len(blob)
            except ResultDamaged:
                ok = False
            out.append(len(blob) if ok and blob is not None else None)
        return out

    def verify(self, keys: Sequence[str], set_aside: bool = False) -> list[str | None]:
        out: list[str | None] = []
        for k in keys:
            with self._mutex:
                blob = self._data.get(check_key(k))
            try:
                if blob is not None:
                    decoding.verify_from(decoding.ChunkReader.of([blob]), len(blob))
                out.append(None)
            except ResultDamaged as e:
                out.append(str(e))
                if set_aside:
                    self.remove([k])
        return out

    def exists(self, keys: Sequence[str]) -> list[bool]:
        with self._mutex:
            return [check_key(k) in self._data for k in keys]

    def remove(self, keys: Sequence[str]) -> int:
        n = 0
        with self._mutex:
            for k in keys:
                if self._data.pop(check_key(k), None) is not None:
                    n += 1
                self._meta.pop(k, None)
        return n

    def metadata(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        with self._mutex:
            return [
                copy.deepcopy(self._meta[k]) if check_key(k) in self._meta else None for k in keys
            ]

    def owner_lock(self, ttl_s: float = 30.0) -> OwnerLock:
        return _MemoryLock(self, ttl_s)

    def save_failure(self, key: str, record: dict[str, Any]) -> None:
        blob = json.dumps(record, sort_keys=True)  # what the other stores keep: JSON
        with self._mutex:
            self._failures[check_key(key)] = blob

    def failures(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        with self._mutex:
            items = dict(self._failures)
        wanted = items if keys is None else [check_key(k) for k in keys]
        return {k: json.loads(items[k]) for k in wanted if k in items}

    def failure_keys(self) -> list[str]:
        with self._mutex:
            return list(self._failures)

    def clear_failures(self, keys: Sequence[str]) -> int:
        with self._mutex:
            return sum(self._failures.pop(check_key(k), None) is not None for k in keys)

    def list(self) -> Iterator[str]:
        with self._mutex:
            return iter(list(self._data))


class _MemoryLock(OwnerLock):
    def __init__(self, store: MemoryStore, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.owner = uuid.uuid4().hex

    def _take(self) -> None:
        self.store._lock = LockInfo(self.owner, "localhost", os.getpid(), time.time() + self.ttl_s)

    def _check(self) -> None:
        held = self.store._lock
        if held is not None and held.owner != self.owner and held.expires_at > time.time():
            holder = f"another coordinator on {held.host} (pid {held.pid})"
            raise StoreLocked(
                f"store {self.store.url} is served by {holder}; stop it or wait until its lock "
                "expires", holder
            )

    def acquire(self) -> None:
        with self.store._mutex:
            self._check()
            self._take()

    def renew(self) -> None:
        with self.store._mutex:
            self._check()
            self._take()

    def release(self) -> None:
        with self.store._mutex:
            held = self.store._lock
            if held is not None and held.owner == self.owner:
                self.store._lock = None


__all__ = ["MemoryStore"]


def _slice(blob: bytes, at: int, n: int) -> bytes:
    return blob[at : at + n]
