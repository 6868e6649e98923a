"""The redis store's questions about many results at once, none of which transfers a result:
``exists``, ``intact`` (with the sizes), ``metadata`` and ``list``. Each sends ``BATCH_KEYS``
keys per round trip (a script call, or MGET)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import msgpack

from .base import check_key, check_keys
from .redisscripts import BATCH_KEYS

T = TypeVar("T")


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

    def intact_sizes(self, keys: Sequence[str]) -> list[int | None]:
        check_keys(keys)
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
