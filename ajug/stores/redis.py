"""The redis store: results under a key namespace, large ones in chunks committed atomically.

Key schema (``{ns}`` is the namespace, default ``ajug:``; ``{key}`` a task's hash)::

    {ns}r:{key}                  the result: ajug's encoding (starts b"AJUG"), or for a value
                                 over the chunk size a manifest (starts b"AJCM": msgpack
                                 {u: upload id, n: chunk count, len: total bytes})
    {ns}m:{key}                  the result's metadata (msgpack map), so metadata() and its
                                 batches never transfer results
    {ns}c:{key}:{upload}:{i}     chunk i of an upload; expires unless committed (PERSISTed)
    {ns}u:{key}:{upload}         upload in progress: JSON {host, pid}; refreshed per chunk
    {ns}lock                     the owner lock: JSON {owner, host, pid, expires_at}
    {ns}failures                 a hash: field {key} -> JSON of why task {key} failed
                                 (base.FAILURE_FIELDS); the field goes when the task succeeds

A large save writes its chunks under a fresh upload id, then one MULTI/EXEC (WATCHing the result
key and every chunk) checks the chunks are all there, persists them, sets manifest and metadata
and unlinks the previous value's chunks: a reader sees the old value or the whole new one.
Chunks of a writer that died expire by themselves; ``cleanup()`` deletes them sooner.

Every operation goes through ``RedisStore._call``: connection errors and timeouts are retried
with backoff for up to ``retry_s`` seconds (a redis restart is survived), then become
``StoreUnreachable``; redis's OOM becomes ``StoreFull``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import msgpack
import redis

from ..errors import (
    ResultDamaged,
    ResultMissing,
    StoreUnreachable,
    UsageError,
)
from . import decoding, encoding, streams
from .base import HOST, OwnerLock, Store, check_key
from .redisconn import Parts, RedisBoundary
from .redisfailures import RedisFailureRecords
from .redislock import RedisOwnerLock
from .redisqueries import RedisQueries
from .redisscripts import (
    BATCH_KEYS,
    EXISTS_BATCH_LUA,
    INTACT_BATCH_LUA,
    MANIFEST_MAGIC,
    MANIFEST_PEEK_BYTES,
    SAVE_BATCH_LUA,
    manifest,
)
from .redisupkeep import RedisUpkeep

log = logging.getLogger(__name__)
T = TypeVar("T")


class Keys:
    """The whole key layout of one namespace (see the module docstring)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def result(self, key: str) -> str:
        return f"{self.ns}r:{key}"

    def meta(self, key: str) -> str:
        return f"{self.ns}m:{key}"

    def chunk(self, key: str, upload: str, i: int) -> str:
        return f"{self.ns}c:{key}:{upload}:{i}"

    def upload(self, key: str, upload: str) -> str:
        return f"{self.ns}u:{key}:{upload}"

    @property
    def lock(self) -> str:
        return f"{self.ns}lock"

    @property
    def failures(self) -> str:
        return f"{self.ns}failures"

    def pattern(self, kind: str) -> str:
        """A SCAN pattern for every key of one kind (``r``, ``c``...) in this namespace only."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.ns) + kind + ":*"


#: commands carrying more than this go through the zero-copy client
BULK_BYTES = 1024 * 1024
#: a result saved whole from this size on is sent as its pieces (``Parts``), not joined first
PARTS_MIN_BYTES = 64 * 1024
#: ``save_many`` sends results up to this size in one script call; larger ones on their own
SCRIPT_MAX_BYTES = 128 * 1024
DEFAULT_CHUNK_BYTES = 64 << 20
#: A chunk is read in slices of this size (one GETRANGE each).
READ_SLICE_BYTES = 16 << 20
MAX_CHUNK_BYTES = 512 << 20  # redis refuses larger values
#: An uncommitted chunk disappears after this even if nobody runs cleanup().
CHUNK_TTL_MS = 24 * 3600 * 1000
#: The upload-in-progress marker lives this long after the last chunk written.
UPLOAD_MARK_TTL_MS = 120 * 1000
class _ChunksLost(Exception):
    """Chunks of an upload vanished before commit (redis restarted or evicted): upload again."""


class RedisStore(RedisBoundary, RedisFailureRecords, RedisQueries, RedisUpkeep, Store):
    """Results in redis under ``namespace``; values over ``chunk_bytes`` stored in chunks.

    ``retry_s`` bounds how long each operation keeps retrying an unreachable redis.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "ajug:",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        retry_s: float = 30.0,
        compress: bool = False,
        socket_timeout_s: float = 60.0,
        **redis_options: Any,
    ) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise UsageError(
                f"redis chunk size must be between 1 byte and {MAX_CHUNK_BYTES >> 20} MiB"
            )
        if namespace and not namespace.endswith(":"):
            namespace += ":"
        self.url = url
        self.keys = Keys(namespace)
        self.chunk_bytes = chunk_bytes
        self.retry_s = retry_s
        self.compress = compress
        self._open_clients(url, socket_timeout_s, redis_options)
        self._save_batch = self.r.register_script(SAVE_BATCH_LUA)
        self._exists_batch = self.r.register_script(EXISTS_BATCH_LUA)
        self._intact_batch = self.r.register_script(INTACT_BATCH_LUA)
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisStore({self.addr!r}, namespace={self.keys.ns!r})"

    def close(self) -> None:
        for client in {id(self.r): self.r, id(self.r_bulk): self.r_bulk}.values():
            client.close()
            client.connection_pool.disconnect()

    # --------------------------------------------------------------------------------- saves

    def save(self, key: str, value: Any, meta: dict[str, Any] | None = None) -> int:
        check_key(key)
        enc = encoding.as_encoded(value, meta, self.compress)
        meta_bytes = enc.meta_bytes
        if enc.size <= self.chunk_bytes:
            self._commit_small(key, self.keys.result(key), self._value_of(enc), meta_bytes)
            return enc.size
        for _attempt in range(3):
            try:
                self._save_chunked(key, enc, meta_bytes)
                return enc.size
            except _ChunksLost:
                log.warning("chunks of %s vanished before commit (redis restarted?): retrying", key)
        raise StoreUnreachable(f"redis at {self.addr} keeps losing the chunks of {key}")

    def _save_chunked(self, key: str, enc: encoding.Encoded, meta_bytes: bytes) -> None:
        upload = uuid.uuid4().hex[:16]
        marker = self.keys.upload(key, upload)
        mark = json.dumps({"host": HOST, "pid": os.getpid(), "started": time.time()})
        n = 0

        def emit(parts: list[memoryview]) -> None:
            """Each chunk goes as soon as it is whole, as its parts (one SET of ``Parts``, or
            SET then APPEND without the zero-copy client): the result's own memory is sent, not
            a copy of it (a chunk that starts with the header would otherwise copy the array
            behind it)."""
            nonlocal n
            ck = self.keys.chunk(key, upload, n)

            def put() -> None:  # retried whole: SET starts the chunk over
                pipe = self.r_bulk.pipeline(transaction=False)
                pipe.set(marker, mark, px=UPLOAD_MARK_TTL_MS)
                if self.parts_ok:
                    pipe.set(ck, Parts(parts), px=CHUNK_TTL_MS)
                else:
                    pipe.set(ck, parts[0], px=CHUNK_TTL_MS)
                    for part in parts[1:]:
                        pipe.append(ck, part)
                pipe.execute()

            n += 1
            self._call(put)

        try:
            encoding.write_chunks(enc, self.chunk_bytes, emit, parts=True)
            manifest = MANIFEST_MAGIC + msgpack.packb({"u": upload, "n": n, "len": enc.size})
            self._commit(key, manifest, meta_bytes, upload, n)
        except BaseException:
            self._discard(key, upload, n)
            raise

    def _discard(self, key: str, upload: str, n: int) -> None:
        """Best effort: drop a failed upload's chunks now (else cleanup() or their TTL does)."""
        doomed = [self.keys.chunk(key, upload, i) for i in range(n)] + [
            self.keys.upload(key, upload)
        ]
        try:
            for i in range(0, len(doomed), BATCH_KEYS):
                self.r.unlink(*doomed[i : i + BATCH_KEYS])
        except redis.exceptions.RedisError as e:
            log.info("could not remove the chunks of a failed upload of %s: %s", key, e)

    def _value_of(self, enc: encoding.Encoded) -> bytes | Parts:
        """What to SET for a result saved whole: its pieces as they are (``Parts``) when it is
        large and the zero-copy client can send them, else one ``bytes``."""
        if (self.parts_ok and enc.size > PARTS_MIN_BYTES
                and not any(isinstance(p, streams.Spilled) for p in enc.pieces)):
            return Parts(enc.pieces)
        return encoding.join(enc)

    def _commit(self, key: str, value: bytes, meta_bytes: bytes, upload: str, n: int) -> None:
        """A chunked value: the manifest ``value`` and the metadata set, the chunks persisted,
        the previous value's chunks unlinked, in one MULTI/EXEC that WATCHes them all."""
        rkey = self.keys.result(key)
        chunks = [self.keys.chunk(key, upload, i) for i in range(n)]

        def txn(pipe: Any) -> None:
            old = manifest(pipe.getrange(rkey, 0, MANIFEST_PEEK_BYTES - 1))
            if pipe.exists(*chunks) != len(chunks):
                raise _ChunksLost()
            pipe.multi()
            for ck in chunks:
                pipe.persist(ck)
            pipe.unlink(self.keys.upload(key, upload))
            pipe.set(rkey, value)
            pipe.set(self.keys.meta(key), meta_bytes)
            if old and old["u"] != upload:
                for i in range(0, old["n"], BATCH_KEYS):
                    olds = range(i, min(old["n"], i + BATCH_KEYS))
                    pipe.unlink(*[self.keys.chunk(key, old["u"], j) for j in olds])

        self._call(lambda: self.r.transaction(txn, rkey, *chunks))

    def save_many(self, items: Sequence[tuple[str, Any, dict[str, Any] | None]]) -> list[int]:
        """Small values in one script call; large ones one by one (MULTI/EXEC, or chunks)."""
        sizes: list[int] = [0] * len(items)
        small: list[tuple[int, str, bytes, bytes]] = []
        for n, (key, value, meta) in enumerate(items):
            check_key(key)
            enc = encoding.as_encoded(value, meta, self.compress)
            if enc.size > SCRIPT_MAX_BYTES:
                # a script copies its arguments into Lua strings: a 1 MiB result took 4 ms
                # that way and 2 ms through MULTI/EXEC (encoded once: not pickled again)
                sizes[n] = self.save(key, enc, None)
                continue
            sizes[n] = enc.size
            small.append((n, key, encoding.join(enc), enc.meta_bytes))
        if not small:
            return sizes

        # one EVALSHA for the whole batch: atomic like MULTI/EXEC, and one command to pack
        # instead of three per result (redis-py's packing is most of a small save's cost)
        keys: list[str] = []
        argv: list[bytes] = []
        total = 0
        for _, key, blob, meta_bytes in small:
            keys += [self.keys.result(key), self.keys.meta(key)]
            argv += [blob, meta_bytes]
            total += len(blob)
        client = self.r_bulk if total > BULK_BYTES else self.r
        olds = self._call(lambda: self._save_batch(keys=keys, args=argv, client=client))
        for j, (_, key, _, _) in enumerate(small):
            old = manifest(olds[j] if olds[j] else None)
            if old and old["n"]:
                self._discard(key, old["u"], old["n"])
        return sizes

    def _commit_small(self, key: str, rkey: str, value: bytes | Parts, meta_bytes: bytes) -> None:
        """One round trip for the common case: MULTI, peek at the old value, set value and
        metadata, EXEC. If the old value was a chunked one, its chunks go afterwards."""

        client = self.r_bulk if isinstance(value, Parts) or len(value) > BULK_BYTES else self.r

        def txn() -> bytes | None:
            pipe = client.pipeline(transaction=True)
            pipe.getrange(rkey, 0, MANIFEST_PEEK_BYTES - 1)
            pipe.set(rkey, value)
            pipe.set(self.keys.meta(key), meta_bytes)
            return pipe.execute()[0]

        old = manifest(self._call(txn))
        if old and old["n"]:
            self._discard(key, old["u"], old["n"])

    def remove(self, keys: Sequence[str]) -> int:
        removed = 0
        for i in range(0, len(keys), BATCH_KEYS):
            batch = [check_key(k) for k in keys[i : i + BATCH_KEYS]]
            removed += self._call(partial(self._remove_batch, batch))
        return removed

    def _remove_batch(self, batch: list[str]) -> int:
        pipe = self.r.pipeline(transaction=False)
        for key in batch:
            pipe.getrange(self.keys.result(key), 0, MANIFEST_PEEK_BYTES - 1)
        manifests = [manifest(v) for v in pipe.execute()]
        pipe = self.r.pipeline(transaction=True)
        for key, m in zip(batch, manifests, strict=True):
            pipe.unlink(self.keys.result(key))
            pipe.unlink(self.keys.meta(key))
            if m and m["n"]:
                pipe.unlink(*[self.keys.chunk(key, m["u"], j) for j in range(m["n"])])
        res = pipe.execute()
        per_key = [2 + (1 if m and m["n"] else 0) for m in manifests]
        removed, pos = 0, 0
        for count in per_key:
            removed += int(res[pos] > 0)
            pos += count
        return removed

    # --------------------------------------------------------------------------------- reads

    def load(self, key: str) -> Any:
        return self._read(key, lambda src, total: decoding.decode_from(src, total)[0])

    def verify(self, keys: Sequence[str], set_aside: bool = False) -> list[str | None]:
        """Every checksum of each result, read in bounded memory, nothing unpickled."""
        out: list[str | None] = []
        for key in keys:
            try:
                self._read(key, decoding.verify_from)
                out.append(None)
            except ResultMissing as e:
                damaged = isinstance(e.__cause__, ResultDamaged)
                out.append(str(e.__cause__) if damaged else None)
                if damaged and set_aside:
                    self.remove([key])
        return out

    def _read(self, key: str, decode: Callable[[Any, int], T]) -> T:
        """``decode(stream, total)`` over the value of ``key``, whole or chunked; damage and a
        missing value raise ``ResultMissing``."""
        rkey = self.keys.result(check_key(key))
        for _attempt in range(3):
            data = self._call(lambda: self.r.get(rkey))
            if data is None:
                raise ResultMissing(f"no result for {key} in redis at {self.addr}", key=key)
            try:
                if decoding.is_ajug(data):
                    return decode(decoding.ChunkReader.of([data]), len(data))
                m = manifest(data)
                if m is None:
                    raise ResultDamaged("neither a result nor a chunk manifest")
                del data
                return self._read_chunked(key, m, decode)
            except _ChunksLost:
                continue  # overwritten or removed while we read: look again
            except ResultDamaged as e:
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning(
                        "result %s in redis at %s is damaged (%s): treating it as missing",
                        key,
                        self.addr,
                        e,
                    )
                raise ResultMissing(f"result {key} in redis at {self.addr} is damaged ({e})", key=key) from e
        raise ResultMissing(f"result {key} in redis at {self.addr} kept changing while being read", key=key)

    def _read_chunked(self, key: str, m: dict[str, Any], decode: Callable[[Any, int], T]) -> T:
        """Chunks are read in slices of ``READ_SLICE_BYTES`` (GETRANGE), so that a reader holds
        a slice, not a whole chunk and redis-py's buffer for it as well."""
        rkey = self.keys.result(key)
        n, total = m["n"], m["len"]

        def lost(i: int) -> Exception:
            now = manifest(self._call(lambda: self.r.getrange(rkey, 0, MANIFEST_PEEK_BYTES - 1)))
            if now != m:
                return _ChunksLost()
            return ResultDamaged(f"chunk {i} of {n} is missing or cut short")

        # every chunk but the last has the writer's chunk size: the first one's length
        first = self._call(lambda: self.r.strlen(self.keys.chunk(key, m["u"], 0)))
        if not first or (n - 1) * first >= total or n * first < total:
            raise lost(0)
        per = -(-first // READ_SLICE_BYTES)  # slices per chunk
        last_len = total - (n - 1) * first
        count = (n - 1) * per + -(-last_len // READ_SLICE_BYTES)

        def fetch(j: int) -> bytes:
            i, k = divmod(j, per)
            size = first if i < n - 1 else last_len
            start = k * READ_SLICE_BYTES
            want = min(READ_SLICE_BYTES, size - start)
            ck = self.keys.chunk(key, m["u"], i)
            part = self._call(lambda: self.r.getrange(ck, start, start + want - 1))
            if len(part) != want:
                raise lost(i)
            return part

        return decode(decoding.ChunkReader(count, fetch), total)

    def owner_lock(self, ttl_s: float = 30.0) -> OwnerLock:
        return RedisOwnerLock(self, ttl_s)
