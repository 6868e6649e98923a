"""The file store's owner lock: one coordinator at a time per store directory."""

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
    from .file import FileStore

log = logging.getLogger("ajug.stores.file")

LOCK_FILE = "owner.lock"
#: A lock file that cannot be parsed is being written by its creator for at most this long.
LOCK_WRITE_GRACE_S = 5.0
#: After renaming our lock over an expired one, read it back after this long: of two
#: coordinators taking over at once, the one whose rename landed first sees the other's lock.
TAKEOVER_SETTLE_S = 0.05


class FileOwnerLock(OwnerLock):
    """``<dir>/owner.lock``, created with O_EXCL; replaced by rename when renewed or taken over.

    Taking over an expired lock is a rename followed by a re-read after ``TAKEOVER_SETTLE_S``:
    of two coordinators racing for the same expired lock, the one whose rename landed first
    reads the other's lock and backs off.
    """

    def __init__(self, store: FileStore, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.path = os.path.join(store.root, LOCK_FILE)
        self.owner = uuid.uuid4().hex

    def _mine(self) -> LockInfo:
        return LockInfo(self.owner, HOST, os.getpid(), time.time() + self.ttl_s)

    @staticmethod
    def _encode(info: LockInfo) -> bytes:
        return json.dumps(dataclasses.asdict(info)).encode()

    def read(self) -> LockInfo | None:
        """The current holder, or None if there is no lock file or it cannot be parsed."""
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
            return LockInfo(
                str(data["owner"]), str(data["host"]), int(data["pid"]), float(data["expires_at"])
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None
        except OSError as e:
            raise self.store._translate(e) from e

    def _refuse(self, info: LockInfo) -> StoreLocked:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.expires_at))
        holder = f"another coordinator on {info.host} (pid {info.pid})"
        return StoreLocked(
            f"store {self.store.root} is served by {holder}; stop it or wait until its lock "
            f"expires at {when}", holder
        )

    @staticmethod
    def _live(info: LockInfo) -> bool:
        if info.expires_at <= time.time():
            return False
        return not (info.host == HOST and not pid_alive(info.pid))

    def _replace(self) -> None:
        tmp = self.store._tmp_name()
        try:
            with open(tmp, "xb") as f:
                f.write(self._encode(self._mine()))
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self.store._translate(e) from e

    def acquire(self) -> None:
        try:
            self.store._ensure_root()
        except OSError as e:
            raise self.store._translate(e) from e
        self.store.prune_tmp()
        deadline = time.monotonic() + LOCK_WRITE_GRACE_S
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            except OSError as e:
                raise self.store._translate(e) from e
            else:
                try:
                    os.write(fd, self._encode(self._mine()))
                    os.fsync(fd)
                except OSError as e:
                    os.close(fd)
                    os.unlink(self.path)
                    raise self.store._translate(e) from e
                os.close(fd)
                return
            holder = self.read()
            if holder is None:
                try:
                    age = time.time() - os.stat(self.path).st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < LOCK_WRITE_GRACE_S and time.monotonic() < deadline:
                    time.sleep(0.05)  # being written by its creator
                    continue
            elif holder.owner == self.owner:
                self.renew()
                return
            elif self._live(holder):
                raise self._refuse(holder)
            if self.read() != holder:
                continue  # changed while we looked: look again
            log.warning("taking over the expired owner lock of %s", self.store.root)
            self._take_over(holder)
            self.took_over = True
            return

    def _take_over(self, seen: LockInfo | None) -> None:
        self._replace()
        time.sleep(TAKEOVER_SETTLE_S)
        now = self.read()
        if now is None or now.owner != self.owner:
            raise self._refuse(now or seen or self._mine())

    def renew(self) -> None:
        """Push the expiry forward. Once our lock has expired, another coordinator may be
        taking it over: renewing is then a take-over like any other, and may lose. A lock
        file that was removed (the store directory deleted) is created again if nobody else
        has meanwhile."""
        holder = self.read()
        if holder is None:
            try:
                self.store._ensure_root()
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.read()
            except OSError as e:
                raise self.store._translate(e) from e
            else:
                try:
                    os.write(fd, self._encode(self._mine()))
                finally:
                    os.close(fd)
                return
            if holder is None:
                raise StoreLocked(f"the owner lock of store {self.store.root} is being replaced "
                                  "by another process")
        if holder.owner != self.owner:
            raise self._refuse(holder)
        if holder.expires_at <= time.time():
            self._take_over(holder)
        else:
            self._replace()

    def release(self) -> None:
        holder = self.read()
        if holder is not None and holder.owner == self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self.store._translate(e) from e
