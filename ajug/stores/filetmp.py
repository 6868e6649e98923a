"""The file store's temporary files: saves in progress and damaged results set aside, under
``<dir>/tmp/``; what ``cleanup`` removes, and the empty directories of writers that died."""

from __future__ import annotations

import os
import time

from ..errors import StoreError
from .base import HOST, pid_alive

DAMAGED_SUFFIX = ".damaged"
TMP_SUFFIX = ".tmp"
#: A temporary file older than this is abandoned whoever wrote it (a save never takes an hour
#: between two writes... and its writer may be on another host, where we cannot check its pid).
TMP_MAX_AGE_S = 3600.0


class FileTemporaries:
    """Mixed into FileStore: ``cleanup`` and ``prune_tmp``."""

    root: str
    tmpdir: str

    def _translate(self, e: OSError, needed: int = 0) -> StoreError:
        raise NotImplementedError

    def cleanup(self, dry_run: bool = False) -> int:
        """Delete abandoned temp files (writer dead on this host, or older than an hour) and
        damaged results set aside by ``load``; return the bytes freed."""
        freed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.tmpdir))
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise self._translate(e) from e
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                freed += self._cleanup_writer_dir(entry, now, dry_run)
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if not self._abandoned(entry.name, now - st.st_mtime):
                continue
            freed += st.st_size
            if not dry_run:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    freed -= st.st_size
        return freed

    def _cleanup_writer_dir(self, entry: os.DirEntry[str], now: float, dry_run: bool) -> int:
        """``tmp/<host>.<pid>/``: a dead writer's directory goes whole; a live writer's keeps
        all but files older than an hour."""
        host, _, pid = entry.name.rpartition(".")
        dead = host == HOST and pid.isdigit() and not pid_alive(int(pid))
        freed = 0
        try:
            files = list(os.scandir(entry.path))
        except OSError:
            return 0
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            if dead or now - st.st_mtime > TMP_MAX_AGE_S:
                freed += st.st_size
                if not dry_run:
                    try:
                        os.unlink(f.path)
                    except FileNotFoundError:
                        freed -= st.st_size
        if dead and not dry_run:
            try:
                os.rmdir(entry.path)
            except OSError:
                pass
        return freed

    @staticmethod
    def _abandoned(name: str, age_s: float) -> bool:
        if name.endswith(DAMAGED_SUFFIX) or age_s > TMP_MAX_AGE_S:
            return True
        parts = name.rsplit(".", 3)
        if len(parts) != 4 or "." + parts[3] != TMP_SUFFIX or not parts[1].isdigit():
            return False
        host, pid = parts[0], int(parts[1])
        return host == HOST and not pid_alive(pid)

    def prune_tmp(self) -> None:
        """Remove the empty temporary directories of writers that died on this host (cheap:
        one listing of ``tmp/``; a coordinator does it when it starts)."""
        try:
            entries = list(os.scandir(self.tmpdir))
        except OSError:
            return
        for entry in entries:
            host, _, pid = entry.name.rpartition(".")
            if host == HOST and pid.isdigit() and entry.is_dir(follow_symlinks=False) \
                    and not pid_alive(int(pid)):
                try:
                    os.rmdir(entry.path)
                except OSError:
                    pass
