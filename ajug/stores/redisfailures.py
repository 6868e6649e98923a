"""The redis store's failure records: a hash ``{ns}failures``, field ``{key}`` -> JSON of why
task ``{key}`` failed; the field goes when the task succeeds."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from .base import check_key
from .redisscripts import BATCH_KEYS

T = TypeVar("T")


class RedisFailureRecords:
    """Mixed into RedisStore: ``save_failure``, ``failure_keys``, ``failures``,
    ``clear_failures`` (see Store)."""

    keys: Any
    r: Any

    def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def save_failure(self, key: str, record: dict[str, Any]) -> None:
        data = json.dumps(record, sort_keys=True)
        self._call(lambda: self.r.hset(self.keys.failures, check_key(key), data))

    def failure_keys(self) -> list[str]:
        return [k.decode() for k in self._call(lambda: self.r.hkeys(self.keys.failures))]

    def failures(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        if keys is None:
            found = {k.decode(): v for k, v in self._call(
                lambda: self.r.hgetall(self.keys.failures)).items()}
        else:
            found = {}
            for i in range(0, len(keys), BATCH_KEYS):
                batch = [check_key(k) for k in keys[i : i + BATCH_KEYS]]
                got = self._call(partial(self.r.hmget, self.keys.failures, batch))
                found.update((k, v) for k, v in zip(batch, got) if v is not None)
        out: dict[str, dict[str, Any]] = {}
        for k, v in found.items():
            try:
                record = json.loads(v)
            except ValueError:
                continue
            if isinstance(record, dict):
                out[k] = record
        return out

    def clear_failures(self, keys: Sequence[str]) -> int:
        n = 0
        for i in range(0, len(keys), BATCH_KEYS):
            batch = [check_key(k) for k in keys[i : i + BATCH_KEYS]]
            if batch:
                n += int(self._call(partial(self.r.hdel, self.keys.failures, *batch)))
        return n
