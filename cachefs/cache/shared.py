"""The shared cache tier: blocks on an S3-compatible store near the nodes (an in-cluster MinIO or Ceph
RGW, S3 Express One Zone), below each node's own tiers and above the origin (docs/CACHING.md
"Shared tier").

- A block's shared object is named by a hash of its identity (origin endpoint, bucket, key, ETag,
  block size, index) under the tier's prefix, and framed: a header holding that identity, the body's
  length and its xxh3-64, then the body. A read checks all of it: another identity (a hash
  collision, a foreign writer), a wrong length (a truncated object) or a wrong checksum is a miss,
  counted and logged once, and the object is deleted. A changed origin object has a new ETag, so a
  new name: its old blocks are never found for it.
- Reads are best-effort: one attempt, within `deadline` seconds, behind a breaker of its own (three
  failed reads in a row: the tier is down, one probe a second, no waiting beside the probe). Any
  error, timeout or outage is a miss: the reader goes to the origin.
- Writes never slow a reader: `offer` queues a block (bounded in bytes; when full the block is
  skipped and counted) and `run`'s writers PUT it in worker threads with `If-None-Match: *`, so N
  nodes filling the same block store it once (a 412 means another node did: fine).
- Claims (`acquire`): nodes missing the same block at the same moment fetch it from the origin once.
  The first to PUT `<block object>.claim` (conditional) fetches and `publish`es the block at once;
  the others poll the block's object until it appears, within `claim_wait`, then go to the origin
  themselves. A claim older than STALE_CLAIM_WAITS waits is a dead node's: taken over.
"""
from __future__ import annotations

import logging
import math
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions as bce
import trio
import xxhash

from cachefs.cache.shared_claims import (
    CLAIM_THREADS,
    DEFAULT_CLAIM_WAIT_S,
    ERROR,
    MISS,
    Claim,
    ClaimsMixin,
    Missing,
    Truncated,
)
from cachefs.errors import ObjectNotFound, StoreError
from cachefs.stats import Stats
from cachefs.store.base import ObjectStore
from cachefs.store.health import OutageBreaker
from cachefs.store.retry import describe, http_status

log = logging.getLogger(__name__)

MAGIC = b"CFSSHR01"
# magic, body length, xxh3-64 of the body, identity length; then the identity (UTF-8), then the body
HEADER = struct.Struct("<8sQQH")
# A block GET from a store near the nodes takes 10-50 ms; one second is far past that and still a
# small price for a miss that falls back to the origin (the reader waits at most this much more).
DEFAULT_DEADLINE_S = 1.0
# Blocks waiting for their shared copy: 16 blocks of 4 MiB. Beyond it a block is skipped (another
# node, or the next miss, writes it): a slow shared store must never hold a reader's memory.
DEFAULT_QUEUE_BYTES = 64 << 20
DEFAULT_WRITERS = 4
# A checksum of a body larger than this runs in a worker thread (a 4 MiB xxh3 ~0.3 ms).
INLINE_HASH_BYTES = 256 << 10
CORRUPT_LOG_LIMIT = 20        # corrupt objects logged one by one, then only counted


@dataclass(frozen=True)
class BlockId:
    """What decides a block's bytes, as the shared tier names and checks it."""
    origin: str             # the origin's endpoint ("aws" for AWS S3)
    bucket: str
    key: str
    etag: str
    block_size: int
    index: int

    def encode(self) -> bytes:
        return "\n".join(("cachefs-block", self.origin, self.bucket, self.key, self.etag,
                          str(self.block_size), str(self.index))).encode()


def object_name(prefix: str, ident: bytes) -> str:
    """The shared object of a block: its identity's xxh3-128 under the prefix, fanned out by its
    first two hex digits (listings and gc stay spread)."""
    h = xxhash.xxh3_128_hexdigest(ident)
    return f"{prefix}v1/{h[:2]}/{h}"


def frame(ident: bytes, body: bytes | memoryview) -> bytes:
    return HEADER.pack(MAGIC, len(body), xxhash.xxh3_64_intdigest(body), len(ident)) + ident + bytes(body)


def framed_size(ident: bytes, body_len: int) -> int:
    return HEADER.size + len(ident) + body_len


def unframe(ident: bytes, raw: bytes | memoryview, body_len: int) -> memoryview | str:
    """The body of a shared object read as [0, framed_size), or why it is not this block's."""
    view = memoryview(raw)
    if len(view) < HEADER.size:
        return f"truncated ({len(view)} bytes)"
    magic, length, digest, ident_len = HEADER.unpack_from(view)
    if magic != MAGIC:
        return "not a cachefs shared block"
    if bytes(view[HEADER.size:HEADER.size + ident_len]) != ident:
        return "another block's identity"
    if length != body_len:
        return f"length {length}, expected {body_len}"
    body = view[HEADER.size + ident_len:]
    if len(body) != body_len:
        return f"truncated ({len(body)} of {body_len} body bytes)"
    if xxhash.xxh3_64_intdigest(body) != digest:
        return "checksum mismatch"
    return body


