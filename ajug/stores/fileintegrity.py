"""How the file store finds damage without reading every result whole.

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from itertools import compress

from ..errors import ResultDamaged, StoreError
from . import decoding
from .base import check_key, check_keys

log = logging.getLogger("ajug.stores.file")


class FileIntegrity:
    """Mixed into FileStore: ``intact``, ``intact_sizes`` and ``verify``."""

    root: str

    def exists(self, keys: Sequence[str]) -> list[bool]:
        raise NotImplementedError

    def _path(self, key: str) -> str:
        raise NotImplementedError

    def _translate(self, e: OSError, needed: int = 0) -> StoreError:
        raise NotImplementedError

    def _check_jug(self, size: int) -> None:
        raise NotImplementedError

    def _set_aside(self, key: str, path: str, ino: int, why: Exception) -> None:
        raise NotImplementedError

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
        for i in compress(range(len(keys)), present):
            key = keys[i]
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
        check_keys(keys)
        for key, size in zip(keys, sizes, strict=True):
            path = self._path(key)
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
            head = os.pread(fd, decoding.HEAD_PEEK_BYTES, 0)
            if decoding.is_ajug(head):
                stated = decoding.stated_length(
                    lambda at, n: head[at : at + n] if at + n <= len(head) else os.pread(fd, n, at)
                )
                if stated != size:
                    return f"{size} bytes, its header says {stated}", 0
                return None, size
            self._check_jug(size)
            if size and not decoding.looks_like_jug(head):
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
                    if decoding.is_ajug(f.read(4)):
                        f.seek(0)
                        decoding.verify_from(f, size)
                    else:
                        f.seek(0)
                        self._check_jug(size)
                        decoding.decode_jug(f, size)
                    out.append(None)
                except ResultDamaged as e:
                    out.append(str(e))
                    if set_aside:
                        self._set_aside(key, path, os.fstat(f.fileno()).st_ino, e)
                except OSError as e:
                    raise self._translate(e) from e
        return out
