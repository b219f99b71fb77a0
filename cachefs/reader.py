"""The read path: bytes of a file range from a small in-memory set of recent blocks, the disk
cache, or S3 — with single-flight fetches and a fixed sequential read-ahead.

The kernel asks for 128 KiB-1 MiB at a time while a block is 4 MiB, so the last few blocks are kept
in memory, verified once, and sliced: without that every request would re-read and re-hash a block.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from .blocks import block_key, block_range, blocks_for
from .cache.base import BlockCache
from .meta.schema import Inode
from .stats import Stats
from .store.base import ObjectStore

log = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable]


@dataclass
class ReadState:
    """Per open file: where the next sequential read would start."""
    next_offset: int = 0


@dataclass
class _Fetch:
    done: trio.Event = field(default_factory=trio.Event)
    value: memoryview | None = None
    error: BaseException | None = None


class BlockReader:
    def __init__(self, store: ObjectStore, cache: BlockCache, run_blocking: RunBlocking, stats: Stats, *,
                 bucket: str, block_size: int, read_ahead_blocks: int, recent_blocks: int) -> None:
        self.store = store
        self.cache = cache
        self.run_blocking = run_blocking
        self.stats = stats
        self.bucket = bucket
        self.block_size = block_size
        self.read_ahead_blocks = read_ahead_blocks
        self.recent_blocks = recent_blocks
        self._recent: OrderedDict[bytes, memoryview] = OrderedDict()
        self._inflight: dict[bytes, _Fetch] = {}
        self.nursery: trio.Nursery | None = None   # set by the daemon; read-ahead runs there

    async def read(self, inode: Inode, key: str, offset: int, size: int, state: ReadState) -> bytes | memoryview:
        indexes = blocks_for(offset, size, self.block_size, inode.size)
        if not indexes:
            return b""
        sequential = offset == state.next_offset
        end = min(offset + size, inode.size)
        state.next_offset = end
        if sequential and self.nursery is not None:
            self._read_ahead(inode, key, indexes[-1] + 1)
        if len(indexes) == 1:
            block = await self._block(inode, key, indexes[0])
            base = indexes[0] * self.block_size
            return block[offset - base:end - base]
        blocks: dict[int, memoryview] = {}

        async def load(i: int) -> None:
            blocks[i] = await self._block(inode, key, i)

        async with trio.open_nursery() as nursery:
            for i in indexes:
                nursery.start_soon(load, i)
        parts = []
        for i in indexes:
            start, stop = block_range(i, self.block_size, inode.size)
            lo, hi = max(offset, start), min(end, stop)
            parts.append(blocks[i][lo - start:hi - start])
        return b"".join(parts)

    def _read_ahead(self, inode: Inode, key: str, first: int) -> None:
        last = min(first + self.read_ahead_blocks, -(-inode.size // self.block_size))
        for i in range(first, last):
            bkey = block_key(self.bucket, key, inode.etag, self.block_size, i)
            if bkey in self._recent or bkey in self._inflight:
                continue
            self.stats.add("readahead_blocks")
            self.nursery.start_soon(self._prefetch, inode, key, i)

    async def _prefetch(self, inode: Inode, key: str, index: int) -> None:
        try:
            await self._block(inode, key, index)
        except Exception as e:  # the reader will ask again and see the error itself
            log.debug("read-ahead of %s block %d failed: %s", key, index, e)

    async def _block(self, inode: Inode, key: str, index: int) -> memoryview:
        bkey = block_key(self.bucket, key, inode.etag, self.block_size, index)
        while True:
            data = self._recent.get(bkey)
            if data is not None:
                self._recent.move_to_end(bkey)
                return data
            data = self.cache.get_nowait(bkey)
            if data is not None:
                self._remember(bkey, data)
                return data
            fetch = self._inflight.get(bkey)
            if fetch is None:
                break
            self.stats.add("fetch_shared")
            await fetch.done.wait()
            if fetch.value is not None:
                return fetch.value
            if fetch.error is not None:
                raise fetch.error
            # the fetching request was cancelled before it started: try ourselves
        fetch = self._inflight[bkey] = _Fetch()
        try:
            fetch.value = await self.run_blocking(self._load, bkey, inode, key, index)
            self._remember(bkey, fetch.value)
            return fetch.value
        except trio.Cancelled:
            raise
        except Exception as e:
            fetch.error = e
            raise
        finally:
            del self._inflight[bkey]
            fetch.done.set()

    def _load(self, bkey: bytes, inode: Inode, key: str, index: int) -> memoryview:
        """In a worker thread: the disk cache, else a ranged GET (and into the cache)."""
        data = self.cache.get(bkey)
        if data is not None:
            self.stats.add("cache_hits")
            return data
        self.stats.add("cache_misses")
        start, end = block_range(index, self.block_size, inode.size)
        fetched = self.store.get_range(key, start, end, inode.etag or None)
        self.cache.put(bkey, fetched)
        return memoryview(fetched)

    def _remember(self, bkey: bytes, data: memoryview) -> None:
        self._recent[bkey] = data
        self._recent.move_to_end(bkey)
        while len(self._recent) > self.recent_blocks:
            self._recent.popitem(last=False)

    def forget_recent(self) -> None:
        self._recent.clear()
