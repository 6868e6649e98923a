"""Result stores, chosen by URL: see ``open_store``. The interface is ``base.Store``."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import UsageError
from .base import LockInfo, OwnerLock, Store

__all__ = ["LockInfo", "OwnerLock", "Store", "open_store"]

#: Query parameters of a redis URL that are ajug's, not redis-py's.
_REDIS_OPTIONS = {"namespace": str, "chunk_mib": float, "retry_s": float, "compress": bool}


_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]+")


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def open_store(url: str | os.PathLike[str], **options: Any) -> Store:
    """Open the store that ``url`` names.

    - a path (relative or absolute, optionally ``file:`` prefixed) -> ``FileStore``
    - ``redis://host:port/db[?namespace=x&chunk_mib=64&retry_s=30]`` (also ``rediss://``,
      ``unix://``) -> ``RedisStore``
    - ``memory:`` or ``memory:<name>`` -> ``MemoryStore`` (tests)

    ``options`` go to the store's constructor and override the URL's.
    """
    text = os.fspath(url)
    if not text:
        raise UsageError("empty store address: give a directory or redis://host:port/db")
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower() if sep else ""
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        parts = urlsplit(text)
        _check_redis_url(text, scheme, parts)
        kept: list[tuple[str, str]] = []
        ours: dict[str, Any] = {}
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k in _REDIS_OPTIONS:
                ours[k] = _flag(v) if _REDIS_OPTIONS[k] is bool else _REDIS_OPTIONS[k](v)
            else:
                kept.append((k, v))
        if "chunk_mib" in ours:
            ours["chunk_bytes"] = int(ours.pop("chunk_mib") * (1 << 20))
        ours.update(options)
        clean = urlunsplit(parts._replace(query=urlencode(kept)))
        try:
            return RedisStore(clean, **ours)
        except (TypeError, ValueError) as e:
            raise UsageError(f"bad redis store address {text!r}: {e}") from e
    if scheme == "memory":
        from .memory import MemoryStore

        if options:
            return MemoryStore(rest, **options)
        return MemoryStore.named(rest)
    if scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        return _file_store(path, options)
    # "name:..." with an RFC 3986 scheme of 2+ characters is an address we do not know; a
    # one-letter "scheme" is a Windows drive. A directory whose name has a colon: "./a:b".
    if sep and _SCHEME_RE.fullmatch(scheme):
        raise UsageError(
            f"unknown store address scheme {scheme!r} in {text!r}: use a directory path "
            "(./name for one with a colon), redis://host:port/db or memory:"
        )
    return _file_store(text, options)


def _check_redis_url(text: str, scheme: str, parts: Any) -> None:
    """redis-py reads ``redis://h:p/notanint`` as database 0 and says nothing: refuse it."""
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise UsageError(f"bad redis store address {text!r}: the port must be a number from 0 "
                         "to 65535 (redis://host:6379/0)") from None
    dbs = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    if scheme != "unix":
        db = parts.path.strip("/")
        if db:
            dbs.append(db)
    for db in dbs:
        if not db.isdigit():
            raise UsageError(f"bad redis store address {text!r}: the database {db!r} must be a "
                             "number (redis://host:6379/0 is database 0)")


def _file_store(path: str, options: dict[str, Any]) -> Store:
    from .file import FileStore

    if not path:
        raise UsageError("file: store address without a directory")
    _check_directory(path)
    try:
        return FileStore(path, **options)
    except TypeError as e:
        raise UsageError(f"bad file store option: {e}") from e


def _check_directory(path: str) -> None:
    """A store path that is (or lies under) a regular file cannot become a directory: say so,
    rather than fail later with "File exists" or "Not a directory"."""
    p = os.path.abspath(os.path.expanduser(path))
    while True:
        if os.path.exists(p):
            if not os.path.isdir(p):
                what = "is a file" if p == os.path.abspath(path) else f"is under {p}, a file"
                raise UsageError(f"store {path} {what}, not a directory: give a directory for "
                                 "the results (--store DIR), or move the file away")
            return
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent
