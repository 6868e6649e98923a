"""The file store: one file per result in a directory, correct on NFS.

Layout (jug's, so either program finds the other's results by name)::

    <dir>/<key[:2]>/<key[2:]>     a result: ajug's encoding, or jug's (read only)
    <dir>/tmp/<host>.<pid>.<rand>.tmp     a save in progress (same filesystem as the results)
    <dir>/tmp/<key>.<rand>.damaged        a damaged result moved aside by load()
    <dir>/owner.lock              JSON {owner, host, pid, expires_at} of the serving coordinator
    <dir>/failures/<key>.json     why task <key> failed (base.FAILURE_FIELDS), written like a
                                  result (temporary file, then rename); removed on success
    <dir>/ajug-store              marker: ajug made this directory (see "empty files" below)

A save writes the temporary file and renames it over the result path: rename is atomic on POSIX
and on NFS, so a reader sees the old state or the whole new result, whatever crashes when.

Damage is looked for at three depths:

- ``exists()`` checks presence only (one ``stat`` per key, or one ``listdir`` per fan-out
  directory for large batches);
- ``intact()`` adds a cheap look at each present file (~10 us on a local disk: open, one read of
  its first 4 KiB, fstat): an ajug result's header and buffer table must pass their checksums
  and state the file's length, so a file cut short (to 0 bytes or anywhere else) or replaced by
  other bytes is not intact; a file in one of jug's formats must start like one. The
  coordinator's start-up scan, ``status`` and ``check`` use it. Given the lengths the writers
  reported (the coordinator's end-of-run check), it is one ``stat`` per file instead (~4 us),
  reading the header only where the length differs: a same-length overwrite then goes unseen;
- ``load()`` and ``verify()`` read everything and check the payload's checksum too (a flipped
  bit inside the payload is found only there).

``load()`` moves a damaged file aside into ``tmp/`` (``cleanup()`` deletes it), logs a warning
and raises ``ResultMissing``; from then on ``exists()`` is False too and the task is simply run
again. A damaged result is never returned as a value.

Empty files: jug writes ``None`` as an empty file, and ajug never writes one (its results carry
a header). A directory that ajug creates (or finds empty) gets the marker file ``ajug-store``;
in such a store an empty result file is damage (a crash or another program cut it short), never
``None``. In a directory without the marker (a store jug made) an empty file reads as jug's
``None``, as jug would read it: there a result of ajug's cut to 0 bytes cannot be told apart.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import (
    ResultDamaged,
    ResultMissing,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreUnreachable,
)
from . import encoding
from .base import KEY_RE, LockInfo, OwnerLock, Store, check_key, pid_alive

log = logging.getLogger(__name__)

TMP_DIR = "tmp"
FAILURES_DIR = "failures"
FAILURE_SUFFIX = ".json"
LOCK_FILE = "owner.lock"
#: Written into a store directory that ajug creates or finds empty: see "Empty files" above.
MARKER_FILE = "ajug-store"
MARKER_TEXT = (
    "ajug file store, format 1. Every result here carries a header with its length and a "
    "checksum; an empty result file is damage, not jug's None.\n"
)
TMP_SUFFIX = ".tmp"
DAMAGED_SUFFIX = ".damaged"
#: A temporary file older than this is abandoned whoever wrote it (a save never takes an hour
#: between two writes... and its writer may be on another host, where we cannot check its pid).
TMP_MAX_AGE_S = 3600.0
#: From this many keys in one fan-out directory, ``exists`` lists the directory once instead of
#: one stat per key (fewer round trips on NFS).
LISTDIR_MIN_KEYS = 8
#: A lock file this young that cannot be parsed is being written: wait for it.
LOCK_WRITE_GRACE_S = 5.0
#: After a take-over rename, wait this long and re-read: if two coordinators raced, one sees
#: the other's lock and backs off.
TAKEOVER_SETTLE_S = 0.05
HOST = socket.gethostname()
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_GONE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.EIO, errno.ENODEV}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def fsync_dir(path: str) -> None:
    """Make a rename or create in ``path`` durable (some filesystems refuse: ignore EINVAL)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


