"""The redis store's owner lock: ``SET {ns}lock value NX PX ttl``."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING

from ..errors import StoreLocked
from .base import HOST, LockInfo, OwnerLock, pid_alive

if TYPE_CHECKING:
    from .redis import RedisStore

log = logging.getLogger("ajug.stores.redis")

#: Renew or release only if the lock still holds exactly our value.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisOwnerLock(OwnerLock):
    """``SET {ns}lock value NX PX ttl``; renewed and released by Lua scripts that check the
    value is still ours. A holder on this host whose pid is dead is taken over at once."""

    def __init__(self, store: RedisStore, ttl_s: float) -> None:
        self.store = store
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.owner = uuid.uuid4().hex
        self.key = store.keys.lock
        self.value = ""
        self._renew = store.r.register_script(_RENEW_LUA)
        self._release = store.r.register_script(_RELEASE_LUA)

    def _new_value(self) -> str:
        info = LockInfo(self.owner, HOST, os.getpid(), time.time() + self.ttl_ms / 1000)
        return json.dumps(dataclasses.asdict(info))

    def _refuse(self, raw: bytes | None) -> StoreLocked:
        try:
            d = json.loads(raw or b"")
            host, pid, when = (
                d["host"],
                d["pid"],
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["expires_at"])),
            )
        except (ValueError, KeyError, TypeError):
            host, pid, when = "an unknown host", "?", "its expiry"
        holder = f"another coordinator on {host} (pid {pid})"
        return StoreLocked(
            f"store redis {self.store.addr} namespace {self.store.keys.ns!r} is served by "
            f"{holder}; stop it or wait until its lock expires at {when}", holder
        )

    def acquire(self) -> None:
        call = self.store._call
        value = self._new_value()
        if call(lambda: self.store.r.set(self.key, value, nx=True, px=self.ttl_ms)):
            self.value = value
            return
        raw = call(lambda: self.store.r.get(self.key))
        try:
            d = json.loads(raw or b"")
            dead_here = (
                d["host"] == HOST and not pid_alive(int(d["pid"])) and d["owner"] != self.owner
            )
        except (ValueError, KeyError, TypeError):
            dead_here = False
        if dead_here and raw is not None:
            if call(lambda: self._renew(keys=[self.key], args=[raw, value, self.ttl_ms])):
                log.warning("took over the owner lock of a dead coordinator (pid %s)", d["pid"])
                self.value = value
                self.took_over = True
                return
            raw = call(lambda: self.store.r.get(self.key))
        if raw is None and call(lambda: self.store.r.set(self.key, value, nx=True, px=self.ttl_ms)):
            self.value = value
            return
        raise self._refuse(raw)

    def renew(self) -> None:
        value = self._new_value()
        if self.store._call(
            lambda: self._renew(keys=[self.key], args=[self.value, value, self.ttl_ms])
        ):
            self.value = value
            return
        raw = self.store._call(lambda: self.store.r.get(self.key))
        if raw is None and self.store._call(
            lambda: self.store.r.set(self.key, value, nx=True, px=self.ttl_ms)
        ):
            self.value = value  # expired but nobody took it: ours again
            return
        raise self._refuse(raw)

    def release(self) -> None:
        if self.value:
            self.store._call(lambda: self._release(keys=[self.key], args=[self.value]))
            self.value = ""
