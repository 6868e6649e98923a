"""The redis store's upkeep: chunks of uploads that died (``cleanup``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from .base import HOST, pid_alive
from .redisscripts import MANIFEST_PEEK_BYTES, manifest

T = TypeVar("T")


class RedisUpkeep:
    """Mixed into RedisStore: ``cleanup``."""

    keys: Any
    r: Any

    def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def cleanup(self, dry_run: bool = False) -> int:
        """Delete chunks that no manifest references and whose upload is not alive (marker
        gone, or its writer's pid dead on this host); return the bytes freed."""
        prefix = len(self.keys.ns) + 2
        pattern = self.keys.pattern("c")
        names = self._call(
            lambda: [k.decode() for k in self.r.scan_iter(match=pattern, count=1000)]
        )
        groups: dict[tuple[str, str], list[str]] = {}
        for name in names:
            parts = name[prefix:].rsplit(":", 2)
            if len(parts) == 3:
                groups.setdefault((parts[0], parts[1]), []).append(name)
        freed = 0
        for (key, upload), chunk_keys in groups.items():
            current = manifest(
                self._call(partial(self.r.getrange, self.keys.result(key), 0,
                                   MANIFEST_PEEK_BYTES - 1))
            )
            if current and current["u"] == upload:
                continue
            if self._upload_alive(key, upload):
                continue

            def sizes(chunk_keys: list[str] = chunk_keys) -> list[int]:
                pipe = self.r.pipeline(transaction=False)
                for ck in chunk_keys:
                    pipe.strlen(ck)
                return pipe.execute()

            freed += sum(self._call(sizes))
            if not dry_run:
                doomed = chunk_keys + [self.keys.upload(key, upload)]
                self._call(partial(self.r.unlink, *doomed))
        return freed

    def _upload_alive(self, key: str, upload: str) -> bool:
        raw = self._call(lambda: self.r.get(self.keys.upload(key, upload)))
        if raw is None:
            return False
        try:
            mark = json.loads(raw)
            return mark["host"] != HOST or pid_alive(int(mark["pid"]))
        except (ValueError, KeyError, TypeError):
            return False
