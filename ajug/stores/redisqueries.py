"""The redis store's questions about many results at once, none of which transfers a result:
``exists``, ``intact`` (with the sizes), ``metadata`` and ``list``. Each sends ``BATCH_KEYS``
keys per round trip (a script call, or MGET); a big graph in a database holding fewer keys than
it is answered from one listing of the namespace (SCAN) instead."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import compress
from typing import Any, TypeVar

import msgpack

from .base import check_key, check_keys
from .redisscripts import BATCH_KEYS

T = TypeVar("T")

#: from this many keys, ``exists`` and ``intact_sizes`` may list the namespace instead
SCAN_MIN_KEYS = 10_000


class RedisQueries:
    """Mixed into RedisStore: ``exists``, ``intact``, ``intact_sizes``, ``metadata``, ``list``."""

    keys: Any
    r: Any
    _exists_batch: Any  # the registered EXISTS_BATCH_LUA
    _intact_batch: Any  # the registered INTACT_BATCH_LUA

    def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def intact(self, keys: Sequence[str], sizes: Sequence[int] | None = None) -> list[bool]:
        """Present, with the length their metadata states (a script per thousand keys). Values
        are written whole, so this finds results cut short by another program; a chunk that
        went missing is found by ``load`` (and ``verify``)."""
        return [n is not None for n in self.intact_sizes(keys)]

    def _listed(self, keys: Sequence[str]) -> set[str] | None:
        """The results this namespace holds, listed by SCAN, when that is cheaper than asking
        key by key: a big graph, and a database that holds fewer keys than it (a first run,
        or a status early on). None otherwise. A result saved during the listing may be
        missed: it counts as not done, as it would a moment earlier."""
        if len(keys) < SCAN_MIN_KEYS or self._call(self.r.dbsize) > len(keys):
            return None
        prefix = len(self.keys.result(""))
        pattern = self.keys.pattern("r")
        return self._call(lambda: {k[prefix:].decode()
                                   for k in self.r.scan_iter(match=pattern, count=10_000)})

    def intact_sizes(self, keys: Sequence[str]) -> list[int | None]:
        check_keys(keys)
        listed = self._listed(keys)
        if listed is not None:  # ask only about those that are there
            out: list[int | None] = [None] * len(keys)
            there = list(compress(range(len(keys)), map(listed.__contains__, keys)))
            for i, n in zip(there, self._intact_sizes([keys[i] for i in there])):
                out[i] = n
            return out
        return self._intact_sizes(keys)

    def _intact_sizes(self, keys: Sequence[str]) -> list[int | None]:
        out: list[int | None] = []
        rp, mp = self.keys.result(""), self.keys.meta("")
        for i in range(0, len(keys), BATCH_KEYS):
            part = keys[i : i + BATCH_KEYS]
            batch = [""] * (2 * len(part))  # each result's key, then its metadata's
            batch[::2] = map(rp.__add__, part)
            batch[1::2] = map(mp.__add__, part)
            got = self._call(partial(self._intact_batch, keys=batch))
            out.extend([int(x) if x >= 0 else None for x in got])
        return out

    def exists(self, keys: Sequence[str]) -> list[bool]:
        check_keys(keys)
        listed = self._listed(keys)
        if listed is not None:
            return list(map(listed.__contains__, keys))
        out: list[bool] = []
        rp = self.keys.result("")
        for i in range(0, len(keys), BATCH_KEYS):
            batch = list(map(rp.__add__, keys[i : i + BATCH_KEYS]))

            # one script call per batch: packing a thousand EXISTS commands in Python cost more
            # than asking redis
            got = self._call(partial(self._exists_batch, keys=batch))
            out.extend(bool(x) for x in got)
        return out

    def metadata(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for i in range(0, len(keys), BATCH_KEYS):
            batch = [self.keys.meta(check_key(k)) for k in keys[i : i + BATCH_KEYS]]
            for raw in self._call(partial(self.r.mget, batch)):
                try:
                    meta = (
                        None
                        if raw is None
                        else msgpack.unpackb(raw, raw=False, strict_map_key=False)
                    )
                except (ValueError, msgpack.UnpackException):
                    meta = None
                out.append(meta if isinstance(meta, dict) else None)
        return out

    def list(self) -> Iterator[str]:
        prefix = len(self.keys.result(""))
        pattern = self.keys.pattern("r")
        found = self._call(
            lambda: [k[prefix:].decode() for k in self.r.scan_iter(match=pattern, count=1000)]
        )
        return iter(sorted(set(found)))
