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

Damage is looked for at three depths (presence, a look at the header, everything): see
fileintegrity.py. ``load()`` moves a damaged file aside into ``tmp/`` (``cleanup()`` deletes it), logs a warning
and raises ``ResultMissing``; from then on ``exists()`` is False too and the task is simply run
again. A damaged result is never returned as a value.

Empty files: jug writes ``None`` as an empty file, and ajug never writes one (its results carry
a header). A directory that ajug creates (or finds empty) gets the marker file ``ajug-store``;
in such a store an empty result file is damage (a crash or another program cut it short), never
``None``. In a directory without the marker (a store jug made) an empty file reads as jug's
``None``, as jug would read it: there a result of ajug's cut to 0 bytes cannot be told apart.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import (
    ResultDamaged,
    ResultMissing,
    StoreError,
    StoreFull,
    StoreUnreachable,
)
from . import decoding, encoding
from .base import HOST, OwnerLock, Store, check_key, check_keys, is_key
from .filefailures import FileFailureRecords
from .fileintegrity import FileIntegrity
from .filelock import FileOwnerLock
from .filetmp import DAMAGED_SUFFIX, TMP_SUFFIX, FileTemporaries

log = logging.getLogger(__name__)

TMP_DIR = "tmp"
#: Written into a store directory that ajug creates or finds empty: see "Empty files" above.
MARKER_FILE = "ajug-store"
MARKER_TEXT = (
    "ajug file store, format 1. Every result here carries a header with its length and a "
    "checksum; an empty result file is damage, not jug's None.\n"
)
#: From this many keys in one fan-out directory, ``exists`` lists the directory once instead of
#: one stat per key (fewer round trips on NFS).
LISTDIR_MIN_KEYS = 8
#: From this many keys, ``exists`` lists every fan-out directory (each would be listed anyway).
LIST_ALL_MIN_KEYS = 256 * LISTDIR_MIN_KEYS
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


#: (pid, random prefix, counter) of this process's temp names; replaced whole after a fork.
#: ``next()`` of an itertools.count is atomic, so threads of one process (a worker's save
#: thread and its main thread, the coordinator's record writer) never get the same name
_TMP_STATE: tuple[int, str, Iterator[int]] = (0, "", itertools.count(1))
_TMP_LOCK = threading.Lock()
SMALL_WRITE_BYTES = 256 * 1024

class FileStore(FileIntegrity, FileFailureRecords, FileTemporaries, Store):
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
        global _TMP_STATE
        pid = os.getpid()
        st = _TMP_STATE
        if st[0] != pid:
            with _TMP_LOCK:
                if _TMP_STATE[0] != pid:
                    _TMP_STATE = (pid, secrets.token_hex(4), itertools.count(1))
                st = _TMP_STATE
        n = next(st[2])
        own = os.path.join(self.tmpdir, f"{HOST}.{pid}")
        if self._own_tmp != own:
            os.makedirs(own, exist_ok=True)
            self._own_tmp = own
        return os.path.join(own, f"{st[1]}{n}{TMP_SUFFIX}")

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
                if decoding.is_ajug(f.read(4)):
                    f.seek(0)
                    return decoding.decode_from(f, size)[0]
                f.seek(0)
                self._check_jug(size)
                return decoding.decode_jug(f, size)
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
        """Presence only (see the module docstring on damage); batched per fan-out directory,
        and for a big graph one listing of the whole store (no Python step per key but one
        set lookup)."""
        check_keys(keys)
        if len(keys) >= LIST_ALL_MIN_KEYS:
            return self._exists_listing(keys)
        out = [False] * len(keys)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key[:2], []).append(i)
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

    def _exists_listing(self, keys: Sequence[str]) -> list[bool]:
        try:
            names = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return [False] * len(keys)
        except OSError as e:
            raise self._translate(e) from e
        present: set[str] = set()
        for d in names:
            if len(d) != 2:  # not a fan-out directory (tmp, the marker, the lock)
                continue
            try:
                present.update(map(d.__add__, os.listdir(os.path.join(self.root, d))))
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                raise self._translate(e) from e
        return list(map(present.__contains__, keys))

    def metadata(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """Reads each result's header only. jug's results get ``{size, ts, jug: True}``."""
        out: list[dict[str, Any] | None] = []
        for key in keys:
            path = self._path(check_key(key))
            try:
                with open(path, "rb") as f:
                    if decoding.is_ajug(f.read(4)):
                        f.seek(0)
                        out.append(decoding.read_metadata(f))
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
                if is_key(key):
                    yield key

    # ----------------------------------------------------------------------------- upkeep

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