_TMP_STATE: list = [0, "", 0]  # pid, random prefix, counter
SMALL_WRITE_BYTES = 256 * 1024

class FileStore(Store):
    """Results as files under ``directory``.

    ``fsync``: fsync each result and its directory (survives power loss; slower).
    ``compress``: zlib the payload (smaller, slower). ``create``: make the directory on the
    first save if it does not exist yet (else saving raises ``StoreUnreachable``).
    ``read_jug``: also read results written by jug 2.7; jug writes ``None`` as an empty file,
    so a zero-length file (which a crash without fsync can also leave) then reads as ``None``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fsync: bool = False,
        compress: bool = False,
        create: bool = True,
        read_jug: bool = True,
    ) -> None:
        self.root = os.path.abspath(os.fspath(directory))
        self.url = self.root
        self.fsync = fsync
        self.compress = compress
        self.create = create
        self.read_jug = read_jug
        self.tmpdir = os.path.join(self.root, TMP_DIR)
        self._own_tmp = ""
        self._made: set[str] = set()  # fan-out directories known to exist
        self._warned: set[str] = set()
        self._marked = False  # the marker file is known to exist
        self._root_checked = False

    def __repr__(self) -> str:
        return f"FileStore({self.root!r})"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key[2:])

    # ------------------------------------------------------------------------------ errors

    def _translate(self, e: OSError, needed: int = 0) -> StoreError:
        """The one place where OSError becomes an ajug error."""
        if e.errno in _FULL_ERRNOS:
            try:
                free = _human(shutil.disk_usage(self.root).free)
            except OSError:
                free = "unknown"
            need = f", this result needs {_human(needed)}" if needed else ""
            return StoreFull(
                f"store {self.root} is full: free space ({free} free{need}) and resume"
            )
        where = f": {e.filename}" if e.filename else ""
        if e.errno in _GONE_ERRNOS:
            return StoreUnreachable(f"store {self.root} is unreachable: {e.strerror}{where}")
        return StoreError(f"store {self.root}: {e.strerror or e}{where}")

    # ------------------------------------------------------------------------------- writes

    def _ensure_root(self) -> None:
        """The store directory and ``tmp/`` exist after this (created if ``create``), and a
        directory without results gets the marker that makes it ajug's."""
        if not os.path.isdir(self.root):
            if not self.create:
                raise StoreUnreachable(f"store directory {self.root} does not exist")
            os.makedirs(self.root, exist_ok=True)
            self._root_checked = False
        os.makedirs(self.tmpdir, exist_ok=True)
        if not self._root_checked:
            self._root_checked = True
            self._mark_if_new()

    def _mark_if_new(self) -> None:
        marker = os.path.join(self.root, MARKER_FILE)
        if os.path.exists(marker):
            self._marked = True
            return
        with os.scandir(self.root) as entries:
            if any(len(e.name) == 2 and e.is_dir() for e in entries):
                return  # results from before ajug (jug's): its empty files stay jug's None
        tmp = self._tmp_name()
        with open(tmp, "w") as f:
            f.write(MARKER_TEXT)
        os.rename(tmp, marker)
        self._marked = True

    def _ajugs(self) -> bool:
        """Whether the marker is there: an empty result file is then damage, not None."""
        if not self._marked:
            self._marked = os.path.exists(os.path.join(self.root, MARKER_FILE))
        return self._marked

    def _ensure_dirs(self, prefix: str) -> None:
        if prefix in self._made:
            return
        self._ensure_root()
        fanout = os.path.join(self.root, prefix)
        os.makedirs(fanout, exist_ok=True)
        if self.fsync:
            fsync_dir(self.root)
        self._made.add(prefix)

    def _tmp_name(self) -> str:
        # host.pid.<random per process><counter>: unique without a syscall per name
        # and in a directory of this process's own (tmp/<host>.<pid>/): writers that share one
        # temp directory queue on its lock, which made creating files several times slower
        pid = os.getpid()
        if _TMP_STATE[0] != pid:
            _TMP_STATE[:] = [pid, secrets.token_hex(4), 0]
        _TMP_STATE[2] += 1
        own = os.path.join(self.tmpdir, f"{HOST}.{pid}")
        if self._own_tmp != own:
            os.makedirs(own, exist_ok=True)
            self._own_tmp = own
        return os.path.join(own, f"{_TMP_STATE[1]}{_TMP_STATE[2]}{TMP_SUFFIX}")

    def save(self, key: str, value: Any, meta: dict[str, Any] | None = None) -> int:
        """Write to ``tmp/`` then rename into place; on any failure the temp file is removed."""
        check_key(key)
        enc = encoding.as_encoded(value, meta, self.compress)
        final = self._path(key)
        for attempt in range(2):
            tmp = ""
            try:
                self._ensure_dirs(key[:2])
                tmp = self._tmp_name()
                if enc.size <= SMALL_WRITE_BYTES:
                    # one write(2) for small results: most tasks return something small
                    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    try:
                        data = encoding.join(enc)
                        if os.write(fd, data) != len(data):
                            raise OSError(errno.ENOSPC, "short write")
                        if self.fsync:
                            os.fsync(fd)
                    finally:
                        os.close(fd)
                else:
                    with open(tmp, "xb") as out:
                        encoding.write_to(enc, out)
                        out.flush()
                        if self.fsync:
                            os.fsync(out.fileno())
                os.rename(tmp, final)
                tmp = ""
                if self.fsync:
                    fsync_dir(os.path.dirname(final))
                return enc.size
            except OSError as e:
                if e.errno == errno.ENOENT and attempt == 0:  # a directory vanished: redo it
                    self._made.clear()
                    self._own_tmp = ""
                    continue
                raise self._translate(e, enc.size) from e
            finally:
                if tmp:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
        raise AssertionError("unreachable")  # pragma: no cover

    def remove(self, keys: Sequence[str]) -> int:
        n = 0
        for key in keys:
            try:
                os.unlink(self._path(check_key(key)))
                n += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.ENOTDIR:
                    raise self._translate(e) from e
        return n

    # -------------------------------------------------------------------------------- reads

    def load(self, key: str) -> Any:
        path = self._path(check_key(key))
        try:
            f = open(path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise ResultMissing(f"no result for {key} in {self.root}", key=key) from None
        except OSError as e:
            raise self._translate(e) from e
        with f:
            try:
                size = os.fstat(f.fileno()).st_size
                if encoding.is_ajug(f.read(4)):
                    f.seek(0)
                    return encoding.decode_from(f, size)[0]
                f.seek(0)
                self._check_jug(size)
                return encoding.decode_jug(f, size)
            except ResultDamaged as e:
                self._set_aside(key, path, os.fstat(f.fileno()).st_ino, e)
                raise ResultMissing(f"result {key} in {self.root} is damaged ({e})", key=key) from e
            except OSError as e:
                raise self._translate(e) from e

    def _check_jug(self, size: int) -> None:
        """A file that is not ajug's may be read as jug's: raise ``ResultDamaged`` if not."""
        if not self.read_jug:
            raise ResultDamaged("not an ajug result")
        if size == 0 and self._ajugs():
            raise ResultDamaged(f"an empty file, in a store that ajug made ({MARKER_FILE}): "
                                "a result cut short, not jug's None")

    def _set_aside(self, key: str, path: str, ino: int, why: Exception) -> None:
        """Move a damaged result into ``tmp/`` so that it reads as missing everywhere."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "result %s in %s is damaged (%s): treating it as missing", key, self.root, why
            )
        try:
            if os.stat(path).st_ino != ino:  # replaced meanwhile by a good save: keep that
                return
            os.makedirs(self.tmpdir, exist_ok=True)
            aside = os.path.join(self.tmpdir, f"{key}.{secrets.token_hex(4)}{DAMAGED_SUFFIX}")
            os.rename(path, aside)
        except OSError as e:
            log.warning("could not move damaged result %s aside: %s", path, e)

    def exists(self, keys: Sequence[str]) -> list[bool]:
        """Presence only (see the module docstring on damage); batched per fan-out directory."""
        out = [False] * len(keys)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(check_key(key)[:2], []).append(i)
        stat = os.stat
        for prefix, idxs in groups.items():
            d = os.path.join(self.root, prefix)
            try:
                if len(idxs) >= LISTDIR_MIN_KEYS:
                    names = set(os.listdir(d))
                    for i in idxs:
                        out[i] = keys[i][2:] in names
                    continue
                for i in idxs:
                    try:
                        stat(os.path.join(d, keys[i][2:]))
                        out[i] = True
                    except (FileNotFoundError, NotADirectoryError):
                        pass
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                raise self._translate(e) from e
        return out

    def intact(self, keys: Sequence[str], sizes: Sequence[int] | None = None) -> list[bool]:
        """Present, and not visibly damaged: see the module docstring (a header and length
        check per present file; where ``sizes`` gives the length the writer reported, one
        ``stat`` compares it instead, ~3 times cheaper). Damaged files are left where they are
        (a load moves them)."""
        if sizes is not None:
            return self._sizes_match(keys, sizes)
        return [n is not None for n in self.intact_sizes(keys)]

    def intact_sizes(self, keys: Sequence[str]) -> list[int | None]:
        """``intact`` with each whole result's length (None: missing or damaged)."""
        present = self.exists(keys)
        out: list[int | None] = [None] * len(keys)
        damaged: list[tuple[str, str]] = []
        for i, key in enumerate(keys):
            if present[i]:
                why, size = self._head_damage(self._path(key))
                if why is None:
                    out[i] = size
                elif why:
                    damaged.append((key, why))
        if damaged:
            key, why = damaged[0]
            log.warning("%d result(s) in %s are damaged (e.g. %s: %s): they count as missing "
                        "and are computed again", len(damaged), self.root, key, why)
        return out

    def _sizes_match(self, keys: Sequence[str], sizes: Sequence[int]) -> list[bool]:
        """One stat per result; the header is read only where the size differs from the one
        reported (a duplicate run's result may have replaced it: its metadata differs)."""
        out = []
        stat = os.stat
        damaged = 0
        for key, size in zip(keys, sizes, strict=True):
            path = self._path(check_key(key))
            try:
                ok = stat(path).st_size == size
            except (FileNotFoundError, NotADirectoryError):
                out.append(False)
                continue
            except OSError as e:
                raise self._translate(e) from e
            if not ok:
                ok = self._head_damage(path)[0] is None
                damaged += not ok
            out.append(ok)
        if damaged:
            log.warning("%d result(s) in %s are damaged (cut short, or overwritten): they count "
                        "as missing and are computed again", damaged, self.root)
        return out

    def _head_damage(self, path: str) -> tuple[str | None, int]:
        """(None, its size) if the file looks whole; else (why not, 0): "" if it vanished."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return "", 0
        except OSError as e:
            raise self._translate(e) from e
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, encoding.HEAD_PEEK_BYTES, 0)
            if encoding.is_ajug(head):
                stated = encoding.stated_length(
                    lambda at, n: head[at : at + n] if at + n <= len(head) else os.pread(fd, n, at)
                )
                if stated != size:
                    return f"{size} bytes, its header says {stated}", 0
                return None, size
            self._check_jug(size)
            if size and not encoding.looks_like_jug(head):
                return "neither ajug's nor one of jug's formats", 0
            return None, size
        except ResultDamaged as e:
            return str(e), 0
        except OSError as e:
            raise self._translate(e) from e
        finally:
            os.close(fd)

    def verify(self, keys: Sequence[str], set_aside: bool = False) -> list[str | None]:
        """Read each result whole and check every checksum, without unpickling ajug's (jug's
        are decoded: only that checks them). None per result that is whole or missing, else
        why it is damaged; ``set_aside`` moves the damaged ones aside, as ``load`` would."""
        out: list[str | None] = []
        for key in keys:
            path = self._path(check_key(key))
            try:
                f = open(path, "rb")
            except (FileNotFoundError, NotADirectoryError):
                out.append(None)
                continue
            except OSError as e:
                raise self._translate(e) from e
            with f:
                try:
                    size = os.fstat(f.fileno()).st_size
                    if encoding.is_ajug(f.read(4)):
                        f.seek(0)
                        encoding.verify_from(f, size)
                    else:
                        f.seek(0)
                        self._check_jug(size)
                        encoding.decode_jug(f, size)
                    out.append(None)
                except ResultDamaged as e:
                    out.append(str(e))
                    if set_aside:
                        self._set_aside(key, path, os.fstat(f.fileno()).st_ino, e)
                except OSError as e:
                    raise self._translate(e) from e
        return out

    def metadata(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """Reads each result's header only. jug's results get ``{size, ts, jug: True}``."""
        out: list[dict[str, Any] | None] = []
        for key in keys:
            path = self._path(check_key(key))
            try:
                with open(path, "rb") as f:
                    if encoding.is_ajug(f.read(4)):
                        f.seek(0)
                        out.append(encoding.read_metadata(f))
                    else:
                        st = os.fstat(f.fileno())
                        out.append({"size": st.st_size, "ts": st.st_mtime, "jug": True})
            except (FileNotFoundError, NotADirectoryError):
                out.append(None)
            except ResultDamaged:
                out.append(None)
            except OSError as e:
                raise self._translate(e) from e
        return out

    def list(self) -> Iterator[str]:
        try:
            tops = sorted(e.name for e in os.scandir(self.root) if len(e.name) == 2 and e.is_dir())
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._translate(e) from e
        for prefix in tops:
            try:
                names = os.listdir(os.path.join(self.root, prefix))
            except FileNotFoundError:
                continue
            for name in names:
                key = prefix + name
                if _is_key(key):
                    yield key

    # ----------------------------------------------------------------------------- upkeep

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

    def owner_lock(self, ttl_s: float = 30.0) -> OwnerLock:
        return FileOwnerLock(self, ttl_s)

    def close(self) -> None:
        """This process's temporary directory goes, if empty (a writer killed leaves its own:
        ``prune_tmp`` and ``cleanup`` remove it)."""
        own, self._own_tmp = self._own_tmp, ""
        if own:
            try:
                os.rmdir(own)
            except OSError:
                pass

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

    # ---------------------------------------------------------------------- failure records

    def _failure_path(self, key: str) -> str:
        return os.path.join(self.root, FAILURES_DIR, check_key(key) + FAILURE_SUFFIX)

    def save_failure(self, key: str, record: dict[str, Any]) -> None:
        """Temporary file, then rename: a reader sees the old record or the whole new one."""
        data = json.dumps(record, sort_keys=True).encode()
        final = self._failure_path(key)
        tmp = ""
        try:
            self._ensure_root()
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = self._tmp_name()
            with open(tmp, "xb") as out:
                out.write(data)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.rename(tmp, final)
            tmp = ""
        except OSError as e:
            raise self._translate(e, len(data)) from e
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def failure_keys(self) -> list[str]:
        try:
            names = os.listdir(os.path.join(self.root, FAILURES_DIR))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise self._translate(e) from e
        n = len(FAILURE_SUFFIX)
        return [k[:-n] for k in names if k.endswith(FAILURE_SUFFIX) and _is_key(k[:-n])]

    def failures(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        have = self.failure_keys()  # one listing, then only the files that exist
        if keys is not None:
            wanted = {check_key(k) for k in keys}
            have = [k for k in have if k in wanted]
        out: dict[str, dict[str, Any]] = {}
        for key in have:
            try:
                with open(self._failure_path(key), "rb") as f:
                    record = json.loads(f.read())
            except FileNotFoundError:  # cleared meanwhile
                continue
            except ValueError:  # not ours, or damaged: a record is only ever informative
                continue
            except OSError as e:
                raise self._translate(e) from e
            if isinstance(record, dict):
                out[key] = record
        return out

    def clear_failures(self, keys: Sequence[str]) -> int:
        n = 0
        for key in keys:
            try:
                os.unlink(self._failure_path(key))
                n += 1
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                raise self._translate(e) from e
        return n


def _is_key(key: str) -> bool:
    return KEY_RE.fullmatch(key) is not None


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