@dataclass
class _Write:
    name: str
    ident: bytes
    body: bytes | memoryview


class SharedTier(ClaimsMixin):
    """The shared tier over an ObjectStore of its own (its bucket, endpoint and credentials)."""

    def __init__(self, store: ObjectStore, prefix: str, origin: str, stats: Stats, *,
                 deadline: float = DEFAULT_DEADLINE_S, queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 writers: int = DEFAULT_WRITERS, claim_wait: float = DEFAULT_CLAIM_WAIT_S,
                 where: str = "") -> None:
        self.store = store
        self.prefix = prefix
        self.origin = origin
        self.stats = stats
        self.deadline = deadline
        self.queue_limit = queue_bytes
        self.writers = writers
        self.where = where or f"s3://{store.bucket}/{prefix}"
        self.breaker = OutageBreaker(f"{self.where} (shared cache)", probe_wait=0.0,
                                     consequence="blocks come from the origin meanwhile")
        self.queued_bytes = 0
        self.queued = 0
        self._send: trio.MemorySendChannel[_Write | str] | None = None
        self._corrupt: set[str] = set()       # names found bad, deleted before they are written again
        self._corrupt_logged = 0
        self._limiter = trio.CapacityLimiter(max(1, writers))
        self.claim_wait = claim_wait              # 0: no claims (concurrent misses all go to the origin)
        self._claim_limiter = trio.CapacityLimiter(CLAIM_THREADS)
        self._publish_limiter = trio.CapacityLimiter(CLAIM_THREADS)
        self._nursery: trio.Nursery | None = None   # run()'s: claimed blocks are written from there

    def block_id(self, bucket: str, key: str, etag: str, block_size: int, index: int) -> BlockId:
        return BlockId(self.origin, bucket, key, etag, block_size, index)

    def summary(self) -> dict[str, int]:
        """Gauges for Stats (safe from any thread: two integers)."""
        return {"shared_cache_queue_depth": self.queued, "shared_cache_queue_bytes": self.queued_bytes,
                "shared_cache_down": int(self.breaker.down)}

    # -- reads ---------------------------------------------------------------------------------
    async def get(self, block: BlockId, length: int) -> memoryview | None:
        """The block's bytes (`length` of them) from the shared tier, or None: a miss, or any error,
        timeout or outage of the tier (never raised). Called from the trio thread."""
        ident = block.encode()
        found = await self._read(object_name(self.prefix, ident), ident, length)
        if isinstance(found, str):
            if found == MISS:
                self.stats.add("shared_cache_misses")
            return None
        self._hit(length)
        return found

    def _hit(self, length: int) -> None:
        self.stats.add("shared_cache_hits")
        self.stats.add("shared_cache_bytes", length)

    async def _read(self, name: str, ident: bytes, length: int) -> memoryview | str:
        """One verified read of a block's object: its body, MISS (absent or bad: deleted) or ERROR
        (counted: failed, timed out, or not sent while the tier is down)."""
        try:
            await self.breaker.aadmit(("get", name))
        except StoreError:
            self.stats.add("shared_cache_errors")      # down: not asked, the origin is
            return ERROR
        raw: bytes | memoryview | None = None
        try:
            with trio.move_on_after(self.deadline):
                raw = await self._fetch(name, framed_size(ident, length))
            if raw is None:
                raise TimeoutError(f"no answer within the {self.deadline:g} s shared-cache deadline")
        except (ObjectNotFound, Missing):
            self.breaker.succeeded()
            return MISS
        except Truncated as e:
            self.breaker.succeeded()
            self._bad(name, str(e))
            return MISS
        except Exception as e:  # noqa: BLE001 - best-effort tier: every failure is a miss
            self.breaker.failed(describe(e), ("get", name))
            self.stats.add("shared_cache_errors")
            log.debug("shared cache read of %s failed: %s", name, describe(e))
            return ERROR
        self.breaker.succeeded()
        if len(raw) > INLINE_HASH_BYTES:
            found = await trio.to_thread.run_sync(unframe, ident, raw, length)
        else:
            found = unframe(ident, raw, length)
        if isinstance(found, str):
            self._bad(name, found)
            return MISS
        return found

    async def _fetch(self, name: str, n: int) -> bytes | memoryview:
        """One attempt at [0, n) of the shared object, whatever length comes back (the engine's own
        GET: the store's retry loop would retry a short body as a network error)."""
        engine = getattr(self.store, "engine", None)
        try:
            if engine is not None:
                data: bytes | memoryview = await engine.get(name, 0, n, None)
            else:
                data = await self.store.aget_range(name, 0, n)
        except bce.ClientError as e:
            status = http_status(e)
            if status == 404:
                raise Missing() from None
            if status == 416:             # a range past an empty object's end
                raise Truncated("empty") from None
            raise
        except StoreError as e:
            if "short read" in str(e):    # the boto3 path's ShortRead, wrapped
                raise Truncated(str(e)) from None
            raise
        return data

    def _bad(self, name: str, why: str) -> None:
        self.stats.add("shared_cache_corrupt")
        if self._corrupt_logged < CORRUPT_LOG_LIMIT:
            self._corrupt_logged += 1
            log.warning("shared cache object %s is not usable (%s): treated as a miss and deleted", name, why)
        self._corrupt.add(name)
        self._enqueue(name, 0)

    # -- claims: concurrent misses of one block fetch it from the origin once ------------------
    async def acquire(self, block: BlockId, length: int) -> memoryview | Claim | None:
        """get(), and on a miss a claim: the block's bytes (from the tier, possibly after waiting
        for the node that claimed it), a Claim (this node fetches the block from the origin and
        must publish or release it), or None (fetch it from the origin and offer it as before:
        claims off, the tier failing, its queue full, or the wait for a claimant ran out)."""
        ident = block.encode()
        name = object_name(self.prefix, ident)
        found = await self._read(name, ident, length)
        if not isinstance(found, str):
            self._hit(length)
            return found
        if found == ERROR:
            return None
        # no claim when the block could not be written promptly: its losers would only wait
        if self.claim_wait <= 0 or self._nursery is None or self.queued_bytes + length > self.queue_limit:
            self.stats.add("shared_cache_misses")
            return None
        return await self._claim_or_wait(name, ident, length)

    # -- writes --------------------------------------------------------------------------------
    def offer(self, block: BlockId, body: bytes | memoryview) -> bool:
        """Queue a block fetched from the origin for its shared copy (the trio thread; no I/O).
        False, counted, when the queue is full or the tier is down: the block is skipped."""
        if self._send is None or self.breaker.down or self.queued_bytes + len(body) > self.queue_limit:
            self.stats.add("shared_cache_write_skipped")
            return False
        ident = block.encode()
        return self._enqueue(_Write(object_name(self.prefix, ident), ident, body), len(body))

    def _enqueue(self, item: _Write | str, nbytes: int) -> bool:
        if self._send is None:
            return False
        self.queued += 1
        self.queued_bytes += nbytes
        self._send.send_nowait(item)
        return True

    async def run(self) -> None:
        """The writers (in the daemon's nursery, supervised): queued writes and deletes."""
        send, receive = trio.open_memory_channel[_Write | str](math.inf)
        self._send = send
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for _ in range(max(1, self.writers)):
                    nursery.start_soon(self._writer, receive)
        finally:
            self._send = self._nursery = None

    async def _writer(self, receive: trio.MemoryReceiveChannel[_Write | str]) -> None:
        async for item in receive:
            nbytes = len(item.body) if isinstance(item, _Write) else 0
            try:
                if isinstance(item, str):
                    if item in self._corrupt:       # not rewritten meanwhile
                        self._corrupt.discard(item)
                        await trio.to_thread.run_sync(self.store.delete, item, limiter=self._limiter)
                else:
                    await self.write(item.name, item.ident, item.body)
            except Exception as e:  # noqa: BLE001 - one write failed; the tier goes on
                self.stats.add("shared_cache_write_errors")
                log.debug("shared cache write of %s failed: %s", item if isinstance(item, str) else item.name, e)
            finally:
                self.queued -= 1
                self.queued_bytes -= nbytes

    async def write(self, name: str, ident: bytes, body: bytes | memoryview,
                    limiter: trio.CapacityLimiter | None = None) -> bool:
        """Store one block now (a writer, warmup, or a claimed block's publish with its own threads):
        True if written, False if another node had (a 412). A name found corrupt is deleted first.
        Raises StoreError."""
        replace = name in self._corrupt
        self._corrupt.discard(name)
        written = await trio.to_thread.run_sync(self._put, name, ident, body, replace,
                                                limiter=limiter or self._limiter)
        if written:
            self.stats.add("shared_cache_writes")
            self.stats.add("shared_cache_write_bytes", len(body))
        else:
            self.stats.add("shared_cache_write_conflicts")
        return written

    def _put(self, name: str, ident: bytes, body: bytes | memoryview, replace: bool) -> bool:
        """In a worker thread: frame (a copy and a checksum) and a conditional PUT."""
        if replace:
            self.store.delete(name)
        return self.store.put_if_absent(name, frame(ident, body))

    async def fill(self, block: BlockId, length: int, fetch: Callable[[], Awaitable[Any]]) -> bool:
        """Warmup: store the block unless the shared tier has it (a HEAD); `fetch()` gets it from the
        origin. True if written. Raises StoreError (of the origin or of the tier)."""
        ident = block.encode()
        name = object_name(self.prefix, ident)
        info = await self.store.ahead(name)
        if info is not None and info.size == framed_size(ident, length):
            return False
        return await self.write(name, ident, await fetch())

